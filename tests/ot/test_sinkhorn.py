"""Batched Sinkhorn against POT, its gradients, properties on random masked problems, and input errors."""

from __future__ import annotations

import math

import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dist_optical.ot import epsilon_schedule, marginal_error, plan_entropy, sinkhorn

CONVERGED = {"max_iters": 3000, "tol": 1e-12}


def ragged_problem(batch, n, m, seed, dtype=torch.float64, scale=2.0):
    """Random costs in [0, scale] and random weights, items padded to (n, m) with trailing zeros."""
    gen = torch.Generator().manual_seed(seed)
    cost = scale * torch.rand(batch, n, m, generator=gen, dtype=dtype)
    a = torch.rand(batch, n, generator=gen, dtype=dtype) + 0.1
    b = torch.rand(batch, m, generator=gen, dtype=dtype) + 0.1
    rows = torch.randint(1, n + 1, (batch,), generator=gen)
    cols = torch.randint(1, m + 1, (batch,), generator=gen)
    a[torch.arange(n) >= rows[:, None]] = 0
    b[torch.arange(m) >= cols[:, None]] = 0
    return cost, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)


def pot_item(cost, a, b, i, eps, **kwargs):
    """POT's sinkhorn_log on item i's unpadded sub-problem, and the row/column masks."""
    rows, cols = a[i] > 0, b[i] > 0
    plan = ot.bregman.sinkhorn_log(a[i][rows], b[i][cols], cost[i][rows][:, cols], eps, warn=False, **kwargs)
    return plan, rows, cols


def regularised_value(cost, a, b, eps):
    """(B,) entropic OT value <P, C> - eps H(P) (POT's reg_type='entropy'), by the envelope solver."""
    plan = sinkhorn(cost, a, b, eps, **CONVERGED)
    return (plan * cost).sum((1, 2)) - eps * plan_entropy(plan)


