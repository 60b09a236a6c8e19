"""The teacher cache: the live teacher's Encoded (and so its loss) to fp32 rounding, and a new build
whenever anything its outputs depend on changes."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, read_metrics, run_train

from dist_optical.artifacts import MARKER
from dist_optical.config import load_config
from dist_optical.data import PairCollator, ShardLoader
from dist_optical.data.prepare import ensure_shards, training_stream
from dist_optical.models import encode, special_ids
from dist_optical.objectives import Objective
from dist_optical.train.run import build_models
from dist_optical.train.teacher_cache import open_cache


def tiny(tmp_path, *overrides):
    return load_config(TINY, [f"data.shards={tmp_path / 'shards'}", *overrides])


def live_and_cached(cfg, batches: int = 3):
    """(live teacher Encoded, cached Encoded) for the first micro-batches of the run's stream."""
    manifests = ensure_shards(cfg)
    teacher, teacher_tok, _, student_tok = build_models(cfg)
    special = special_ids(teacher_tok)
    cache = open_cache(cfg, manifests, teacher, teacher_tok, special)
    collate = PairCollator(student_tok, teacher_tok, cfg.model.max_length, cfg.model.prefix)
    loader = iter(
        ShardLoader(training_stream(cfg, manifests), cfg.train.micro_batch_size, collate_fn=collate)
    )
    for _ in range(batches):
        batch = next(loader)
        with torch.no_grad():
            live = encode(teacher, batch["tgt_input_ids"], batch["tgt_attention_mask"], special).float()
        yield live, cache.lookup(batch["tgt"])


def test_fp32_cache_gives_the_live_teachers_numbers_to_rounding(tmp_path):
    # Not bit for bit: the live teacher's own outputs move in the last bits with the padded length
    # of the batch a text sits in (the CPU kernels block by shape), and the cache was computed in
    # other batches. What must hold: the same mask, and the same numbers to fp32 rounding.
    cfg = tiny(tmp_path, "train.teacher_cache=fp32", "loss={ot: 1.0, contrastive: 1.0, mse: 1.0}")
    objective = Objective(cfg.loss, cfg.ot, cfg.contrastive)
    for live, cached in live_and_cached(cfg):
        assert torch.equal(live.mask, cached.mask) and torch.equal(
            live.input_ids[live.mask], cached.input_ids[cached.mask]
        )
        torch.testing.assert_close(cached.tokens[cached.mask], live.tokens[live.mask], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cached.pooled, live.pooled, rtol=1e-6, atol=1e-6)
        student = live.map(lambda field: field.clone())
        student.tokens = student.tokens + 0.1 * torch.randn_like(student.tokens)  # any student side
        student.pooled = student.pooled.flip(0)
        assert objective(cached, student)[0].item() == pytest.approx(
            objective(live, student)[0].item(), rel=1e-6
        )


def test_fp16_cache_is_within_half_precision(tmp_path):
    cfg = tiny(tmp_path, "train.teacher_cache=fp16")
    for live, cached in live_and_cached(cfg, batches=1):
        torch.testing.assert_close(cached.tokens[cached.mask], live.tokens[live.mask], rtol=1e-3, atol=1e-3)


def test_every_key_input_makes_its_own_cache_and_an_unchanged_one_is_reused(tmp_path):
    def folder(cfg, perturb=None):
        manifests = ensure_shards(cfg)
        teacher, teacher_tok, _, _ = build_models(cfg)
        if perturb:
            perturb(teacher)
        return open_cache(cfg, manifests, teacher, teacher_tok, special_ids(teacher_tok)).folder

    base = ["train.teacher_cache=fp32"]
    reference = folder(tiny(tmp_path, *base))
    built = (reference / MARKER).stat().st_mtime_ns
    assert folder(tiny(tmp_path, *base)) == reference and (reference / MARKER).stat().st_mtime_ns == built

    def nudge(teacher):
        with torch.no_grad():
            next(teacher.parameters()).view(-1)[0] += 1e-3

    changes = [
        (["model.prefix='query: '"], None),
        (["model.max_length=24"], None),
        (["model.pooling=cls"], None),
        (["train.precision=bf16"], None),
        (["train.teacher_cache=fp16"], None),
        (["data.max_pairs=16"], None),
        (["data.pairs_per_shard=500"], None),  # other shards: other sha256s
        ([], nudge),  # other teacher weights
    ]
    folders = {reference}
    for overrides, perturb in changes:
        other = folder(tiny(tmp_path, *base, *overrides), perturb)
        assert other not in folders and (other / MARKER).is_file(), overrides
        folders.add(other)


def test_a_run_with_the_cache_trains_like_one_without(tmp_path):
    run_train(
        tmp_path / "live",
        "train.max_steps=10",
        f"data.shards={tmp_path / 'shards'}",
        "train.teacher_cache=none",
    )
    run_train(
        tmp_path / "cached",
        "train.max_steps=10",
        f"data.shards={tmp_path / 'shards'}",
        "train.teacher_cache=fp32",
    )
    live, cached = ([m["loss"] for m in read_metrics(tmp_path / name)] for name in ("live", "cached"))
    assert cached == pytest.approx(live, rel=1e-5)  # fp32 rounding, compounded over 10 steps
