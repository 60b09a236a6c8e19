"""OT with negatives (`loss.ot_nce`): against a loop of single-pair `ot_loss` calls, its gradient,
padding, and 2 gloo ranks against one process."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dist_optical.config import ContrastiveConfig, OTConfig
from dist_optical.engine.collectives import all_gather_with_grad
from dist_optical.engine.dist import free_port
from dist_optical.models import Encoded
from dist_optical.objectives import Objective
from dist_optical.objectives.terms import ot_loss, ot_nce_loss, pad_tokens, pairwise_transport_cost

CFG = OTConfig(eps=0.1, max_iters=200, nce_temperature=0.1)
WORLD, LOCAL = 2, 3


def batch(size=5, seed=0, dtype=torch.float32):
    """Random sentences of uneven length: padding masked out, a special token at position 0."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(size, 6, 8, generator=gen, dtype=dtype)
    student = torch.randn(size, 7, 8, generator=gen, dtype=dtype)
    t_mask = torch.arange(6)[None] < torch.randint(3, 7, (size, 1), generator=gen)
    s_mask = torch.arange(7)[None] < torch.randint(3, 8, (size, 1), generator=gen)
    t_mask[:, 0] = s_mask[:, 0] = False
    ids = lambda mask: torch.arange(mask.shape[1]).expand_as(mask)  # noqa: E731
    return (
        Encoded(teacher, t_mask, ids(t_mask), teacher.mean(1)),
        Encoded(student, s_mask, ids(s_mask), student.mean(1)),
    )


def pick(encoded: Encoded, i: int) -> Encoded:
    return Encoded(*(x[i : i + 1] for x in (encoded.tokens, encoded.mask, encoded.input_ids, encoded.pooled)))


def test_pairwise_costs_equal_a_loop_of_single_pair_ot_losses():
    teacher, student = batch()
    costs = pairwise_transport_cost(teacher, student, CFG)
    loop = torch.tensor([[ot_loss(pick(teacher, i), pick(student, j), CFG)[0].item() for j in range(5)]
                         for i in range(5)])  # fmt: skip
    torch.testing.assert_close(costs, loop, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_value_is_infonce_over_negative_ot_costs(symmetric):
    teacher, student = batch()
    loss, stats = ot_nce_loss(teacher, student, CFG, symmetric)
    w = pairwise_transport_cost(teacher, student, CFG)
    labels = torch.arange(5)
    expected = F.cross_entropy(-w / CFG.nce_temperature, labels)
    if symmetric:
        expected = 0.5 * (expected + F.cross_entropy(-w.T / CFG.nce_temperature, labels))
    torch.testing.assert_close(loss, expected)
    assert stats["ot_nce/positive_cost"] == pytest.approx(w.diagonal().mean().item(), rel=1e-5)
    assert stats["ot_nce/negative_cost"] == pytest.approx(((w.sum() - w.trace()) / 20).item(), rel=1e-5)


def test_gradient_matches_finite_differences_when_unrolled():
    """Unrolled through Sinkhorn in fp64, the analytic gradient is the numerical one."""
    teacher, student = batch(size=3, dtype=torch.float64)
    cfg = OTConfig(eps=0.5, max_iters=20, grad="unrolled", nce_temperature=0.2)
    tokens = student.tokens.clone().requires_grad_(True)

    def loss_of(x):
        return ot_nce_loss(teacher, Encoded(x, student.mask, student.input_ids, x.mean(1)), cfg)[0]

    assert torch.autograd.gradcheck(loss_of, (tokens,), eps=1e-6, atol=1e-5)


def test_padding_changes_nothing():
    teacher, student = batch()
    loss, _ = ot_nce_loss(teacher, student, CFG)
    padded, _ = ot_nce_loss(pad_tokens(teacher, 12), pad_tokens(student, 12), CFG)
    torch.testing.assert_close(padded, loss, rtol=1e-5, atol=1e-6)


def test_objective_needs_a_pad_length_to_gather():
    with pytest.raises(ValueError, match="pad_to"):
        Objective({"ot_nce": 1.0}, CFG, None, gather=all_gather_with_grad)


def local_loss_and_grad(rank: int | None):
    """This rank's (or, for None, the whole batch's) loss and gradient w.r.t. the student tokens."""
    teacher, student = batch(size=WORLD * LOCAL)
    rows = slice(0, WORLD * LOCAL) if rank is None else slice(rank * LOCAL, (rank + 1) * LOCAL)
    tokens = student.tokens[rows].clone().requires_grad_(True)
    local_student = Encoded(tokens, student.mask[rows], student.input_ids[rows], tokens.mean(1))
    local_teacher = pick_rows(teacher, rows)
    objective = Objective(
        {"ot_nce": 1.0},
        CFG,
        ContrastiveConfig(symmetric=True),
        gather=None if rank is None else all_gather_with_grad,
        rank=rank or 0,
        pad_to=9,
    )
    loss, _ = objective(local_teacher, local_student)
    loss.backward()
    return loss.detach(), tokens.grad


def pick_rows(encoded: Encoded, rows: slice) -> Encoded:
    return Encoded(*(x[rows] for x in (encoded.tokens, encoded.mask, encoded.input_ids, encoded.pooled)))


def rank_main(rank, port, out_dir):
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", timeout, WORLD, rank)
    try:
        torch.save(local_loss_and_grad(rank), out_dir / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(rank_main, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(WORLD)]
    full_loss, full_grad = local_loss_and_grad(None)
    torch.testing.assert_close(sum(loss for loss, _ in ranks) / WORLD, full_loss, rtol=1e-5, atol=1e-6)
    for rank, (_, grad) in enumerate(ranks):  # each rank's rows: world_size x its slice (see InfoNCE)
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        torch.testing.assert_close(grad, WORLD * full_grad[rows], rtol=1e-4, atol=1e-6)
