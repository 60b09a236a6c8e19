"""The objective: a weighted sum of named terms (objectives/terms.py), the one thing the loop calls.

Pure torch, like the terms: a cross-rank all-gather arrives as a callable.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dist_optical.config import ContrastiveConfig, OTConfig
from dist_optical.objectives.terms import (
    Gather,
    contrastive_loss,
    mean_pairwise_cosine,
    mse_loss,
    ot_loss,
    ot_nce_loss,
    pad_tokens,
)

if TYPE_CHECKING:  # models imports transformers (seconds); the objective only needs the type
    from dist_optical.models import Encoded


class Objective:
    """Weighted sum of named terms (``ot``, ``ot_nce``, ``contrastive``, ``mse``, ``english``);
    weight-0 terms are skipped. The weights are a validated `loss` section (config.py checks names
    and ranges at load time).

    ``gather``/``rank`` go to `contrastive_loss` and `ot_nce_loss` (which pads its token tensors to
    ``pad_to`` first, so that every rank gathers one shape); the idf tables to the OT terms.
    ``english`` is the MSE between the student's and the teacher's pooled embeddings of the English
    side (Reimers & Gurevych): it keeps the student's English where the teacher's English index
    expects it.
    """

    def __init__(
        self,
        weights: dict[str, float],
        ot_cfg: OTConfig,
        contrastive_cfg: ContrastiveConfig,
        gather: Gather | None = None,
        rank: int = 0,
        teacher_idf: Tensor | None = None,
        student_idf: Tensor | None = None,
        pad_to: int | None = None,
    ) -> None:
        self.weights = {name: float(weight) for name, weight in weights.items() if weight > 0}
        if "ot_nce" in self.weights and gather is not None and pad_to is None:
            raise ValueError("loss.ot_nce across ranks needs pad_to (the token length every rank pads to)")
        self.pad_to = pad_to
        self.ot_cfg = ot_cfg
        self.contrastive_cfg = contrastive_cfg
        self.gather = gather
        self.rank = rank
        self.teacher_idf = teacher_idf
        self.student_idf = student_idf

    @property
    def needs_student_english(self) -> bool:
        """Whether `__call__` needs ``student_english``: the student's encoding of the English side."""
        return "english" in self.weights

    def __call__(
        self, teacher: Encoded, student: Encoded, student_english: Encoded | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Total loss and stats: ``loss/<name>`` per term, OT diagnostics, ``collapse/student_cos``,
        and with ``student_english`` ``english/student_teacher_cos`` (mean cosine of the pooled
        English embeddings: the student's drift on English)."""
        terms: dict[str, Tensor] = {}
        stats: dict[str, float] = {}
        if "ot" in self.weights:
            terms["ot"], ot_stats = ot_loss(teacher, student, self.ot_cfg, self.teacher_idf, self.student_idf)
            stats.update(ot_stats)
        if "ot_nce" in self.weights:
            english, foreign = teacher, student
            if self.gather is not None:
                english, foreign = pad_tokens(teacher, self.pad_to), pad_tokens(student, self.pad_to)
            terms["ot_nce"], nce_stats = ot_nce_loss(
                english,
                foreign,
                self.ot_cfg,
                self.contrastive_cfg.symmetric,
                self.gather,
                self.rank,
                self.teacher_idf,
                self.student_idf,
            )
            stats.update(nce_stats)
        if "contrastive" in self.weights:
            cfg = self.contrastive_cfg
            terms["contrastive"] = contrastive_loss(
                student.pooled, teacher.pooled, cfg.temperature, cfg.symmetric, self.gather, self.rank
            )
        if "mse" in self.weights:
            terms["mse"] = mse_loss(student.pooled, teacher.pooled)
        if "english" in self.weights:
            if student_english is None:
                raise ValueError("loss.english > 0 needs the student's encoding of the English side")
            terms["english"] = mse_loss(student_english.pooled, teacher.pooled)
        total = sum(self.weights[name] * term for name, term in terms.items())

        logged = {f"loss/{name}": term.detach().float() for name, term in terms.items()}
        logged["collapse/student_cos"] = mean_pairwise_cosine(student.pooled)
        if student_english is not None:
            logged["english/student_teacher_cos"] = F.cosine_similarity(
                student_english.pooled.detach().float(), teacher.pooled.detach().float(), dim=-1
            ).mean()
        *values, total_value = torch.stack([*logged.values(), total.detach().float()]).tolist()  # host sync
        stats.update(zip(logged, values, strict=True))
        bad = [f"loss.{n} = {stats['loss/' + n]}" for n in terms if not math.isfinite(stats["loss/" + n])]
        if bad or not math.isfinite(total_value):
            raise FloatingPointError(f"non-finite loss: {', '.join(bad) or f'weighted sum = {total_value}'}")
        return total, stats
