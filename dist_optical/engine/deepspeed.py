"""Build the DeepSpeed config from the run config, and wrap the student: nothing else.

The JSON in configs/ds/ says *how* to shard (ZeRO stage, offload); the run config says *what*
to train (batch, lr, schedule, clipping, precision). Batch fields in the JSON must agree with
the run config, or the mismatch is named.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from torch import nn

from dist_optical.config import TrainConfig, repo_path


def build_ds_config(train: TrainConfig, world_size: int) -> dict[str, Any]:
    path = repo_path(train.deepspeed)
    if not path.is_file():
        raise FileNotFoundError(f"train.deepspeed: DeepSpeed config {path} not found")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from err
    ds = copy.deepcopy(ds)
    global_batch = train.micro_batch_size * train.grad_accum * world_size
    for key, expected in (
        ("train_micro_batch_size_per_gpu", train.micro_batch_size),
        ("gradient_accumulation_steps", train.grad_accum),
        ("train_batch_size", global_batch),
    ):
        if key in ds and ds[key] != "auto" and ds[key] != expected:
            raise ValueError(
                f"{path}: {key}={ds[key]} disagrees with the run config ({expected} = train.micro_batch_size "
                f"{train.micro_batch_size} x train.grad_accum {train.grad_accum} x world size {world_size}); "
                'remove it from the JSON or set it to "auto"'
            )
        ds[key] = expected
    ds["gradient_clipping"] = train.grad_clip
    optimizer = ds.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True}})
    optimizer.setdefault("params", {}).update(lr=train.lr, weight_decay=train.weight_decay)
    scheduler = ds.get("scheduler")
    if scheduler is not None and scheduler.get("type") == "WarmupDecayLR":
        scheduler.setdefault("params", {}).update(
            total_num_steps=max(train.max_steps, train.warmup_steps + 1),
            warmup_max_lr=train.lr,
            warmup_num_steps=train.warmup_steps,
        )
    if train.precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision: expected 'fp32' or 'bf16', got {train.precision!r}")
    ds["bf16"] = {"enabled": train.precision == "bf16"}
    return ds


def wrap_student(student: nn.Module, ds_config: dict[str, Any]):
    """deepspeed.initialize over the student's trainable parameters only (the teacher never enters)."""
    import deepspeed

    trainable = [p for p in student.parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(
        model=student, model_parameters=trainable, config=ds_config
    )
    return engine, scheduler
