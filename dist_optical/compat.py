"""Every use of another library's private API, in one place: each names the version it was written
against (pinned in pyproject.toml) and the test that fails if an upgrade breaks it.

- torch 2.13.0: `DataLoader`'s multi-process iterator has no public way to stop its workers
  (`_shutdown_workers`). Guarded by tests/data/test_stream.py::test_bad_samples_raise_or_skip
  (no worker outlives an epoch that ended in an error).
- deepspeed 0.19.8: `deepspeed.ops.__compatible_ops__` is the table its init consults before it
  JIT-builds an op. Guarded by tests/test_compat.py::test_shm_comm_op_is_marked_incompatible.
- deepspeed 0.19.8: the ZeRO optimizers keep fp32 master partitions in
  `fp32_partitioned_groups_flat` (stage 3) or the wrapped optimizer's param groups (stages 1, 2).
  Guarded by tests/train/test_multirank.py::test_every_zero_stage_trains_alike_on_two_ranks
  (the optimizer state it reports per rank, stages 0-3).
- torch 2.13.0: whether oneDNN runs bf16 matmuls on this CPU (`torch.ops.mkldnn.
  _is_mkldnn_bf16_supported`: AVX-512 or AMX); without it a bf16 matmul falls back to a reference
  GEMM ~40x slower than fp32 (measured on an AVX2-only AMD EPYC: 100 s for a 2 s step). Guarded by
  tests/test_compat.py::test_native_bf16_answers_for_this_machine.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shutdown_loader_workers(batches: object) -> None:
    """Stop a DataLoader iterator's worker processes now (a no-op for a single-process iterator)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def skip_deepspeed_op(name: str) -> None:
    """Mark DeepSpeed's op ``name`` incompatible, so that its init never JIT-compiles it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[name] = False


def zero_master_weights(engine) -> list[Tensor]:
    """The fp32 master copies a DeepSpeed engine's optimizer holds on this rank ([] at ZeRO-0, where
    the module's own parameters are the master weights)."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    if base is engine.optimizer:
        return []
    # ZeRO-3 keeps its fp32 partitions outside the base optimizer's param groups between steps.
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    return list(flat) if flat else [p for group in base.param_groups for p in group["params"]]


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively on ``device``: a CUDA GPU with bf16, or a CPU oneDNN
    runs bf16 on."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
