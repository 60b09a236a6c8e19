"""Losses on hand-made embeddings with values worked out by hand, and the weighted Objective."""

from __future__ import annotations

import math

import pytest
import torch

from dist_optical.config import ContrastiveConfig, OTConfig
from dist_optical.models import Encoded
from dist_optical.objectives import Objective
from dist_optical.objectives.terms import (
    contrastive_loss,
    idf_table,
    mean_pairwise_cosine,
    mse_loss,
    ot_loss,
    token_cost,
    token_weights,
)

E = torch.eye(4)  # one-hot token embeddings e0..e3


def encoded(tokens, mask=None, pooled=None, input_ids=None):
    """An Encoded batch from (B, L, d) tokens; mask defaults to all real, pooled to the token mean."""
    batch, length, _ = tokens.shape
    mask = torch.ones(batch, length, dtype=torch.bool) if mask is None else mask
    ids = torch.arange(length).expand(batch, length) if input_ids is None else input_ids
    pooled = tokens.mean(1) if pooled is None else pooled
    return Encoded(tokens=tokens, mask=mask, input_ids=ids, pooled=pooled)


def test_token_cost_orthogonal_one_hot_tokens():
    t = torch.stack([E[0], E[1]])[None]
    s = torch.stack([E[1], E[0], E[0] + E[1]])[None]
    h = 1 - 1 / math.sqrt(2)
    expected = torch.tensor([[[1.0, 0.0, h], [0.0, 1.0, h]]])
    torch.testing.assert_close(token_cost(t, s), expected)
    torch.testing.assert_close(token_cost(t, s, "sqeuclidean"), 2 * expected)  # |x - y|^2 = 2 - 2 cos
    torch.testing.assert_close(token_cost(3.0 * t, 0.5 * s), token_cost(t, s))  # scale-free


def test_token_cost_center_removes_the_shared_direction_and_ignores_padding():
    shared = 5 * E[3]
    t = torch.stack([E[0] + shared, E[1] + shared, 100 * E[2]])[None]  # third token is padding
    s = torch.stack([E[0] + shared, E[1] + shared])[None]
    mask_t = torch.tensor([[True, True, False]])
    plain = token_cost(t, s)[0, :2]
    assert plain.max() < 0.04  # the shared direction makes every cost nearly 0
    mask_s = torch.ones(1, 2, dtype=torch.bool)
    centred = token_cost(t, s, center=True, teacher_mask=mask_t, student_mask=mask_s)
    torch.testing.assert_close(centred[0, :2], torch.tensor([[0.0, 2.0], [2.0, 0.0]]))


def test_token_weights_uniform_and_idf():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(token_weights(mask), torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    ids = torch.tensor([[1, 2, 0], [2, 0, 0]])
    idf = torch.tensor([9.0, 1.0, 3.0])
    expected = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(token_weights(mask, ids, idf), expected)
    with pytest.raises(ValueError, match="batch row 1 has no real tokens"):
        token_weights(torch.tensor([[True], [False]]))
    with pytest.raises(ValueError, match="input_ids"):
        token_weights(mask, idf=idf)


def test_idf_table_by_hand():
    # 2 documents; df = [0, 1, 2, 1, 0] (repeats within a document count once).
    idf = idf_table([[1, 2], [2, 2, 3]], vocab_size=5)
    df = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0])
    torch.testing.assert_close(idf, torch.log(3 / (df + 1)) + 1)


def test_ot_loss_identical_token_sets_cost_nothing():
    teacher = encoded(torch.stack([E[0], E[1], E[2]])[None])
    student = encoded(torch.stack([E[2], E[0], E[1]])[None])  # same tokens, another order
    loss, stats = ot_loss(teacher, student, OTConfig(eps=0.01, max_iters=200))
    assert loss.item() < 1e-6
    assert stats["ot/marginal_error"] < 1e-5
    assert math.isclose(stats["ot/plan_entropy"], math.log(3), rel_tol=1e-4)


def test_ot_loss_forced_plan_known_value_and_stats():
    # One teacher token e0 against student tokens e0, e1 (+ padding): the plan must be [0.5, 0.5].
    teacher = encoded(torch.stack([E[0], E[3]])[None], mask=torch.tensor([[True, False]]))
    student = encoded(torch.stack([E[0], E[1], E[2]])[None], mask=torch.tensor([[True, True, False]]))
    loss, stats = ot_loss(teacher, student, OTConfig(eps=0.05))
    assert math.isclose(loss.item(), 0.5, rel_tol=1e-6)
    assert set(stats) == {"ot/plan_entropy", "ot/marginal_error", "ot/cost_mean"}
    assert all(isinstance(v, float) for v in stats.values())
    assert math.isclose(stats["ot/plan_entropy"], math.log(2), rel_tol=1e-6)
    assert math.isclose(stats["ot/cost_mean"], 0.5, rel_tol=1e-6)


