"""The gathered contrastive loss over 2 gloo ranks equals the single-process loss on the whole batch.

Semantics under test (see `losses.contrastive_loss`): each rank scores its own rows against
the gathered global batch; the mean of the ranks' local losses is the global loss; the
all-gather's backward sums over ranks, so each rank's input gradient is world_size times its
slice of the global gradient, and averaging parameter gradients over ranks (what DDP and
DeepSpeed do) gives exactly the global loss's parameter gradient.
"""

from __future__ import annotations

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_optical.engine.collectives import all_gather_with_grad
from dist_optical.objectives.terms import contrastive_loss

WORLD = 2
LOCAL_BATCH = 3
TEMPERATURE = 0.1
MODES = (True, False)  # symmetric, one-way


def inputs():
    """Student features x (2B, 5) through a shared linear encoder w (4, 5); teacher embeddings t (2B, 4)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * LOCAL_BATCH, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(WORLD * LOCAL_BATCH, 4, generator=gen, dtype=torch.float64)
    return x, w, t


def loss_and_grads(x, w, t, symmetric, gather=None, rank=0):
    """Loss and gradients w.r.t. the encoder weight, the student embeddings and the teacher rows."""
    w = w.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)  # a trainable "teacher" exercises the second gather's backward
    s = x @ w.T
    s.retain_grad()
    loss = contrastive_loss(s, t, TEMPERATURE, symmetric, gather=gather, rank=rank)
    loss.backward()
    return {"loss": loss.detach(), "w_grad": w.grad, "s_grad": s.grad, "t_grad": t.grad}


def rank_main(rank, port, out_dir):
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", timeout, WORLD, rank)
    try:
        x, w, t = inputs()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for symmetric in MODES:
            result = loss_and_grads(x[rows], w, t[rows], symmetric, all_gather_with_grad, rank)
            dist.all_reduce(result["w_grad"])
            result["w_grad"] /= WORLD  # DDP: average parameter gradients over ranks
            results[symmetric] = result
        torch.save(results, out_dir / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    """Per rank, per mode: local loss and gradients from one 2-process gloo run (spawning costs seconds)."""
    out_dir = tmp_path_factory.mktemp("gloo")
    mp.spawn(rank_main, args=(free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"{rank}.pt") for rank in range(WORLD)]


@pytest.mark.multiproc
@pytest.mark.parametrize("symmetric", MODES)
def test_gathered_loss_and_gradients_equal_the_single_process_ones(rank_results, symmetric):
    x, w, t = inputs()
    full = loss_and_grads(x, w, t, symmetric)
    ranks = [results[symmetric] for results in rank_results]
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, full["loss"])
    for rank, result in enumerate(ranks):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.testing.assert_close(result["w_grad"], full["w_grad"])
        torch.testing.assert_close(result["s_grad"], WORLD * full["s_grad"][rows])
        torch.testing.assert_close(result["t_grad"], WORLD * full["t_grad"][rows])


def test_all_gather_with_grad_is_identity_without_a_process_group():
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
