"""What a submitit job runs: the ordinary trainer, one task per GPU (or per CPU rank); `compare`
subclasses `Job` for one run of a spec (compare/dispatch.py).

Only the validated config, the run folder and the resume mode travel with the job (dinov2's
pattern); requeueing re-runs the same callable, and the trainer resumes from the run folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import submitit
import torch

from dist_optical.config import Config
from dist_optical.engine.checkpoint import resolve_resume
from dist_optical.engine.signals import PREEMPTED_EXIT_CODE, Preempted, StopRequest
from dist_optical.launch.preempt import PreemptBridge


def log_to_stderr() -> None:
    """The project's INFO lines (e.g. 'resumed from ... at step N') in the task's log; not the root
    logger, which would print submitit's own lines a second time."""
    log = logging.getLogger("dist_optical")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def cap_threads(env: submitit.JobEnvironment) -> None:
    """Like torchrun: with several ranks per node, each rank would otherwise use every core.

    An explicit OMP_NUM_THREADS wins; else the task's CPUs (SLURM `--cpus-per-task`), else 1.
    """
    if "OMP_NUM_THREADS" in os.environ or env.num_tasks <= env.num_nodes:
        return
    threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def export_torch_env(env: submitit.JobEnvironment) -> None:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from the submitit job, for torch.distributed and DeepSpeed.

    `dist.setup()` reads SLURM's variables itself, but the local executor only sets SUBMITIT_LOCAL_*;
    exporting here covers both. Overwrite: inside a job the job's own layout is the truth, not
    whatever the submitting shell had exported. CUDA_VISIBLE_DEVICES stays as is: every task sees
    the node's GPUs and the trainer picks `LOCAL_RANK`.
    """
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


class Job(submitit.helpers.Checkpointable):
    """One task's setup around `run(stop)`: logs, the torch.distributed environment, threads, and
    preemption: the trainer checkpoints on the job's `StopRequest`, then submitit requeues (when
    USR2 asked). Requeueing re-runs the same callable."""

    def __call__(self) -> dict[str, Any]:
        log_to_stderr()
        env = submitit.JobEnvironment()
        export_torch_env(env)
        cap_threads(env)
        stop = StopRequest()
        bridge = PreemptBridge(stop).install()
        try:
            return self.run(stop)
        except Preempted as preempted:
            logging.getLogger("dist_optical.launch").warning("%s; exiting %d", preempted, PREEMPTED_EXIT_CODE)
            bridge.requeue_if_asked()
            raise SystemExit(PREEMPTED_EXIT_CODE) from None

    def run(self, stop: StopRequest) -> dict[str, Any]:
        """The task's work; a trainer it calls gets ``stop``."""
        raise NotImplementedError


class TrainJob(Job):
    """`train(cfg, out, resume)` (one instance per task)."""

    def __init__(self, cfg: Config, out: Path, resume: str = "auto") -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.resume = resume

    def run(self, stop: StopRequest) -> dict[str, Any]:
        from dist_optical.train import train  # in the job only: submitting needs no deepspeed import

        return train(self.cfg, self.out, self._resume_mode(), stop)

    def _resume_mode(self) -> str:
        # `resume` (a PATH, or "" for fresh) applies to the first start only: once this run folder
        # holds its own checkpoint, any restart (SLURM re-runs the original submission after a
        # SIGTERM requeue) must continue from it rather than redo or overwrite it.
        return "auto" if resolve_resume("auto", self.out) is not None else self.resume

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit before it requeues: the state is already on disk (PreemptBridge)."""
        return submitit.helpers.DelayedSubmission(type(self)(self.cfg, self.out, "auto"))
