"""Who am I: resolve rank/world from SLURM, torchrun / the deepspeed launcher, or a single process.

Everything distributed funnels through `setup()`; the math modules never see it. A partial
environment (e.g. RANK without WORLD_SIZE) is an error rather than a silent single-process run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from dist_optical.compat import skip_deepspeed_op
from dist_optical.errors import UserError

# What torchrun (or the deepspeed launcher) exports: all of them, or none.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Every variable that shapes a process's distributed setup (a test clears them all).
DIST_VARS = (*TORCHRUN_VARS, "LOCAL_SIZE", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    source: str  # "torchrun" | "slurm" | "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detect() -> DistEnv:
    """Read the launcher's environment and export the torch `env://` variables DeepSpeed needs."""
    present = [name for name in TORCHRUN_VARS if name in os.environ]
    if present and len(present) < len(TORCHRUN_VARS):
        missing = [name for name in TORCHRUN_VARS if name not in os.environ]
        raise UserError(
            f"partial distributed environment: {', '.join(present)} set but {', '.join(missing)} missing; "
            "launch with torchrun/deepspeed, under SLURM, or with none of these set"
        )
    if present:
        source = "torchrun"
    elif (
        "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1
    ):
        # DeepSpeed does not read SLURM's variables (it falls back to MPI discovery): export them.
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        source = "slurm"
    else:
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
        source = "single"
    os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    return DistEnv(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        source=source,
    )


def setup() -> DistEnv:
    """Detect the environment and initialise the process group (gloo on CPU, nccl on GPU)."""
    import deepspeed

    env = detect()
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "gloo":
            _skip_shm_comm_op()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    return env


def _skip_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce at init.

    That op serves inference all-reduce only (training reduces through gloo), and its build check
    takes a lock file in the torch extensions cache: a process killed there leaves the lock behind
    and every later run on the machine waits on it forever.
    """
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    skip_deepspeed_op(ShareMemCommBuilder.NAME)


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextmanager
def main_rank_first(is_main: bool) -> Iterator[None]:
    """Run the block on the main rank first, then on the others: what the main rank builds there
    (shards, RUN/vocab.json, the teacher cache), the others find built. One barrier, which the
    others wait at before the block and the main rank after it (nothing alone). A main rank that
    raises in the block never reaches the barrier: the launcher ends the waiting ranks."""
    if not is_main:
        barrier()
    yield
    if is_main:
        barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any (one tiny MAX all-reduce; no-op alone)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return flag
    # On the accelerator: an NCCL-only process group cannot reduce CPU tensors.
    packed = torch.tensor([1.0 if flag else 0.0], device=device())
    torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.MAX)
    return bool(packed.item())


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks (one small all-reduce) so rank 0 logs the global figure."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return dict(values)
    names = sorted(values)
    # On the accelerator: an NCCL-only process group cannot reduce CPU tensors.
    packed = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device())
    torch.distributed.all_reduce(packed)
    packed /= torch.distributed.get_world_size()
    return dict(zip(names, packed.tolist(), strict=True))
