"""Batched, masked, log-stabilised Sinkhorn for entropic optimal transport.

Solves, for each item of a batch, POT's problem (``reg`` = eps, histograms a and b)

    P = argmin_P <P, C> + eps * sum_ij P_ij log P_ij   s.t.  P 1 = a,  P^T 1 = b,  P >= 0

whose solution is P_ij = exp((f_i + g_j - C_ij) / eps) for dual potentials f (B, n), g (B, m).

Algorithm (Schmitzer's absorption, arXiv 1610.06519): the first iteration, and every step of
an optional epsilon schedule, is an exact log-domain (logsumexp) update of f and g. The
remaining iterations are cheap exp-domain scaling updates u <- a / (K v), v <- b / (K^T u) on
the kernel K = exp((f + g - C) / eps), done as batched matrix-vector products. Every
``check_every`` iterations (one host sync) the scalings are checked: once any leaves a safe
range (|log| > 21.8 in fp32) they are absorbed into the potentials (f += eps log u,
g += eps log v) and K is rebuilt, which keeps all numbers in range even for small eps; within
a block, denominators are clamped so that nothing divides by 0. With exact arithmetic the
iterates are those of ``ot.bregman.sinkhorn_log`` (v then u), one for one.

Unbalanced (``rho``, POT's ``reg_m`` with ``reg_type="kl"``): the marginal constraints become
penalties rho * KL(P 1 | a) + rho * KL(P^T 1 | b) and the entropy is taken relative to a b^T,
as in ``ot.unbalanced.sinkhorn_unbalanced``. Each potential update is then the balanced one
with its logsumexp scaled by rho / (rho + eps), so mass a token cannot place cheaply is dropped
instead of being forced onto a distant token. Every iteration runs in the log domain.

Padding (a_i = 0 or b_j = 0) is masked: its potentials stay 0 and its logits are a large
finite negative number, so the plan is exactly 0 there and no logsumexp ever sees a row of
-inf (which would give NaN gradients in unrolled mode).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

GRAD_MODES = ("envelope", "unrolled")


def epsilon_schedule(eps: float, start: float, scaling: float) -> list[float]:
    """Geometric schedule from ``start`` down to ``eps`` (GeomLoss' epsilon-scaling).

    Returns [start, start * scaling, start * scaling**2, ..., eps]: every value above eps, then
    eps itself. ``scaling`` in (0, 1) is the ratio between consecutive values; a start at or
    below eps gives [eps].
    """
    if not 0.0 < scaling < 1.0:
        raise ValueError(f"eps_scaling must be in (0, 1), got {scaling}")
    if start <= eps:
        return [eps]
    steps = math.ceil(math.log(eps / start) / math.log(scaling))
    return [start * scaling**k for k in range(steps)] + [eps]


def plan_entropy(plan: Tensor) -> Tensor:
    """(B, n, m) -> (B,): Shannon entropy -sum P log P of each plan (0 log 0 = 0)."""
    return torch.special.entr(plan).sum(dim=(1, 2))


def marginal_error(plan: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """(B, n, m), (B, n), (B, m) -> (B,): L1 violation of both marginals, |P 1 - a| + |P^T 1 - b|."""
    rows = (plan.sum(dim=2) - a).abs().sum(dim=1)
    cols = (plan.sum(dim=1) - b).abs().sum(dim=1)
    return rows + cols


def sinkhorn(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    eps: float,
    max_iters: int = 100,
    tol: float | None = None,
    check_every: int = 10,
    grad: str = "envelope",
    eps_scaling: float | None = None,
    rho: float | None = None,
) -> Tensor:
    """Entropic OT plans for a batch of (padded) problems.

    Args:
        cost: (B, n, m) cost matrices; fp64 is solved in fp64, anything else (fp32, bf16, fp16)
            in fp32.
        a: (B, n) row weights, b: (B, m) column weights: non-negative, zero on padding, each
            item's a and b with the same total mass (1 by convention, as in POT) unless ``rho``.
        eps: entropic regularisation (POT's ``reg``), in the units of the cost.
        max_iters: total number of Sinkhorn iterations, epsilon-schedule steps included.
        tol: stop once the L1 error of the b-marginal (max over the batch) is below tol (with
            ``rho``: once the plan's column sums change by less than tol, L1, between two checks);
            it is checked every ``check_every`` iterations only, since each check is a host sync.
            None: always run ``max_iters``.
        check_every: iterations between checks of the scalings' range (absorbed into the
            potentials when needed) and of tol: one host sync each; keep it near 10 for small
            eps in fp32, where long blocks lose accuracy.
        grad: "envelope": solve under no_grad and return a detached plan, so the caller's
            ``(plan * cost).sum()`` has gradient P w.r.t. the cost (the envelope theorem for
            the regularised OT value); "unrolled": autograd through every iteration.
        eps_scaling: None, or the ratio in (0, 1) of a geometric schedule from the largest
            cost on the support down to eps, one log-domain iteration per value (GeomLoss).
        rho: None for balanced OT, or the strength > 0 of the KL penalties that replace the
            marginal constraints (unbalanced OT; large rho approaches the balanced plan).

    Returns:
        (B, n, m) plans, in fp64 for an fp64 cost and fp32 otherwise; exactly 0 on padding.
    """
    _check_inputs(cost, a, b, eps, max_iters, tol, check_every, grad)
    cost = _finite_cost(cost, a, b)
    if rho is not None and not rho > 0:
        raise ValueError(f"rho must be > 0 (or None for balanced OT), got {rho}")
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    with torch.no_grad() if grad == "envelope" else contextlib.nullcontext():
        return _solve(
            cost.to(dtype), a.to(dtype), b.to(dtype), eps, max_iters, tol, check_every, eps_scaling, rho
        )


def _solve(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    eps: float,
    max_iters: int,
    tol: float | None,
    check_every: int,
    eps_scaling: float | None,
    rho: float | None = None,
) -> Tensor:
    """The iterations; shapes and conventions as in `sinkhorn`, inputs already validated."""
    row, col = a > 0, b > 0
    schedule = [eps]
    if eps_scaling is not None:
        start = cost.masked_fill(~(row[:, :, None] & col[:, None, :]), 0.0).amax().item()
        schedule = epsilon_schedule(eps, start, eps_scaling)
    if len(schedule) > max_iters:
        raise ValueError(f"the epsilon schedule has {len(schedule)} steps but max_iters is {max_iters}")

    logits = _logits(cost, row, col, eps)
    # One (B, n, m) scratch tensor for every intermediate: on CPU a fresh tensor of that size costs
    # page faults comparable to the arithmetic on it (~25% of a solve). Autograd (unrolled mode)
    # needs each intermediate kept, so it gets fresh ones.
    work = None if logits.requires_grad else torch.empty_like(logits)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for eps_k in schedule:
        logits_k = logits if eps_k == eps else _logits(cost, row, col, eps_k)
        f, g = _log_step(logits_k, a, b, f, g, eps_k, row, col, _damping(rho, eps_k), work)
    done = len(schedule)
    if rho is not None:
        return _unbalanced_iterations(
            logits, a, b, f, g, eps, rho, done, max_iters, tol, check_every, row, col, work
        )
    return _balanced_iterations(logits, a, b, f, g, eps, done, max_iters, tol, check_every, row, col, work)


def _balanced_iterations(
    logits: Tensor,
    a: Tensor,
    b: Tensor,
    f: Tensor,
    g: Tensor,
    eps: float,
    done: int,
    max_iters: int,
    tol: float | None,
    check_every: int,
    row: Tensor,
    col: Tensor,
    work: Tensor | None,
) -> Tensor:
    """Exp-domain iterations ``done``..``max_iters`` on the kernel of (f, g) -> the (B, n, m) plan.

    The plan is u^T * kernel * v with scalings u (B, 1, n) and v (B, 1, m), 1 on padding. With a
    scratch tensor ``work``, the kernel is built in it and the plan scaled in place.
    """
    # Bounds on the scaling denominators: a row whose kernel underflows to 0 takes a truncated
    # step instead of dividing by 0, and 1/tiny times the row length cannot overflow.
    tiny = torch.finfo(logits.dtype).tiny ** 0.5
    kernel = _plan(logits, f, g, eps, out=work)
    u, v = torch.ones_like(a)[:, None, :], torch.ones_like(b)[:, None, :]
    while done < max_iters:
        steps = min(check_every, max_iters - done)
        u, v = _scaling_steps(kernel, a, b, u, steps, row, col, tiny)
        done += steps
        if done == max_iters:
            break
        spread, error = _block_check(kernel, b, u, v, tol)  # one host sync per block
        if tol is not None and error < tol:
            break
        if spread > -0.5 * math.log(tiny):  # the scalings left the safe range: absorb them
            f, g = f + eps * u.squeeze(1).log(), g + eps * v.squeeze(1).log()
            kernel = _plan(logits, f, g, eps, out=work)
            u, v = torch.ones_like(u), torch.ones_like(v)
    if work is None:
        return (u.transpose(1, 2) * kernel).mul_(v)
    return kernel.mul_(u.transpose(1, 2)).mul_(v)


def _damping(rho: float | None, eps: float) -> float:
    """The exponent rho / (rho + eps) of the unbalanced scaling updates (POT's ``fi``); 1 if balanced."""
    return 1.0 if rho is None else rho / (rho + eps)


def _unbalanced_iterations(
    logits: Tensor,
    a: Tensor,
    b: Tensor,
    f: Tensor,
    g: Tensor,
    eps: float,
    rho: float,
    done: int,
    max_iters: int,
    tol: float | None,
    check_every: int,
    row: Tensor,
    col: Tensor,
    work: Tensor | None,
) -> Tensor:
    """Log-domain iterations ``done``..``max_iters`` of unbalanced Sinkhorn -> the (B, n, m) plan.

    The marginals are never met exactly, so convergence is judged by how much the plan's column
    sums still move between two checks (checked every ``check_every`` iterations: a host sync).
    """
    damping = _damping(rho, eps)
    previous = None
    while done < max_iters:
        for _ in range(min(check_every, max_iters - done)):
            f, g = _log_step(logits, a, b, f, g, eps, row, col, damping, work)
            done += 1
        if tol is not None and done < max_iters:
            columns = _plan(logits, f, g, eps, out=work).sum(dim=1)
            if previous is not None and (columns - previous).abs().sum(dim=1).amax().item() < tol:
                break
            previous = columns
    return _plan(logits, f, g, eps, out=work)


def _logits(cost: Tensor, row: Tensor, col: Tensor, eps: float) -> Tensor:
    """(B, n, m) finite cost, (B, n), (B, m) masks of real rows/cols -> -cost/eps, and off the support
    a finite stand-in for -inf: exp() of it is 0, yet a logsumexp over it keeps finite gradients.

    The stand-in is added as a row bias plus a column bias (a quarter of the dtype's lowest value
    each): two cheap passes, where a (B, n, m) boolean mask and torch.where take ten times longer.
    """
    fill = torch.finfo(cost.dtype).min / 4
    row_bias, col_bias = (~row).to(cost.dtype) * fill, (~col).to(cost.dtype) * fill
    return torch.add(row_bias[:, :, None], cost, alpha=-1.0 / eps).add_(col_bias[:, None, :])


def _plan(logits: Tensor, f: Tensor, g: Tensor, eps: float, out: Tensor | None = None) -> Tensor:
    """(B, n, m) logits -C/eps, potentials (B, n), (B, m) -> plan exp((f + g - C) / eps), written
    into ``out`` if given (else one fresh tensor, as in `_logsumexp`)."""
    return torch.add(logits, f[:, :, None] / eps, out=out).add_(g[:, None, :] / eps).exp_()


def _logsumexp(logits: Tensor, shift: Tensor, dim: int, work: Tensor | None = None) -> Tensor:
    """logsumexp over ``dim`` of logits + shift (broadcast), computed in ``work`` if given (else in
    one fresh (B, n, m) temporary)."""
    x = torch.add(logits, shift, out=work)
    peak = x.detach().amax(dim=dim, keepdim=True)  # a constant shift: the gradient is softmax(x)
    return x.sub_(peak).exp_().sum(dim=dim).log_() + peak.squeeze(dim)


def _log_step(
    logits: Tensor,
    a: Tensor,
    b: Tensor,
    f: Tensor,
    g: Tensor,
    eps: float,
    row: Tensor,
    col: Tensor,
    damping: float = 1.0,
    work: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One log-domain Sinkhorn iteration (g, then f), as in ``ot.bregman.sinkhorn_log``.

    logits (B, n, m) = -C/eps with the fill off the support; a, f, row (B, n); b, g, col (B, m).
    ``damping`` = rho / (rho + eps) < 1 is the unbalanced update (plan a b^T-relative, see the
    module doc); 1.0 leaves the balanced update bit for bit unchanged. ``work``: scratch, as in
    `_logsumexp`.
    """
    lse = _logsumexp(logits, f[:, :, None] / eps, dim=1, work=work)
    g = torch.where(col, eps * (b.log() - damping * lse), 0.0)
    lse = _logsumexp(logits, g[:, None, :] / eps, dim=2, work=work)
    f = torch.where(row, eps * (a.log() - damping * lse), 0.0)
    return f, g


def _scaling_steps(
    kernel: Tensor, a: Tensor, b: Tensor, u: Tensor, steps: int, row: Tensor, col: Tensor, tiny: float
) -> tuple[Tensor, Tensor]:
    """``steps`` exp-domain iterations v <- b / (K^T u), u <- a / (K v) -> the new (u, v).

    kernel (B, n, m); a, row (B, n); b, col (B, m); u (B, 1, n). The scalings are row vectors so
    that both products are (B, 1, k) @ (B, k, l) bmm calls, the fast layout on CPU. On padding
    they are 1 (0 / denominator + 1), so that their logs leave the padding potentials at 0.
    """
    a, b = a[:, None, :], b[:, None, :]
    pad_row, pad_col = (~row[:, None, :]).to(a.dtype), (~col[:, None, :]).to(b.dtype)
    kernel_t = kernel.transpose(1, 2)
    for _ in range(steps):
        v = torch.addcdiv(pad_col, b, torch.bmm(u, kernel).clamp_min(tiny))
        u = torch.addcdiv(pad_row, a, torch.bmm(v, kernel_t).clamp_min(tiny))
    return u, v


def _block_check(kernel: Tensor, b: Tensor, u: Tensor, v: Tensor, tol: float | None) -> tuple[float, float]:
    """Largest |log| of the scalings, and the b-marginal L1 error of the plan (max over the batch).

    Shapes as in `_scaling_steps`; the error is only computed with a tol (else inf). The rows
    of the plan sum to a after every u update, so the b-marginal is the one to check.
    """
    spread = torch.maximum(u.log().abs().amax(), v.log().abs().amax())
    if tol is None:
        return spread.item(), math.inf
    error = (v * torch.bmm(u, kernel) - b[:, None, :]).abs().sum(dim=2).amax()
    spread, error = torch.stack([spread, error]).tolist()
    return spread, error


def _check_inputs(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    eps: float,
    max_iters: int,
    tol: float | None,
    check_every: int,
    grad: str,
) -> None:
    """Raise ValueError naming the first problem found in the arguments of `sinkhorn`."""
    if grad not in GRAD_MODES:
        raise ValueError(f"grad: expected one of {', '.join(GRAD_MODES)}, got {grad!r}")
    if cost.dim() != 3:
        raise ValueError(f"cost: expected a (B, n, m) tensor, got shape {tuple(cost.shape)}")
    batch, n, m = cost.shape
    if tuple(a.shape) != (batch, n) or tuple(b.shape) != (batch, m):
        raise ValueError(
            f"weights: cost is {tuple(cost.shape)} so a must be {(batch, n)} and b {(batch, m)}, "
            f"got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if max_iters < 1 or check_every < 1:
        raise ValueError(f"max_iters and check_every must be >= 1, got {max_iters} and {check_every}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 or None, got {tol}")
    for name, weights in (("a", a), ("b", b)):
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"{name}: weights must be finite and non-negative")
        empty = weights.sum(dim=1) <= 0
        if empty.any():
            raise ValueError(f"{name}: batch item {empty.nonzero()[0].item()} has no positive mass")


def _finite_cost(cost: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The (B, n, m) cost, with 0 off the support if NaN/inf sit there (padding may hold anything).

    A NaN or inf where both weights are positive is an error. A finite sum (one pass) proves
    every entry finite, so the exact check and the copy run only when it is not.
    """
    if torch.isfinite(cost.sum()):
        return cost
    off_support = (a[:, :, None] <= 0) | (b[:, None, :] <= 0)
    if not (torch.isfinite(cost) | off_support).all():
        raise ValueError("cost: NaN or inf where both weights are positive")
    return cost.masked_fill(off_support, 0.0)