@pytest.mark.parametrize("grad", ["envelope", "unrolled"])
def test_ot_loss_gradient_reaches_student_tokens_only_finite(grad):
    gen = torch.Generator().manual_seed(0)
    teacher = encoded(torch.randn(3, 5, 8, generator=gen), mask=torch.rand(3, 5, generator=gen) > 0.3)
    teacher.mask[:, 0] = True
    student_tokens = torch.randn(3, 7, 8, generator=gen, requires_grad=True)
    student_mask = torch.arange(7) < torch.tensor([[7], [4], [2]])
    cfg = OTConfig(eps=0.05, grad=grad, center=True)
    loss, _ = ot_loss(teacher, encoded(student_tokens, student_mask), cfg)
    loss.backward()
    assert torch.isfinite(student_tokens.grad).all() and student_tokens.grad.abs().sum() > 0
    assert (student_tokens.grad[1, 4:] == 0).all()  # padding tokens get no gradient


def test_ot_loss_idf_marginals_need_tables_and_use_them():
    teacher = encoded(torch.stack([E[0], E[1]])[None], input_ids=torch.tensor([[0, 1]]))
    student = encoded(torch.stack([E[0], E[0]])[None], input_ids=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="idf tables"):
        ot_loss(teacher, student, OTConfig(marginals="idf"))
    # Teacher weights [0.25, 0.75]: 0.75 of the mass sits on e1, which costs 1 against both e0s.
    idf = torch.tensor([1.0, 3.0])
    loss, _ = ot_loss(teacher, student, OTConfig(marginals="idf"), teacher_idf=idf, student_idf=idf)
    assert math.isclose(loss.item(), 0.75, rel_tol=1e-6)


def test_contrastive_loss_by_hand():
    s = torch.stack([E[0], E[0]])
    t = torch.stack([E[0], E[1]])
    # student -> teacher logits (tau 1): rows [1, 0] and [1, 0], positives at columns 0 and 1.
    one_way = 0.5 * (math.log(1 + math.e) - 1 + math.log(1 + math.e))
    # teacher -> student logits: rows [1, 1] and [0, 0]: log 2 each.
    assert math.isclose(contrastive_loss(s, t, 1.0, symmetric=False).item(), one_way, rel_tol=1e-6)
    assert math.isclose(contrastive_loss(s, t, 1.0).item(), 0.5 * (one_way + math.log(2)), rel_tol=1e-6)
    # temperature 0.5 doubles the logits; norms do not matter (cosine).
    half = 0.5 * (math.log(math.exp(2) + 1) - 2 + math.log(math.exp(2) + 1))
    assert math.isclose(contrastive_loss(3 * s, t, 0.5, symmetric=False).item(), half, rel_tol=1e-6)


def test_contrastive_loss_gather_offsets_positives_by_rank():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)

    def gather_teacher(local):  # one-way gathers only the teacher side: stand in for 2 ranks
        return torch.nn.functional.normalize(t, dim=-1)

    halves = [
        contrastive_loss(s[3 * r : 3 * r + 3], t[3 * r : 3 * r + 3], 0.1, False, gather_teacher, rank=r)
        for r in (0, 1)
    ]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, contrastive_loss(s, t, 0.1, symmetric=False))


def test_mse_loss_by_hand():
    assert mse_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])).item() == 2.5


def test_mean_pairwise_cosine_by_hand():
    pooled = torch.stack([E[0], E[1], 2 * E[0]])
    assert math.isclose(mean_pairwise_cosine(pooled).item(), 1 / 3, rel_tol=1e-6)  # 2 of 6 ordered pairs
    assert math.isnan(mean_pairwise_cosine(E[:1]).item())


def pair_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    teacher = encoded(torch.randn(4, 6, 8, generator=gen))
    student = encoded(torch.randn(4, 5, 8, generator=gen, requires_grad=True))
    return teacher, student


def test_objective_is_the_weighted_sum_of_its_terms():
    teacher, student = pair_batch()
    ot_cfg, con_cfg = OTConfig(), ContrastiveConfig(temperature=0.1)
    total, stats = Objective({"ot": 2.0, "contrastive": 0.5, "mse": 3.0}, ot_cfg, con_cfg)(teacher, student)
    expected = (
        2.0 * ot_loss(teacher, student, ot_cfg)[0]
        + 0.5 * contrastive_loss(student.pooled, teacher.pooled, 0.1)
        + 3.0 * mse_loss(student.pooled, teacher.pooled)
    )
    torch.testing.assert_close(total, expected)
    expected_keys = {"loss/ot", "loss/contrastive", "loss/mse", "ot/plan_entropy", "collapse/student_cos"}
    assert expected_keys <= set(stats)
    total.backward()
    assert student.tokens.grad is not None


