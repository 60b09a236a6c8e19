"""What a training step reports: metrics.jsonl and TensorBoard, the per-language shares, and the
warnings and stops that watch them (collapse, skipped samples)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from dist_optical.errors import UserError
from dist_optical.files import atomic_write, text_lines, writing

log = logging.getLogger("dist_optical.train")


def pair_shares(batch_pairs: list[str], pairs: list[str]) -> dict[str, float]:
    """``pair/XX-YY``: the share of this micro-batch's pairs in each training language pair (every
    step logs every pair, so the rank mean is the global share); bitexts of one pair add up."""
    labels = list(dict.fromkeys(pairs))
    if len(labels) < 2:
        return {}
    return {f"pair/{label}": batch_pairs.count(label) / max(1, len(batch_pairs)) for label in labels}


class TooManySkipped(UserError):
    """data.on_error=skip dropped more of the run's pairs than data.max_skip_fraction allows."""


def check_skipped(skipped: int, drawn: int, max_fraction: float, saved: Path) -> None:
    if skipped > max_fraction * drawn:
        raise TooManySkipped(
            f"skipped {skipped} of the {drawn} pairs drawn as unreadable ({100 * skipped / drawn:.1f}% > "
            f"data.max_skip_fraction {100 * max_fraction:g}%): the shards are damaged, rebuild them with "
            f"`dist-optical shard`; no model was exported (the checkpoint {saved} is kept)"
        )


def check_not_empty(batch: dict[str, Any], step: int, error_counts: dict[str, int]) -> None:
    if not batch["key"]:
        raise TooManySkipped(
            f"step {step + 1}: every sample of this rank's micro-batch was skipped as unreadable "
            f"(data.on_error=skip; counts so far: {error_counts}); the shards are too "
            "damaged to train on: rebuild them with `dist-optical shard`"
        )


def warn_if_collapsing(metrics: dict[str, float], baseline: float, margin: float) -> None:
    """The failure mode of OT alone: every sentence, one vector. Relative to where the student
    started (e5's sentences already share a cosine of ~0.9), not a fixed threshold."""
    threshold = baseline + margin * (1.0 - baseline)
    if metrics["collapse/student_cos"] > threshold:
        log.warning(
            "step %d: student sentence embeddings are collapsing (mean pairwise cosine %.3f, %.3f at the "
            "start; warning above %.3f)",
            metrics["step"], metrics["collapse/student_cos"], baseline, threshold,
        )  # fmt: skip


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The lines of metrics.jsonl up to ``step``; a line that is not one of ours names the file."""
    kept = []
    for number, line in text_lines(path, UserError):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"{path}:{number}: not a metrics line of a run (a JSON object with a step)"
            ) from None
    return kept


class MetricsLogger:
    """metrics.jsonl (one line per optimizer step) + TensorBoard scalars, on the main rank only."""

    def __init__(self, out: Path, enabled: bool, resume_step: int):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "metrics.jsonl"
        if self.path.exists():  # drop lines past the checkpoint we resumed from: they will be redone
            kept = _lines_up_to(self.path, resume_step)
            atomic_write(self.path, "".join(line + "\n" for line in kept), "the metrics")
        with writing(self.path, "the metrics"):
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
        self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, metrics: dict[str, float]) -> None:
        """A value that cannot be computed (a diagnostic over < 2 sentences) is named, never NaN."""
        if not self.enabled:
            return
        unscored = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
        metrics = {k: v for k, v in metrics.items() if k not in unscored}
        if unscored:
            metrics["unscored"] = unscored
        with writing(self.path, "the metrics"):
            self.file.write(json.dumps(metrics, allow_nan=False) + "\n")
            self.file.flush()
        for name, value in metrics.items():
            if name not in ("step", "unscored"):
                self.tb.add_scalar(name, value, metrics["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()
