"""Distillation objectives: token-level OT (OPTICAL), InfoNCE and MSE on pooled embeddings, and
English->English MSE (the student's English kept on the teacher's).

Pure torch: no torch.distributed or DeepSpeed here. A cross-rank all-gather reaches
`contrastive_loss` as a callable (see `dist_optical.engine.collectives.all_gather_with_grad`).
Convention throughout: the teacher encodes the English side (plan rows), the student the
foreign side (plan columns).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dist_optical.config import ContrastiveConfig, OTConfig
from dist_optical.ot import marginal_error, plan_entropy, sinkhorn
from dist_optical.ot.sinkhorn import GRAD_MODES

if TYPE_CHECKING:  # models imports transformers (seconds); the losses only need the type
    from dist_optical.models import Encoded

COSTS = ("cosine", "sqeuclidean")
MARGINALS = ("uniform", "idf")
TERMS = ("ot", "contrastive", "mse", "english")

Gather = Callable[[Tensor], Tensor]


def token_cost(
    teacher_tokens: Tensor,
    student_tokens: Tensor,
    kind: str = "cosine",
    center: bool = False,
    teacher_mask: Tensor | None = None,
    student_mask: Tensor | None = None,
) -> Tensor:
    """(B, n, d), (B, m, d) -> (B, n, m) cost between every teacher and student token of a pair.

    kind "cosine": 1 - cos, in [0, 2]; "sqeuclidean": |t - s|^2 of the L2-normalised vectors,
    in [0, 4]. ``center`` first subtracts each sentence's mean real token (masks (B, n), (B, m);
    None = every token is real) on each side: that removes the direction all tokens share, which
    otherwise makes the costs near uniform and the plan uninformative.
    """
    if kind not in COSTS:
        raise ValueError(f"ot.cost: expected one of {', '.join(COSTS)}, got {kind!r}")
    if center:
        teacher_tokens = _center(teacher_tokens, teacher_mask)
        student_tokens = _center(student_tokens, student_mask)
    t = F.normalize(teacher_tokens, dim=-1)
    s = F.normalize(student_tokens, dim=-1)
    cross = torch.bmm(t, s.transpose(1, 2))
    if kind == "cosine":
        return 1.0 - cross
    # Not 2 - 2 cos: a token that centring zeroed has norm 0, not 1.
    return t.square().sum(-1)[:, :, None] + s.square().sum(-1)[:, None, :] - 2.0 * cross


def _center(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """(B, L, d), (B, L) -> (B, L, d) minus each row's mean over its real tokens."""
    if mask is None:
        return tokens - tokens.mean(dim=1, keepdim=True)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    mean = (tokens * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return tokens - mean


def token_weights(mask: Tensor, input_ids: Tensor | None = None, idf: Tensor | None = None) -> Tensor:
    """(B, L) bool mask -> (B, L) float32 marginal: uniform over real tokens, or IDF-weighted.

    With ``idf`` (vocab,) and ``input_ids`` (B, L), token weights are proportional to
    idf[input_ids]. Padding gets 0; each row sums to 1; a row without real tokens is an error.
    """
    weights = mask.to(torch.float32)
    if idf is not None:
        if input_ids is None:
            raise ValueError("token_weights: idf weighting needs input_ids")
        weights = weights * idf.to(device=weights.device, dtype=torch.float32)[input_ids]
    total = weights.sum(dim=1, keepdim=True)
    empty = total.squeeze(1) <= 0
    if empty.any():
        raise ValueError(f"token_weights: batch row {empty.nonzero()[0].item()} has no real tokens")
    return weights / total


def idf_table(token_id_lists: Sequence[Sequence[int]], vocab_size: int) -> Tensor:
    """Documents as token-id lists -> (vocab_size,) float32 smoothed idf, log((N+1)/(df+1)) + 1."""
    df = torch.zeros(vocab_size, dtype=torch.float64)
    for ids in token_id_lists:
        df[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1.0
    return (torch.log((len(token_id_lists) + 1) / (df + 1.0)) + 1.0).to(torch.float32)


def check_ot_config(cfg: OTConfig) -> None:
    """Raise ValueError naming the first ``ot.*`` key whose value the OT loss cannot use."""
    for key, value, known in (
        ("cost", cfg.cost, COSTS),
        ("marginals", cfg.marginals, MARGINALS),
        ("grad", cfg.grad, GRAD_MODES),
    ):
        if value not in known:
            raise ValueError(f"ot.{key}: expected one of {', '.join(known)}, got {value!r}")
    if not cfg.eps > 0:
        raise ValueError(f"ot.eps: must be > 0, got {cfg.eps}")
    if not 0.0 <= cfg.eps_scaling < 1.0:
        raise ValueError(f"ot.eps_scaling: must be in (0, 1), or 0 for no schedule, got {cfg.eps_scaling}")
    if not cfg.rho >= 0:
        raise ValueError(f"ot.rho: must be > 0, or 0 for balanced OT, got {cfg.rho}")


def ot_loss(
    teacher: Encoded,
    student: Encoded,
    cfg: OTConfig,
    teacher_idf: Tensor | None = None,
    student_idf: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Mean over the batch of <P_i, C_i>, P_i the entropic OT plan between the pair's tokens.

    Stats: ``ot/plan_entropy`` (batch mean), ``ot/marginal_error`` (L1, batch max) and
    ``ot/cost_mean`` (mean cost where both tokens are real: near 1 with near-uniform costs).
    """
    if cfg.marginals not in MARGINALS:
        raise ValueError(f"ot.marginals: expected one of {', '.join(MARGINALS)}, got {cfg.marginals!r}")
    if cfg.marginals == "idf" and (teacher_idf is None or student_idf is None):
        raise ValueError("ot.marginals=idf needs idf tables for both teacher and student vocabularies")
    cost = token_cost(teacher.tokens, student.tokens, cfg.cost, cfg.center, teacher.mask, student.mask)
    if not torch.isfinite(cost).all():  # a numerical blow-up upstream, not a bad argument to sinkhorn
        raise FloatingPointError("loss.ot: NaN or inf in the token costs (non-finite embeddings)")
    a = token_weights(teacher.mask, teacher.input_ids, teacher_idf if cfg.marginals == "idf" else None)
    b = token_weights(student.mask, student.input_ids, student_idf if cfg.marginals == "idf" else None)
    plan = sinkhorn(
        cost,
        a,
        b,
        cfg.eps,
        cfg.max_iters,
        tol=cfg.tol or None,
        grad=cfg.grad,
        eps_scaling=cfg.eps_scaling or None,
        rho=cfg.rho or None,
    )
    loss = (plan * cost).sum(dim=(1, 2)).mean()
    with torch.no_grad():
        support = (a[:, :, None] > 0) & (b[:, None, :] > 0)
        diagnostics = torch.stack(
            [
                plan_entropy(plan).mean(),
                marginal_error(plan, a, b).amax(),
                cost.float().masked_fill(~support, 0.0).sum() / support.sum(),
            ]
        )
    names = ("ot/plan_entropy", "ot/marginal_error", "ot/cost_mean")
    return loss, dict(zip(names, diagnostics.tolist(), strict=True))  # one host sync for all three


def contrastive_loss(
    student_pooled: Tensor,
    teacher_pooled: Tensor,
    temperature: float,
    symmetric: bool = True,
    gather: Gather | None = None,
    rank: int = 0,
) -> Tensor:
    """InfoNCE on (B, d) pooled embeddings: cosine similarity / temperature, pair i is positive.

    One-way: each student row against every teacher row; symmetric: the mean of that and the
    teacher -> student direction. With ``gather`` (all-gather over dim 0 of equal-size local
    batches, keeping gradients, e.g. `engine.collectives.all_gather_with_grad`) the negatives
    are the global batch: this rank's B rows are scored against all gathered columns and its
    positives sit at columns rank * B + i. The result is this rank's local loss, whose mean over
    ranks is the loss of the global batch; with a gather whose backward sums gradients over
    ranks, DDP/DeepSpeed's gradient averaging then yields exactly the global loss's gradient.
    """
    if not temperature > 0:
        raise ValueError(f"contrastive.temperature must be > 0, got {temperature}")
    s = F.normalize(student_pooled, dim=-1)
    t = F.normalize(teacher_pooled, dim=-1)
    labels = rank * s.shape[0] + torch.arange(s.shape[0], device=s.device)
    t_all = gather(t) if gather is not None else t
    loss = F.cross_entropy(s @ t_all.T / temperature, labels)
    if not symmetric:
        return loss
    s_all = gather(s) if gather is not None else s
    return 0.5 * (loss + F.cross_entropy(t @ s_all.T / temperature, labels))


def mse_loss(student_pooled: Tensor, teacher_pooled: Tensor) -> Tensor:
    """(B, d), (B, d) -> scalar mean squared error (Reimers & Gurevych, arXiv 2004.09813)."""
    return F.mse_loss(student_pooled, teacher_pooled)


def mean_pairwise_cosine(pooled: Tensor) -> Tensor:
    """(B, d) -> scalar mean cosine over the B(B-1) off-diagonal pairs; NaN when B < 2.

    Near 1 means the sentence embeddings have collapsed onto one direction.
    """
    x = F.normalize(pooled.detach().float(), dim=-1)
    sim = x @ x.T
    pairs = x.shape[0] * (x.shape[0] - 1)
    return (sim.sum() - sim.diagonal().sum()) / pairs if pairs else sim.new_tensor(math.nan)


class Objective:
    """Weighted sum of named terms (``ot``, ``contrastive``, ``mse``, ``english``); weight-0 terms
    are skipped.

    ``gather``/``rank`` go to `contrastive_loss`; the idf tables to `ot_loss`. ``english`` is the
    MSE between the student's and the teacher's pooled embeddings of the English side (Reimers &
    Gurevych): it keeps the student's English where the teacher's English index expects it.
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
    ) -> None:
        for name, weight in weights.items():
            if name not in TERMS:
                raise ValueError(f"loss.{name}: unknown loss term (known: {', '.join(TERMS)})")
            if not weight >= 0:
                raise ValueError(f"loss.{name}: weight must be >= 0, got {weight}")
        self.weights = {name: float(weight) for name, weight in weights.items() if weight > 0}
        if not self.weights:
            raise ValueError(f"loss: every weight is zero ({weights}); nothing to train")
        if "ot" in self.weights:
            check_ot_config(ot_cfg)
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