def test_objective_skips_zero_weight_terms():
    teacher, student = pair_batch()
    total, stats = Objective({"ot": 0.0, "mse": 1.0}, OTConfig(), ContrastiveConfig())(teacher, student)
    assert set(stats) == {"loss/mse", "collapse/student_cos"}
    torch.testing.assert_close(total, mse_loss(student.pooled, teacher.pooled))
    expected_cos = mean_pairwise_cosine(student.pooled).item()
    assert math.isclose(stats["collapse/student_cos"], expected_cos, rel_tol=1e-6)


def test_objective_names_the_non_finite_term():
    teacher, student = pair_batch()
    teacher.pooled = torch.full_like(teacher.pooled, float("inf"))  # breaks mse only; OT uses tokens
    objective = Objective({"ot": 1.0, "mse": 1.0}, OTConfig(), ContrastiveConfig())
    with pytest.raises(FloatingPointError, match="loss.mse = inf") as err:
        objective(teacher, student)
    assert "loss.ot" not in str(err.value)


def test_objective_non_finite_embeddings_in_ot_raise_floating_point_error():
    teacher, student = pair_batch()
    student.tokens = student.tokens.detach().clone()
    student.tokens[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="loss.ot"):
        Objective({"ot": 1.0}, OTConfig(), ContrastiveConfig())(teacher, student)


def test_objective_english_term_is_mse_of_the_pooled_english_and_reports_drift():
    teacher, student = pair_batch()
    gen = torch.Generator().manual_seed(2)
    student_english = encoded(torch.randn(4, 6, 8, generator=gen))
    objective = Objective({"contrastive": 1.0, "english": 2.0}, OTConfig(), ContrastiveConfig())
    assert objective.needs_student_english
    total, stats = objective(teacher, student, student_english)
    expected = contrastive_loss(student.pooled, teacher.pooled, 0.05) + 2.0 * mse_loss(
        student_english.pooled, teacher.pooled
    )
    torch.testing.assert_close(total, expected)
    drift = torch.nn.functional.cosine_similarity(student_english.pooled, teacher.pooled).mean().item()
    assert math.isclose(stats["english/student_teacher_cos"], drift, rel_tol=1e-6)
    _, same = objective(teacher, student, teacher)  # a student that encodes English as the teacher does
    assert same["loss/english"] == 0.0 and math.isclose(
        same["english/student_teacher_cos"], 1.0, rel_tol=1e-6
    )
    with pytest.raises(ValueError, match="loss.english > 0 needs"):
        objective(teacher, student)
    assert not Objective({"ot": 1.0}, OTConfig(), ContrastiveConfig()).needs_student_english


def test_the_registry_is_the_one_list_of_terms():
    """Config's load-time names, the objective's dispatch and the run's decisions all read TERMS."""
    from dist_optical.config import LOSS_TERMS
    from dist_optical.objectives import TERMS, needs

    assert tuple(TERMS) == LOSS_TERMS
    assert all(term.about and term.needs for term in TERMS.values())
    assert needs({"contrastive": 1.0, "english": 100.0}, "student_pivot")
    assert not needs({"ot": 1.0, "english": 0.0}, "student_pivot")
    assert needs({"ot_nce": 1.0}, "ot_plan") and not needs({"ot": 0.0, "mse": 1.0}, "ot_plan")
    with pytest.raises(ValueError, match="loss.kl: no such term"):
        Objective({"kl": 1.0}, OTConfig(), ContrastiveConfig())


def test_ot_loss_unbalanced_and_eps_schedule_reach_the_solver():
    # A teacher token (e3) with no counterpart: balanced OT must ship its mass at cost 1;
    # unbalanced OT (rho) drops most of it, so the loss falls.
    teacher = encoded(torch.stack([E[0], E[1], E[3]])[None])
    student = encoded(torch.stack([E[0], E[1]])[None])
    balanced, _ = ot_loss(teacher, student, OTConfig(eps=0.05, max_iters=200))
    relaxed, stats = ot_loss(teacher, student, OTConfig(eps=0.05, max_iters=200, rho=0.05))
    assert relaxed.item() < 0.5 * balanced.item()
    assert stats["ot/marginal_error"] > 0.1  # the relaxed marginals are not met, by design
    scheduled, _ = ot_loss(teacher, student, OTConfig(eps=0.05, max_iters=200, eps_scaling=0.5))
    assert math.isclose(scheduled.item(), balanced.item(), rel_tol=1e-4)
    with pytest.raises(ValueError, match="schedule has"):
        ot_loss(teacher, student, OTConfig(eps=0.001, max_iters=3, eps_scaling=0.9))
