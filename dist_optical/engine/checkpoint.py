"""Checkpoints: ZeRO shards through the DeepSpeed engine, everything else as client state.

Layout under RUN/checkpoints/: one folder per tag (`step000123`) and a `latest` file naming the
newest *complete* one. `latest` is written to a temp name and renamed only after every rank
finished saving, so a crash mid-save leaves the previous checkpoint as the one to resume.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from dist_optical.engine.dist import barrier

LATEST = "latest"
META = "dist_optical.json"  # per tag: step, world size, ZeRO stage (read before the engine exists)

# Changing these between save and resume would silently train a different thing.
RESUME_SENSITIVE = ("model", "loss", "ot", "contrastive", "data.bitexts", "data.tgt_lang")


def tag_for(step: int) -> str:
    return f"step{step:06d}"


def latest_tag(ckpt_dir: Path) -> str | None:
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    return tag if (ckpt_dir / tag).is_dir() else None


def versions() -> dict[str, str]:
    import deepspeed
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
    }


def save(
    engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], is_main: bool, keep_last: int
) -> Path:
    """Save on every rank (ZeRO shards are per rank); move `latest` once all are done; prune old tags."""
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    barrier()
    if is_main:
        meta = {
            "step": step,
            "world_size": client_state["world_size"],
            "zero_stage": engine.zero_optimization_stage(),
        }
        (ckpt_dir / tag / META).write_text(json.dumps(meta), encoding="utf-8")
        tmp = ckpt_dir / f"{LATEST}.tmp"
        tmp.write_text(tag, encoding="utf-8")
        tmp.replace(ckpt_dir / LATEST)
        if keep_last > 0:
            tags = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step"))
            for old in tags[:-keep_last]:  # (universal conversions live under universal/, not here)
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return ckpt_dir / tag


def resolve_resume(resume: str, run_dir: Path) -> tuple[Path, str] | None:
    """`--resume auto`: newest complete checkpoint of this run, or None for a fresh start.
    `--resume PATH`: a checkpoints folder (uses its `latest`) or one tag folder inside it; must exist."""
    if not resume:
        return None
    if resume == "auto":
        ckpt_dir = run_dir / "checkpoints"
        tag = latest_tag(ckpt_dir) if ckpt_dir.is_dir() else None
        return (ckpt_dir, tag) if tag else None
    path = Path(resume)
    if (path / LATEST).is_file():
        tag = latest_tag(path)
        if tag is None:
            raise FileNotFoundError(f"--resume {resume}: `latest` names a checkpoint that does not exist")
        return path, tag
    if path.is_dir() and path.parent.is_dir() and path.name.startswith("step"):
        return path.parent, path.name
    raise FileNotFoundError(
        f"--resume {resume}: no checkpoint there (expected a checkpoints folder with `latest`)"
    )


def check_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise naming the first resume-sensitive field whose value changed since the checkpoint."""
    for dotted in RESUME_SENSITIVE:
        old, new = saved, current
        for part in dotted.split("."):
            old, new = (old or {}).get(part), (new or {}).get(part)
        if old != new:
            raise ValueError(
                f"cannot resume: config field {dotted!r} changed since the checkpoint ({old!r} -> {new!r}); "
                "start a new run folder instead"
            )


def prepare_elastic(ckpt_dir: Path, tag: str, world_size: int, is_main: bool) -> tuple[Path, str, bool]:
    """Where to load from at this world size: the checkpoint itself, or (ZeRO >= 1 saved at another
    world size) a DeepSpeed universal conversion of it, made once on the main rank.

    Returns (load_dir, tag, load_universal)."""
    meta = json.loads((ckpt_dir / tag / META).read_text(encoding="utf-8"))
    if meta["world_size"] == world_size or meta["zero_stage"] == 0:  # stage 0 holds whole optimizer state
        return ckpt_dir, tag, False
    universal = ckpt_dir / "universal" / tag
    if is_main and not (universal / "zero").is_dir():
        tmp = universal.with_name(tag + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(ckpt_dir / tag),
            "--output_folder",
            str(tmp),
            "--inject_missing_state",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"converting {ckpt_dir / tag} to a universal checkpoint failed:\n{proc.stderr[-3000:]}"
            )
        shutil.rmtree(universal, ignore_errors=True)
        tmp.rename(universal)
    barrier()
    return universal.parent, tag, True
