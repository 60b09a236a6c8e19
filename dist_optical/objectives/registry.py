"""Every loss term in one table: name -> what it computes, what it needs, what it costs.

A new term is one entry in `TERMS` (and its name in `config.LossTerm`, the load-time schema: the
config layer may not import this one, so the check at the bottom keeps the two equal). The
objective dispatches through the table, in its order (so the weighted sum adds in a fixed order);
the run asks it, through `needs`, whether to build idf marginals and whether to run the student on
the pivot side.

What a term may need (`Term.needs`):
- ``tokens``: both sides' token states, (B, L, d), and masks;
- ``pooled``: both sides' sentence embeddings, (B, d);
- ``ot_plan``: a Sinkhorn solve over token costs (the `ot.*` settings, idf marginals if asked);
- ``negatives``: the other pairs of the batch, gathered across ranks;
- ``student_pivot``: one more student pass, over the pivot side (forward and backward).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import Tensor

from dist_optical.config import LOSS_TERMS
from dist_optical.objectives.terms import contrastive_loss, mse_loss, ot_loss, ot_nce_loss, pad_tokens

if TYPE_CHECKING:  # models imports transformers (seconds); the table only needs the types
    from dist_optical.models import Encoded
    from dist_optical.objectives.objective import Objective

Need = Literal["tokens", "pooled", "ot_plan", "negatives", "student_pivot"]
NEEDS: tuple[str, ...] = typing.get_args(Need)
# (objective, teacher on the pivot side, student on the foreign side, student on the pivot side or
# None) -> (the term, its stats)
Compute = Callable[["Objective", "Encoded", "Encoded", "Encoded | None"], tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Term:
    compute: Compute
    needs: frozenset[Need]
    about: str  # one line: what it is and what it costs


def _ot(obj: Objective, teacher: Encoded, student: Encoded, student_pivot: Encoded | None):
    return ot_loss(teacher, student, obj.ot_cfg, obj.teacher_idf, obj.student_idf)


def _ot_nce(obj: Objective, teacher: Encoded, student: Encoded, student_pivot: Encoded | None):
    if obj.gather is not None:  # every rank gathers one shape
        teacher, student = pad_tokens(teacher, obj.pad_to), pad_tokens(student, obj.pad_to)
    symmetric = obj.contrastive_cfg.symmetric
    return ot_nce_loss(
        teacher, student, obj.ot_cfg, symmetric, obj.gather, obj.rank, obj.teacher_idf, obj.student_idf
    )


def _contrastive(obj: Objective, teacher: Encoded, student: Encoded, student_pivot: Encoded | None):
    cfg = obj.contrastive_cfg
    loss = contrastive_loss(
        student.pooled, teacher.pooled, cfg.temperature, cfg.symmetric, obj.gather, obj.rank
    )
    return loss, {}


def _mse(obj: Objective, teacher: Encoded, student: Encoded, student_pivot: Encoded | None):
    return mse_loss(student.pooled, teacher.pooled), {}


def _english(obj: Objective, teacher: Encoded, student: Encoded, student_pivot: Encoded | None):
    assert student_pivot is not None  # the objective checks `needs` first
    return mse_loss(student_pivot.pooled, teacher.pooled), {}


TERMS: dict[str, Term] = {
    "ot": Term(
        _ot,
        frozenset({"tokens", "ot_plan"}),
        "OPTICAL: entropic OT cost between the teacher's pivot tokens and the student's foreign "
        "tokens; one batched Sinkhorn solve of B problems",
    ),
    "ot_nce": Term(
        _ot_nce,
        frozenset({"tokens", "ot_plan", "negatives"}),
        "InfoNCE scored by minus the token-level OT cost of every (pivot, foreign) pair of the "
        "gathered batch; B x global-B Sinkhorn problems, the costliest term",
    ),
    "contrastive": Term(
        _contrastive,
        frozenset({"pooled", "negatives"}),
        "InfoNCE between pooled student (foreign) and teacher (pivot) embeddings, in-batch "
        "negatives gathered across ranks; cheap",
    ),
    "mse": Term(
        _mse,
        frozenset({"pooled"}),
        "MSE of the pooled student (foreign) to the pooled teacher (pivot), Reimers & Gurevych; cheap",
    ),
    "english": Term(
        _english,
        frozenset({"pooled", "student_pivot"}),
        "MSE of the student's own pooled pivot embedding to the teacher's (keeps its English and "
        "French); one more student pass, ~1.76x the step (bench/RESULTS.md)",
    ),
}


def needs(weights: dict[str, float], need: Need) -> bool:
    """Whether any term with a weight > 0 in ``weights`` (a `loss` section) needs ``need``."""
    return any(weight > 0 and need in TERMS[name].needs for name, weight in weights.items())


if tuple(TERMS) != LOSS_TERMS:  # a term added to one table and not the other
    raise ImportError(f"objectives.registry.TERMS {tuple(TERMS)} != config.LossTerm {LOSS_TERMS}")
