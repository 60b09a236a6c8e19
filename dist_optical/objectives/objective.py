"""The objective: a weighted sum of named terms (objectives/registry.py), the one thing the loop calls.

Pure torch, like the terms: a cross-rank all-gather arrives as a callable.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dist_optical.config import ContrastiveConfig, OTConfig
from dist_optical.objectives.registry import TERMS, needs
from dist_optical.objectives.terms import Gather, mean_pairwise_cosine

if TYPE_CHECKING:  # models imports transformers (seconds); the objective only needs the type
    from dist_optical.models import Encoded


class Objective:
    """Weighted sum of the named terms of `registry.TERMS`; weight-0 terms are skipped. The weights
    are a validated `loss` section (config.py checks names and ranges at load time).

    ``gather``/``rank`` reach the terms that need ``negatives`` (token terms pad to ``pad_to`` first,
    so that every rank gathers one shape); the idf tables reach the ``ot_plan`` terms.
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
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"loss.{unknown[0]}: no such term (known: {', '.join(TERMS)})")
        self.weights = {name: float(weight) for name, weight in weights.items() if weight > 0}
        gathered_tokens = [n for n in self.weights if {"tokens", "negatives"} <= TERMS[n].needs]
        if gathered_tokens and gather is not None and pad_to is None:
            raise ValueError(
                f"loss.{gathered_tokens[0]} across ranks needs pad_to (the token length every rank pads to)"
            )
        self.pad_to = pad_to
        self.ot_cfg = ot_cfg
        self.contrastive_cfg = contrastive_cfg
        self.gather = gather
        self.rank = rank
        self.teacher_idf = teacher_idf
        self.student_idf = student_idf

    @property
    def needs_student_english(self) -> bool:
        """Whether `__call__` needs ``student_english``: the student's encoding of the pivot side
        (English or French), for the terms that need ``student_pivot``."""
        return needs(self.weights, "student_pivot")

    def __call__(
        self, teacher: Encoded, student: Encoded, student_english: Encoded | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Total loss and stats: ``loss/<name>`` per term, OT diagnostics, ``collapse/student_cos``,
        and with ``student_english`` ``english/student_teacher_cos`` (mean cosine of the pooled
        English embeddings: the student's drift on English)."""
        terms: dict[str, Tensor] = {}
        stats: dict[str, float] = {}
        for name, term in TERMS.items():  # the table's order: the sum adds in a fixed order
            if name not in self.weights:
                continue
            if "student_pivot" in term.needs and student_english is None:
                raise ValueError(f"loss.{name} > 0 needs the student's encoding of the pivot side")
            terms[name], term_stats = term.compute(self, teacher, student, student_english)
            stats.update(term_stats)
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