@pytest.mark.parametrize("eps", [1.0, 0.1, 0.02])
def test_matches_pot_sinkhorn_log_per_item_with_padding(eps):
    cost, a, b = ragged_problem(6, 9, 7, seed=1)
    plan = sinkhorn(cost, a, b, eps, **CONVERGED)
    for i in range(len(cost)):
        ref, rows, cols = pot_item(cost, a, b, i, eps, numItermax=5000, stopThr=1e-13)
        torch.testing.assert_close(plan[i][rows][:, cols], ref, atol=1e-6, rtol=0)
        assert (plan[i][~rows] == 0).all() and (plan[i][:, ~cols] == 0).all()
        value = (ref * cost[i][rows][:, cols]).sum()
        torch.testing.assert_close((plan[i] * cost[i]).sum(), value, atol=1e-6, rtol=0)
    torch.testing.assert_close(plan.sum(2), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(plan.sum(1), b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("iters", [1, 4, 23])
def test_iterates_equal_pot_sinkhorn_log_one_for_one(iters):
    # Absorption (every check_every=3 iterations here) is an exact reparametrisation.
    cost, a, b = ragged_problem(4, 6, 8, seed=2)
    plan = sinkhorn(cost, a, b, 0.05, max_iters=iters, check_every=3)
    for i in range(len(cost)):
        ref, rows, cols = pot_item(cost, a, b, i, 0.05, numItermax=iters, stopThr=0.0)
        torch.testing.assert_close(plan[i][rows][:, cols], ref, atol=1e-12, rtol=0)


def test_matches_pot_solve_batch():
    cost, a, b = ragged_problem(5, 8, 6, seed=3)
    a, b = torch.full_like(a, 1 / 8), torch.softmax(torch.randn(5, 6, dtype=torch.float64), 1)  # no padding
    res = ot.batch.solve_batch(cost, 0.1, a, b, max_iter=5000, tol=1e-13, method="log_sinkhorn")
    plan = sinkhorn(cost, a, b, 0.1, **CONVERGED)
    torch.testing.assert_close(plan, res.plan, atol=1e-6, rtol=0)
    torch.testing.assert_close((plan * cost).sum((1, 2)), res.value_linear, atol=1e-6, rtol=0)


def test_envelope_gradient_is_the_plan_and_matches_finite_differences():
    cost, a, b = ragged_problem(3, 5, 6, seed=4)
    eps = 0.1
    leaf = cost.clone().requires_grad_(True)
    plan = sinkhorn(leaf, a, b, eps, **CONVERGED)
    assert not plan.requires_grad
    (plan * leaf).sum().backward()
    torch.testing.assert_close(leaf.grad, plan, atol=0, rtol=0)
    # d/dC of the regularised value is P (envelope theorem): central differences along a direction.
    direction = torch.randn(cost.shape, dtype=cost.dtype, generator=torch.Generator().manual_seed(0))
    h = 1e-5
    plus = regularised_value(cost + h * direction, a, b, eps)
    minus = regularised_value(cost - h * direction, a, b, eps)
    torch.testing.assert_close((plus - minus) / (2 * h), (plan * direction).sum((1, 2)), atol=1e-7, rtol=0)


def test_envelope_gradient_matches_pot_autodiff():
    cost, a, b = ragged_problem(4, 7, 5, seed=5)
    a, b = torch.full_like(a, 1 / 7), torch.full_like(b, 1 / 5)
    leaf = cost.clone().requires_grad_(True)
    res = ot.batch.solve_batch(leaf, 0.2, a, b, 3000, 1e-13, method="log_sinkhorn", grad="autodiff")
    res.value.sum().backward()
    torch.testing.assert_close(sinkhorn(cost, a, b, 0.2, **CONVERGED), leaf.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("eps_scaling", [None, 0.5])
def test_unrolled_gradient_matches_finite_differences(eps_scaling):
    cost, a, b = ragged_problem(2, 4, 3, seed=6)
    a[0, -1], b[1, -1] = 0.0, 0.0  # make sure both items are padded
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)

    def plan(c):
        return sinkhorn(c, a, b, 0.3, max_iters=12, check_every=5, grad="unrolled", eps_scaling=eps_scaling)

    assert torch.autograd.gradcheck(plan, cost.clone().requires_grad_(True))


@pytest.mark.parametrize("grad", ["envelope", "unrolled"])
def test_gradients_finite_with_padding_and_garbage_there(grad):
    cost, a, b = ragged_problem(4, 6, 6, seed=7, dtype=torch.float32)
    a[:, 3:], b[:, 4:] = 0.0, 0.0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    cost[:, 3:, :] = float("nan")  # padding rows may hold anything
    leaf = cost.clone().requires_grad_(True)
    plan = sinkhorn(leaf, a, b, 0.01, max_iters=50, grad=grad)
    (plan * leaf.masked_fill(a[:, :, None] == 0, 0.0)).sum().backward()
    assert torch.isfinite(plan).all() and torch.isfinite(leaf.grad).all()
    assert (plan[:, 3:] == 0).all() and (plan[:, :, 4:] == 0).all()


def test_tol_is_checked_every_check_every_iterations_only():
    cost, a, b = ragged_problem(3, 6, 6, seed=8)
    # The first check comes after 1 log-domain + 10 scaling iterations; a loose tol stops there.
    loose = sinkhorn(cost, a, b, 0.1, max_iters=100, tol=10.0, check_every=10)
    torch.testing.assert_close(loose, sinkhorn(cost, a, b, 0.1, max_iters=11), atol=0, rtol=0)
    tight = sinkhorn(cost, a, b, 0.1, max_iters=1000, tol=1e-9)
    assert marginal_error(tight, a, b).amax() < 1e-9
    assert not torch.equal(tight, sinkhorn(cost, a, b, 0.1, max_iters=1000))  # it did stop early


def test_fp32_small_eps_matches_fp64():
    # eps 0.01 with costs in [0, 2]: exp(-C/eps) spans e^-200, far below fp32's range.
    cost, a, b = ragged_problem(16, 64, 48, seed=9)
    plan64 = sinkhorn(cost, a, b, 0.01, max_iters=200)
    plan32 = sinkhorn(cost.float(), a.float(), b.float(), 0.01, max_iters=200)
    assert plan32.dtype == torch.float32
    torch.testing.assert_close(plan32.double(), plan64, atol=1e-6, rtol=0)


def test_fp32_kernel_underflow_rows_recover():
    # Row 0 costs 2 everywhere, the others 0 somewhere: its first-iteration kernel row is ~e^-400.
    cost = torch.zeros(1, 4, 4, dtype=torch.float64)
    cost[0, 0] = 2.0
    cost[0, 1:, :] = 2.0 * (1 - torch.eye(3, 4, dtype=torch.float64))
    a, b = torch.full((1, 4), 0.25, dtype=torch.float64), torch.full((1, 4), 0.25, dtype=torch.float64)
    plan64 = sinkhorn(cost, a, b, 0.005, max_iters=300)
    plan32 = sinkhorn(cost.float(), a.float(), b.float(), 0.005, max_iters=300)
    assert torch.isfinite(plan32).all()
    torch.testing.assert_close(plan32.double(), plan64, atol=1e-6, rtol=0)


def test_bf16_cost_runs_in_fp32_and_is_close():
    cost, a, b = ragged_problem(8, 20, 24, seed=10, dtype=torch.float32)
    plan = sinkhorn(cost.bfloat16(), a, b, 0.05, max_iters=100)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    torch.testing.assert_close(plan, sinkhorn(cost.bfloat16().float(), a, b, 0.05, max_iters=100))
    ref = sinkhorn(cost, a, b, 0.05, max_iters=100)
    assert (plan - ref).abs().sum((1, 2)).max() < 0.05  # bf16 rounds costs by up to 2**-8 relative
    assert ((plan - ref) * cost).sum((1, 2)).abs().max() < 5e-3


def test_eps_scaling_reaches_the_same_plan():
    cost, a, b = ragged_problem(3, 8, 8, seed=11)
    scaled = sinkhorn(cost, a, b, 0.02, eps_scaling=0.5, **CONVERGED)
    torch.testing.assert_close(scaled, sinkhorn(cost, a, b, 0.02, **CONVERGED), atol=1e-8, rtol=0)


def pot_unbalanced_item(cost, a, b, i, eps, rho):
    """POT's KL-relaxed Sinkhorn (reg_type='kl': entropy relative to a b^T) on item i, unpadded."""
    rows, cols = a[i] > 0, b[i] > 0
    plan = ot.unbalanced.sinkhorn_unbalanced(
        a[i][rows],
        b[i][cols],
        cost[i][rows][:, cols],
        eps,
        rho,
        method="sinkhorn",
        reg_type="kl",
        numItermax=20000,
        stopThr=1e-15,
    )
    return plan, rows, cols


@pytest.mark.parametrize(("eps", "rho"), [(1.0, 0.5), (0.1, 1.0), (0.05, 0.1), (0.1, 10.0)])
def test_unbalanced_matches_pot_per_item_with_padding(eps, rho):
    cost, a, b = ragged_problem(5, 8, 7, seed=12)
    b = 2.0 * b  # unequal masses: only the unbalanced problem is defined for them
    plan = sinkhorn(cost, a, b, eps, max_iters=20000, tol=1e-14, rho=rho)
    for i in range(len(cost)):
        ref, rows, cols = pot_unbalanced_item(cost, a, b, i, eps, rho)
        torch.testing.assert_close(plan[i][rows][:, cols], ref, atol=1e-8, rtol=0)
        assert (plan[i][~rows] == 0).all() and (plan[i][:, ~cols] == 0).all()


def test_unbalanced_drops_mass_that_only_a_far_token_could_take():
    # Row 1 is far (cost 2) from every column; balanced OT must still ship its mass.
    cost = torch.tensor([[[0.0, 0.0], [2.0, 2.0]]], dtype=torch.float64)
    a = b = torch.full((1, 2), 0.5, dtype=torch.float64)
    balanced = sinkhorn(cost, a, b, 0.05, **CONVERGED)
    relaxed = sinkhorn(cost, a, b, 0.05, max_iters=3000, tol=1e-12, rho=0.1)
    assert balanced[0, 1].sum() == pytest.approx(0.5)
    assert relaxed[0, 1].sum() < 0.05 * relaxed[0, 0].sum()
    # a large rho approaches the balanced plan
    strict = sinkhorn(cost, a, b, 0.05, max_iters=3000, tol=1e-12, rho=1e4)
    torch.testing.assert_close(strict, balanced, atol=1e-4, rtol=0)


def unbalanced_value(cost, a, b, eps, rho):
    """(B,) <P, C> + eps KL(P | a b^T) + rho KL(P 1 | a) + rho KL(P^T 1 | b), generalised KL."""

    def kl(x, y):
        keep = y > 0
        x, y = x[keep], y[keep]
        return (torch.special.xlogy(x, x) - torch.special.xlogy(x, y) - x + y).sum()

    plan = sinkhorn(cost, a, b, eps, max_iters=20000, tol=1e-14, rho=rho)
    ref = a[:, :, None] * b[:, None, :]
    return torch.stack(
        [
            (plan[i] * cost[i]).sum()
            + eps * kl(plan[i], ref[i])
            + rho * kl(plan[i].sum(1), a[i])
            + rho * kl(plan[i].sum(0), b[i])
            for i in range(len(cost))
        ]
    )


def test_unbalanced_envelope_gradient_matches_finite_differences():
    cost, a, b = ragged_problem(3, 5, 4, seed=13)
    eps, rho = 0.2, 0.5
    plan = sinkhorn(cost, a, b, eps, max_iters=20000, tol=1e-14, rho=rho)
    direction = torch.randn(cost.shape, dtype=cost.dtype, generator=torch.Generator().manual_seed(1))
    h = 1e-5
    plus = unbalanced_value(cost + h * direction, a, b, eps, rho)
    minus = unbalanced_value(cost - h * direction, a, b, eps, rho)
    torch.testing.assert_close((plus - minus) / (2 * h), (plan * direction).sum((1, 2)), atol=1e-7, rtol=0)


def test_unbalanced_with_eps_scaling_unrolled_and_fp32():
    cost, a, b = ragged_problem(3, 6, 5, seed=14)
    ref = sinkhorn(cost, a, b, 0.05, max_iters=20000, tol=1e-14, rho=0.5)
    scaled = sinkhorn(cost, a, b, 0.05, max_iters=20000, tol=1e-14, rho=0.5, eps_scaling=0.5)
    torch.testing.assert_close(scaled, ref, atol=1e-8, rtol=0)
    plan32 = sinkhorn(cost.float(), a.float(), b.float(), 0.05, max_iters=2000, rho=0.5)
    torch.testing.assert_close(plan32.double(), ref, atol=1e-5, rtol=0)

    def plan(c):
        return sinkhorn(c, a, b, 0.3, max_iters=8, grad="unrolled", rho=0.5)

    assert torch.autograd.gradcheck(plan, cost.clone().requires_grad_(True))


def test_epsilon_schedule():
    schedule = epsilon_schedule(0.01, 2.0, 0.5)
    assert schedule[0] == 2.0 and schedule[-1] == 0.01
    assert all(later < earlier for earlier, later in zip(schedule, schedule[1:], strict=False))
    assert all(math.isclose(x * 0.5, y) for x, y in zip(schedule[:-2], schedule[1:-1], strict=True))
    assert schedule[-2] * 0.5 <= 0.01 < schedule[-2]
    assert len(schedule) == 9  # 2 * 0.5**7 = 0.0156 > 0.01 >= 2 * 0.5**8
    assert epsilon_schedule(0.1, 0.05, 0.5) == [0.1]
    with pytest.raises(ValueError, match="eps_scaling"):
        epsilon_schedule(0.1, 1.0, 1.5)


def test_plan_entropy_and_marginal_error_by_hand():
    uniform = torch.full((1, 2, 3), 1 / 6)
    torch.testing.assert_close(plan_entropy(uniform), torch.tensor([math.log(6)]))
    diagonal = torch.tensor([[[0.5, 0.0], [0.0, 0.5]]])
    torch.testing.assert_close(plan_entropy(diagonal), torch.tensor([math.log(2)]))
    a = torch.tensor([[0.5, 0.5]])
    b = torch.tensor([[0.75, 0.25]])
    torch.testing.assert_close(marginal_error(diagonal, a, b), torch.tensor([0.5]))  # cols off by 0.25 twice


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 4),
    n=st.integers(1, 10),
    m=st.integers(1, 10),
    eps=st.floats(0.01, 1.0),
    check_every=st.integers(1, 20),
    eps_scaling=st.sampled_from([None, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_properties_on_random_masked_problems(batch, n, m, eps, check_every, eps_scaling, seed):
    cost, a, b = ragged_problem(batch, n, m, seed, dtype=torch.float32)
    options = {"max_iters": 3000, "tol": 1e-5, "check_every": check_every, "eps_scaling": eps_scaling}
    plan = sinkhorn(cost, a, b, eps, **options)
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    assert (plan.sum(2) - a).abs().sum(1).amax() < 1e-5  # exact after the last u update
    # Small eps can need more than max_iters: the columns must then be as close as fp64 gets.
    reference = sinkhorn(cost.double(), a.double(), b.double(), eps, **options)
    reference_error = (reference.sum(1) - b.double()).abs().sum(1).float()
    assert ((plan.sum(1) - b).abs().sum(1) < reference_error.clamp_min(1e-5) + 1e-5).all()
    assert (plan[a == 0] == 0).all() and (plan.transpose(1, 2)[b == 0] == 0).all()
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    permuted = sinkhorn(cost[:, rows], a[:, rows], b, eps, **options)
    torch.testing.assert_close(permuted, plan[:, rows], atol=2e-5, rtol=0)


ONE = torch.tensor([1])


def valid():
    return ragged_problem(2, 3, 4, seed=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, a, b: (c[0], a, b), "cost: expected a"),
        (lambda c, a, b: (c, a[:, :2], b), "weights: cost is"),
        (lambda c, a, b: (c, a, b[:1]), "weights: cost is"),
        (lambda c, a, b: (c, a.index_fill(0, ONE, 0.0), b), "a: batch item 1 has no positive mass"),
        (lambda c, a, b: (c, a, b.index_fill(0, ONE, 0.0)), "b: batch item 1 has no positive mass"),
        (lambda c, a, b: (c, -a, b), "a: weights must be finite and non-negative"),
        (lambda c, a, b: (c.index_fill(2, ONE, float("nan")), a, b), "cost: NaN or inf"),
        (lambda c, a, b: (c.index_fill(1, ONE, float("inf")), a, b), "cost: NaN or inf"),
    ],
)
def test_bad_inputs_raise(change, message):
    cost, a, b = change(*valid())
    with pytest.raises(ValueError, match=message):
        sinkhorn(cost, a, b, 0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0.0}, "eps must be > 0"),
        ({"eps": -1.0}, "eps must be > 0"),
        ({"grad": "implicit"}, "grad: expected one of envelope, unrolled"),
        ({"max_iters": 0}, "max_iters"),
        ({"tol": 0.0}, "tol must be > 0"),
        ({"eps_scaling": 1.0}, "eps_scaling must be in"),
        ({"eps_scaling": 0.9, "eps": 1e-3, "max_iters": 5}, "schedule has"),
        ({"rho": 0.0}, "rho must be > 0"),
    ],
)
def test_bad_options_raise(kwargs, message):
    cost, a, b = valid()
    with pytest.raises(ValueError, match=message):
        sinkhorn(cost, a, b, **({"eps": 0.1} | kwargs))
