"""Checkpoints: ZeRO shards through the DeepSpeed engine, everything else as client state.

Layout under RUN/checkpoints/: one folder per tag (`step000123`) and a `latest` file naming the
newest complete one. A tag is *complete* when its marker (`dist_optical.json`), written last by
the main rank after every rank finished saving, lists each of its files with size and sha256.
`--resume auto` takes the newest complete tag whose files still match (whatever `latest` says or
whether it exists), skipping a damaged one with a warning that names the damaged file. A crash
mid-save leaves a tag without a marker: never resumed from, and the previous one is intact.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from dist_optical import artifacts
from dist_optical.config import resume_sensitive
from dist_optical.engine.dist import barrier
from dist_optical.errors import UserError
from dist_optical.files import WriteError, atomic_write, sha256_file, write_failure

log = logging.getLogger("dist_optical.checkpoint")

LATEST = "latest"
# Per tag, written last: step, world size, ZeRO stage, and every file's size and sha256.
META = "dist_optical.json"


def tag_for(step: int) -> str:
    return f"step{step:06d}"


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
    """Save on every rank (ZeRO shards are per rank); then, on the main rank, the tag's marker
    (which makes it complete), `latest`, and pruning; a failed save leaves no half tag behind."""
    tag = tag_for(step)
    if is_main and (ckpt_dir / tag).exists():  # a damaged tag of that step (resume skipped it): keep it aside
        why = damage(ckpt_dir / tag)
        why = f"is damaged: {why}" if why else "is complete, and its step is being saved again"
        artifacts.move_aside(ckpt_dir / tag, why, "checkpoint")
    barrier()
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        barrier()
        if is_main:
            meta = {
                "step": step,
                "world_size": client_state["world_size"],
                "zero_stage": engine.zero_optimization_stage(),
            }
            mark_complete(ckpt_dir / tag, meta)
            atomic_write(ckpt_dir / LATEST, tag)
    except (OSError, RuntimeError, WriteError) as err:  # torch.save reports a full disk as a RuntimeError
        failure = write_failure(err, ckpt_dir / tag, "checkpoint")
        if failure is None:
            raise
        if is_main:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)  # only the tag this save was writing
        raise CheckpointError(f"{failure}; the previous complete checkpoint is intact") from err
    if is_main and keep_last > 0:
        prune(ckpt_dir, keep_last, keep={tag})
    barrier()
    return ckpt_dir / tag


class CheckpointError(UserError):
    """A checkpoint that cannot be written or read; the message names the folder or file."""


def mark_complete(tag_dir: Path, meta: dict[str, Any]) -> None:
    """Write the tag's marker, last: ``meta`` plus every file's size and sha256."""
    artifacts.mark_complete(tag_dir, meta, marker=META)


def tags(ckpt_dir: Path) -> list[str]:
    """Tag folders, oldest first (by step)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and re.fullmatch(r"step\d+", p.name))


def damage(tag_dir: Path, checksums: bool = True) -> str | None:
    """Why ``tag_dir`` cannot be resumed from (names the file), or None when it is complete."""
    return artifacts.damage(tag_dir, checksums, marker=META)


def newest_complete(ckpt_dir: Path) -> str | None:
    """The newest tag without damage, warning about each newer damaged one; None if no tag exists.
    Raises when tags exist but none is complete."""
    damaged = []
    for tag in reversed(tags(ckpt_dir)):
        why = damage(ckpt_dir / tag)
        if why is None:
            return tag
        log.warning("checkpoint %s is damaged: %s; trying the previous one", ckpt_dir / tag, why)
        damaged.append(why)
    if damaged:
        raise CheckpointError(f"{ckpt_dir}: no complete checkpoint to resume from ({'; '.join(damaged)})")
    return None


def prune(ckpt_dir: Path, keep_last: int, keep: set[str]) -> None:
    """Remove complete tags beyond the newest ``keep_last``, never one in ``keep`` or `latest`'s."""
    pointer = ckpt_dir / LATEST
    protected = set(keep) | ({pointer.read_text(encoding="utf-8").strip()} if pointer.is_file() else set())
    complete = [tag for tag in tags(ckpt_dir) if damage(ckpt_dir / tag, checksums=False) is None]
    for old in complete[:-keep_last]:  # (universal conversions live under universal/, not here)
        if old not in protected:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)


# What runs write into a run folder (train, run, submit, compare); anything else is someone's files.
RUN_ENTRIES = frozenset(
    {"config.yaml", "metrics.jsonl", "checkpoints", "tb", "vocab.json", "model", "locks", "eval.json",
     "result.json", "train_pieces.json", "submitit"}
)  # fmt: skip


