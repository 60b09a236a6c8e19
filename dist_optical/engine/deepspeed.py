"""Build the DeepSpeed config from the run config, and wrap the student: nothing else.

The JSON in configs/ds/ says *how* to shard (ZeRO stage, offload); the run config says *what*
to train (batch, lr, schedule, clipping, precision). Batch fields in the JSON must agree with
the run config, or the mismatch is named.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import resource
from typing import Any

import torch
from torch import nn

from dist_optical.compat import native_bf16, zero_master_weights
from dist_optical.config import Config, ConfigError, TrainConfig, repo_path

log = logging.getLogger("dist_optical.deepspeed")


def with_native_precision(cfg: Config, device: torch.device) -> Config:
    """``cfg`` with ``train.precision: auto`` resolved for ``device`` (see `compat.native_bf16`), so
    the run folder's config, its checkpoints and the teacher cache's key name what ran."""
    if cfg.train.precision != "auto":
        return cfg
    precision = "bf16" if native_bf16(device) else "fp32"
    log.info("train.precision auto -> %s on %s", precision, device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))


def build_ds_config(train: TrainConfig, world_size: int, stage: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config of a run at ``world_size`` ranks, at ZeRO ``stage`` (a resumed run keeps
    its checkpoint's: its optimizer state is laid out for it) or else `zero_stage`'s choice."""
    path = repo_path(train.deepspeed)
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: DeepSpeed config {path} not found")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from err
    ds = copy.deepcopy(ds)
    global_batch = train.micro_batch_size * train.grad_accum * world_size
    for key, expected in (
        ("train_micro_batch_size_per_gpu", train.micro_batch_size),
        ("gradient_accumulation_steps", train.grad_accum),
        ("train_batch_size", global_batch),
    ):
        if key in ds and ds[key] != "auto" and ds[key] != expected:
            raise ConfigError(
                f"{path}: {key}={ds[key]} disagrees with the run config ({expected} = train.micro_batch_size "
                f"{train.micro_batch_size} x train.grad_accum {train.grad_accum} x world size {world_size}); "
                'remove it from the JSON or set it to "auto"'
            )
        ds[key] = expected
    ds["gradient_clipping"] = train.grad_clip
    zero = ds.setdefault("zero_optimization", {})
    chosen = zero_stage(zero, world_size, train.precision) if stage is None else stage
    if chosen != zero.get("stage", 0):
        why = "one rank, fp32: nothing to partition" if stage is None else "the stage given (a checkpoint's)"
        log.info("ZeRO stage %s -> %s (%s)", zero.get("stage", 0), chosen, why)
    zero["stage"] = chosen
    optimizer = ds.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True}})
    optimizer.setdefault("params", {}).update(lr=train.lr, weight_decay=train.weight_decay)
    scheduler = ds.get("scheduler")
    if scheduler is not None and scheduler.get("type") == "WarmupDecayLR":
        scheduler.setdefault("params", {}).update(
            total_num_steps=max(train.max_steps, train.warmup_steps + 1),
            warmup_max_lr=train.lr,
            warmup_num_steps=max(1, train.warmup_steps),  # DeepSpeed's WarmupDecayLR needs >= 1
        )
    ds["bf16"] = {"enabled": train.precision == "bf16"}
    return ds


def zero_stage(zero: dict[str, Any], world_size: int, precision: str) -> int:
    """The ZeRO stage a fresh run trains at. On one rank in fp32, stage 0 unless the JSON offloads:
    there is nothing to partition, and ZeRO's flat fp32 copies of every parameter only add work
    (bench/optimizer.py). In bf16 the JSON's: DeepSpeed's stage 0 would keep the fp32 master weights
    in an unfused fp16-style optimizer, and the export would get the bf16 module's. On several
    ranks, the JSON's: each rank holds its share of the optimizer state. (A resumed run keeps its
    checkpoint's stage; a universal conversion changes the world size, not the stage.)"""
    if world_size == 1 and precision == "fp32" and not any(key.startswith("offload") for key in zero):
        return 0
    return zero.get("stage", 0)


def wrap_student(student: nn.Module, ds_config: dict[str, Any]):
    """deepspeed.initialize over the student's trainable parameters only (the teacher never enters)."""
    import deepspeed

    trainable = [p for p in student.parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(
        model=student, model_parameters=trainable, config=ds_config
    )
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        # Nothing to all-reduce; DeepSpeed would still flatten every gradient into a fresh buffer and
        # copy it back after a no-op all-reduce, each step (bench/optimizer.py).
        engine.enable_backward_allreduce = False
    return engine, scheduler


def partition_teacher(teacher: nn.Module, ds_config: dict[str, Any]):
    """An inference-only ZeRO-3 engine over the frozen teacher: no optimizer, parameters sharded
    over the ranks and gathered layer by layer in forward (DeepSpeed-Chat's reference-model recipe)."""
    import deepspeed

    config = {
        key: ds_config[key]
        for key in (
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "train_batch_size",
            "bf16",
        )
    }
    config["zero_optimization"] = {"stage": 3}
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def memory_footprint(engine) -> dict[str, float]:
    """This rank's share of student parameters and optimizer state (MiB), and its peak RSS (MiB).

    Under ZeRO-3 a parameter's local shard is ``param.ds_tensor``; under ZeRO-1/2/3 the base
    optimizer holds fp32 master partitions plus moments; under stage 0 only the moments are extra.
    """

    def mib(tensors) -> float:
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    base = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer inside ZeRO's
    moments = [t for state in base.state.values() for t in state.values() if torch.is_tensor(t) and t.dim()]
    masters = zero_master_weights(engine)
    return {
        "mem/params_mib": mib(getattr(p, "ds_tensor", p) for p in engine.module.parameters()),
        "mem/optimizer_mib": mib(masters) + mib(moments),
        "mem/peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
