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

from dist_optical.config import LOSS_TERMS, OT_COSTS, OT_MARGINALS, ContrastiveConfig, OTConfig
from dist_optical.ot import marginal_error, plan_entropy, sinkhorn
from dist_optical.ot.sinkhorn import GRAD_MODES

if TYPE_CHECKING:  # models imports transformers (seconds); the losses only need the type
    from dist_optical.models import Encoded

COSTS, MARGINALS, TERMS = OT_COSTS, OT_MARGINALS, LOSS_TERMS

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


def transport(
    teacher: Encoded,
    student: Encoded,
    cfg: OTConfig,
    teacher_idf: Tensor | None = None,
    student_idf: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pair i's teacher tokens against pair i's student tokens -> (plan, cost, a, b): the (B, n, m)
    entropic OT plans and costs and the (B, n), (B, m) marginals."""
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
    return plan, cost, a, b


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
    plan, cost, a, b = transport(teacher, student, cfg, teacher_idf, student_idf)
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


def pairwise_transport_cost(
    teacher: Encoded,
    student: Encoded,
    cfg: OTConfig,
    teacher_idf: Tensor | None = None,
    student_idf: Tensor | None = None,
) -> Tensor:
    """(R,) teacher and (C,) student sentences -> (R, C) OT costs W[i, j] = <P_ij, C_ij> between the
    tokens of teacher sentence i and student sentence j: R x C problems in one batched Sinkhorn."""
    rows, cols = len(teacher.tokens), len(student.tokens)
    every_row = _select(teacher, torch.arange(rows).repeat_interleave(cols))
    every_col = _select(student, torch.arange(cols).repeat(rows))
    plan, cost, _, _ = transport(every_row, every_col, cfg, teacher_idf, student_idf)
    return (plan * cost).sum(dim=(1, 2)).view(rows, cols)


def _select(encoded: Encoded, index: Tensor) -> Encoded:
    index = index.to(encoded.tokens.device)
    return type(encoded)(
        encoded.tokens[index], encoded.mask[index], encoded.input_ids[index], encoded.pooled[index]
    )


def ot_nce_loss(
    teacher: Encoded,
    student: Encoded,
    cfg: OTConfig,
    symmetric: bool = True,
    gather: Gather | None = None,
    rank: int = 0,
    teacher_idf: Tensor | None = None,
    student_idf: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """OT with negatives: InfoNCE whose score for (English i, foreign j) is -W(i, j) / ot.nce_temperature,
    W the token-level OT cost (``pairwise_transport_cost``). It keeps OPTICAL's token alignment, but
    cannot collapse: every other sentence of the (gathered) batch is a negative.

    Rows are this rank's sentences, columns the gathered batch, as in `contrastive_loss`; ``gather``
    must take same-shape tensors on every rank (pad the token length first: `pad_tokens`). One-way:
    English rows (teacher) against foreign columns (student); symmetric: the mean with foreign rows
    against English columns. Stats: ``ot_nce/positive_cost``, ``ot_nce/negative_cost`` (means of W).
    """
    if not cfg.nce_temperature > 0:
        raise ValueError(f"ot.nce_temperature must be > 0, got {cfg.nce_temperature}")
    labels = rank * len(teacher.tokens) + torch.arange(len(teacher.tokens), device=teacher.tokens.device)
    every_student = _gather_encoded(student, gather)
    english_rows = pairwise_transport_cost(teacher, every_student, cfg, teacher_idf, student_idf)
    loss = F.cross_entropy(-english_rows / cfg.nce_temperature, labels)
    if symmetric:
        if gather is None:  # one process: the same (B, B) costs, read by column
            foreign_rows = english_rows.T
        else:
            every_teacher = _gather_encoded(teacher, gather)
            foreign_rows = pairwise_transport_cost(every_teacher, student, cfg, teacher_idf, student_idf).T
        loss = 0.5 * (loss + F.cross_entropy(-foreign_rows / cfg.nce_temperature, labels))
    with torch.no_grad():
        positive = english_rows.gather(1, labels[:, None])
        negatives = english_rows.numel() - positive.numel()
        stats = torch.stack([positive.mean(), (english_rows.sum() - positive.sum()) / max(1, negatives)])
    return loss, dict(zip(("ot_nce/positive_cost", "ot_nce/negative_cost"), stats.tolist(), strict=True))


def _gather_encoded(encoded: Encoded, gather: Gather | None) -> Encoded:
    if gather is None:
        return encoded
    return type(encoded)(
        gather(encoded.tokens),
        gather(encoded.mask.to(torch.uint8)).bool(),
        gather(encoded.input_ids),
        gather(encoded.pooled),
    )


def pad_tokens(encoded: Encoded, length: int) -> Encoded:
    """Pad (B, L, ...) token fields to ``length`` (L <= length): padding is masked out, so no OT mass
    and no cost reaches it; every rank then gathers the same shape."""
    extra = length - encoded.tokens.shape[1]
    if extra < 0:
        raise ValueError(f"pad_tokens: {encoded.tokens.shape[1]} tokens exceed length {length}")
    if extra == 0:
        return encoded
    return type(encoded)(
        F.pad(encoded.tokens, (0, 0, 0, extra)),
        F.pad(encoded.mask, (0, extra), value=False),
        F.pad(encoded.input_ids, (0, extra), value=0),
        encoded.pooled,
    )


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
    """Weighted sum of named terms (``ot``, ``ot_nce``, ``contrastive``, ``mse``, ``english``);
    weight-0 terms are skipped.

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
        for name, weight in weights.items():
            if name not in TERMS:
                raise ValueError(f"loss.{name}: unknown loss term (known: {', '.join(TERMS)})")
            if not weight >= 0:
                raise ValueError(f"loss.{name}: weight must be >= 0, got {weight}")
        self.weights = {name: float(weight) for name, weight in weights.items() if weight > 0}
        if not self.weights:
            raise ValueError(f"loss: every weight is zero ({weights}); nothing to train")
        if "ot" in self.weights or "ot_nce" in self.weights:
            check_ot_config(ot_cfg)
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