def check_run_folder(out: Path) -> None:
    """``out`` is missing, empty, or a run folder: nothing in it but what a run writes (RUN_ENTRIES,
    their temp files, the export's lock, temp folders and damaged exports kept aside). A run never
    writes into another folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder (a run folder is a directory)")
    if not out.is_dir():
        return
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in RUN_ENTRIES
        and not p.name.endswith(".tmp")
        and not p.name.startswith((".model.", "model.damaged-"))
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise UserError(
            f"--out {out} holds files no run wrote ({shown}), so it is not a run folder: train into a "
            "new --out (a run folder holds only config.yaml, metrics.jsonl, checkpoints/, model/ and "
            "the like)"
        )


def refuse_fresh_start(run_dir: Path) -> None:
    """A fresh start would overwrite a run's metrics and prune its checkpoints: refuse it."""
    existing = tags(run_dir / "checkpoints")
    if existing:
        raise UserError(
            f"{run_dir} already holds a run's checkpoints ({run_dir / 'checkpoints' / existing[-1]}): "
            "continue it with --resume auto, or train into a new --out"
        )


def resolve_resume(resume: str, run_dir: Path, what: str = "--resume") -> tuple[Path, str] | None:
    """`--resume auto`: newest complete checkpoint of this run, or None for a fresh start.
    `--resume PATH`: a checkpoints folder (its newest complete tag) or one tag folder; must exist.
    ``what`` names the argument in errors (``export`` takes a PATH too)."""
    if not resume:
        return None
    if resume == "auto":
        ckpt_dir = run_dir / "checkpoints"
        tag = newest_complete(ckpt_dir)
        return (ckpt_dir, tag) if tag else None
    path = Path(resume)
    if path.is_dir() and path.name.startswith("step"):  # one tag
        why = damage(path)
        if why is not None:
            raise CheckpointError(f"{what} {resume}: {why}")
        return path.parent, path.name
    if path.is_dir() and tags(path):  # a checkpoints folder: its newest complete tag (or an error)
        return path, newest_complete(path)
    raise CheckpointError(
        f"{what} {resume}: no checkpoint there (expected RUN/checkpoints or RUN/checkpoints/stepNNNNNN)"
    )


def check_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise naming the first resume-sensitive field (``resume=True`` in config.py) whose value changed
    since the checkpoint."""
    for dotted in resume_sensitive():
        old, new = saved, current
        for part in dotted.split("."):
            old, new = (old or {}).get(part), (new or {}).get(part)
        if old != new:
            raise CheckpointError(
                f"cannot resume: config field {dotted!r} changed since the checkpoint ({old!r} -> {new!r}); "
                "start a new run folder instead"
            )


def check_inputs(saved: dict[str, str], current: dict[str, str]) -> None:
    """Raise naming the first bitext file whose bytes changed since the checkpoint: the run would go
    on training on other text (its shards, its trimmed vocabulary) than it started with."""
    for name, digest in saved.items():
        if current.get(name, digest) != digest:
            raise CheckpointError(
                f"cannot resume: {name} changed since the checkpoint (sha256 {digest[:12]}... -> "
                f"{current[name][:12]}...); restore it, or start a new run folder"
            )


def saved_meta(ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """A complete tag's marker: its step, world size, ZeRO stage and files."""
    return json.loads((ckpt_dir / tag / META).read_text(encoding="utf-8"))


def prepare_elastic(ckpt_dir: Path, tag: str, world_size: int, is_main: bool) -> tuple[Path, str, bool]:
    """Where to load from at this world size: the checkpoint itself, or (ZeRO >= 1 saved at another
    world size) a DeepSpeed universal conversion of it, built once on the main rank as an artifact
    (artifacts.build_once, keyed by the tag's marker: a tag saved again is converted again).

    Returns (load_dir, tag, load_universal)."""
    meta = saved_meta(ckpt_dir, tag)
    if meta["world_size"] == world_size or meta["zero_stage"] == 0:  # stage 0 holds whole optimizer state
        return ckpt_dir, tag, False
    universal = ckpt_dir / "universal" / tag
    if is_main:
        key = {"checkpoint_marker_sha256": sha256_file(ckpt_dir / tag / META)}
        artifacts.build_once(
            universal,
            lambda tmp: _to_universal(ckpt_dir / tag, tmp),
            "the universal checkpoint",
            key=key,
            adopt=lambda folder: {"key": key} if (folder / "zero").is_dir() else None,  # before markers
        )
    barrier()
    return universal.parent, tag, True


def _to_universal(tag_dir: Path, out: Path) -> dict[str, Any]:
    """DeepSpeed's universal conversion of ``tag_dir``, written into ``out``."""
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(tag_dir),
        "--output_folder",
        str(out),
        "--inject_missing_state",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"converting {tag_dir} to a universal checkpoint failed:\n{proc.stderr[-3000:]}")
    return {"source": str(tag_dir)}
