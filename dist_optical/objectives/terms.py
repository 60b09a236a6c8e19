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

from dist_optical.config import OTConfig
from dist_optical.ot import marginal_error, plan_entropy, sinkhorn

if TYPE_CHECKING:  # models imports transformers (seconds); the losses only need the type
    from dist_optical.models import Encoded

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


def transport(
    teacher: Encoded,
    student: Encoded,
    cfg: OTConfig,
    teacher_idf: Tensor | None = None,
    student_idf: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pair i's teacher tokens against pair i's student tokens -> (plan, cost, a, b): the (B, n, m)
    entropic OT plans and costs and the (B, n), (B, m) marginals."""
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
    row_index = torch.arange(rows, device=teacher.tokens.device).repeat_interleave(cols)
    col_index = torch.arange(cols, device=student.tokens.device).repeat(rows)
    every_row = teacher.map(lambda field: field[row_index])
    every_col = student.map(lambda field: field[col_index])
    plan, cost, _, _ = transport(every_row, every_col, cfg, teacher_idf, student_idf)
    return (plan * cost).sum(dim=(1, 2)).view(rows, cols)


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
    # The collective moves numbers, not booleans: the mask travels as uint8.
    return encoded.map(
        lambda field: gather(field.to(torch.uint8)).bool() if field.dtype == torch.bool else gather(field)
    )


def pad_tokens(encoded: Encoded, length: int) -> Encoded:
    """Pad (B, L, ...) token fields to ``length`` (L <= length): padding is masked out, so no OT mass
    and no cost reaches it; every rank then gathers the same shape."""
    extra = length - encoded.tokens.shape[1]
    if extra < 0:
        raise ValueError(f"pad_tokens: {encoded.tokens.shape[1]} tokens exceed length {length}")
    if extra == 0:
        return encoded
    # F.pad's last pair pads the last dimension: (0, 0) keeps the hidden one of (B, L, d) as it is.
    return encoded.map(lambda field: F.pad(field, (0, 0) * (field.dim() - 2) + (0, extra)), pooled=False)


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
