"""Trainer wiring of the anti-collapse options: IDF marginals get tables computed from the training
shards, and the English->English term makes the student encode English (less drift on English);
and train() frees its engine, so that one process can train many students."""

from __future__ import annotations

import torch
from helpers import TINY, read_metrics, run_python, run_train

from dist_optical.config import REPO_ROOT, load_config
from dist_optical.data import ShardStream
from dist_optical.data.prepare import ensure_shards
from dist_optical.files import read_lines
from dist_optical.models import load_tokenizer
from dist_optical.models.encoder import Encoder
from dist_optical.objectives import idf_table
from dist_optical.train.prepare import idf_tables, read_pairs

ENGLISH = REPO_ROOT.parent / "shared" / "data" / "tatoeba" / "tatoeba.swh-eng.eng"


def test_idf_tables_count_the_training_pairs_only(tmp_path):
    cfg = load_config(TINY, [f"data.shards={tmp_path}", "data.max_pairs=8"])
    manifest = ensure_shards(cfg)
    tok = load_tokenizer(cfg.model.teacher)
    pairs = read_pairs(cfg, manifest)
    teacher_idf, student_idf = idf_tables(pairs, tok, tok, 32)
    assert len(pairs) == 8 * len(cfg.data.bitexts)
    english = [tok(p["tgt"], truncation=True, max_length=32)["input_ids"] for p in pairs]
    torch.testing.assert_close(teacher_idf, idf_table(english, len(tok)))
    assert not torch.equal(teacher_idf, student_idf)  # Swahili and English documents differ
    everything = list(ShardStream(manifest, shuffle=False))
    assert len(everything) > len(pairs)  # so the tables above did leave pairs out


def test_length_grouping_sorts_by_the_students_tokens(tmp_path):
    from dist_optical.data.prepare import student_lengths, training_stream

    cfg = load_config(TINY, [f"data.shards={tmp_path}"])
    manifests = ensure_shards(cfg)
    tok = load_tokenizer(cfg.model.teacher)  # the tiny student shares the teacher's tokenizer
    pairs = list(ShardStream(manifests, shuffle=False, max_pairs=cfg.data.max_pairs))
    lengths = student_lengths(cfg, pairs, tok)
    expected = [
        len(tok(p["src"], truncation=True, max_length=cfg.model.max_length)["input_ids"]) for p in pairs
    ]
    assert lengths == expected  # one per pair, in sample-id order, truncated as in training
    stream = training_stream(cfg, manifests, lengths=lengths)
    window, order = cfg.data.length_window, stream.epoch_order(0)
    for lo in range(0, len(order) - window + 1, window):  # each window sorted, one way or the other
        block = [lengths[i] for i in order[lo : lo + window]]
        assert block in (sorted(block), sorted(block, reverse=True))
    assert student_lengths(load_config(TINY, ["data.on_error=skip"]), pairs, tok) is None


def english_drift(run_dir, cfg) -> float:
    """1 - mean cosine between the student's and the teacher's embeddings of held-out English."""
    texts = read_lines(ENGLISH, 64)
    teacher = Encoder.load(cfg.model.teacher, cfg.model.max_length, tiny=cfg.model.tiny)
    student = Encoder.load(str(run_dir / "model"), cfg.model.max_length)
    return 1.0 - (student.embed(texts) * teacher.embed(texts)).sum(-1).mean().item()


def test_idf_marginals_train_and_english_term_lowers_english_drift(tmp_path):
    common = ("train.max_steps=24", "ot.marginals=idf", "train.log_every=24")
    run_train(tmp_path / "ot", *common, "loss={ot: 1.0}")
    run_train(tmp_path / "ot-english", *common, "loss={ot: 1.0, english: 10.0}")
    plain, anchored = read_metrics(tmp_path / "ot"), read_metrics(tmp_path / "ot-english")
    assert all("loss/ot" in m for m in plain + anchored)  # idf tables reached the OT loss (else it raises)
    assert "english/student_teacher_cos" in anchored[-1] and "loss/english" in anchored[-1]
    cfg = load_config(TINY)
    drift_plain, drift_anchored = (
        english_drift(tmp_path / "ot", cfg),
        english_drift(tmp_path / "ot-english", cfg),
    )
    assert drift_anchored < 0.5 * drift_plain, (drift_plain, drift_anchored)


def test_train_in_process_twice_frees_each_engine(tmp_path):
    """`compare` trains many students in one process: each engine must be freed when train returns."""
    script = f"""
import gc
from pathlib import Path
from deepspeed.runtime.engine import DeepSpeedEngine
from dist_optical.config import load_config
from dist_optical.train import train
for i in range(2):
    train(load_config({str(TINY)!r}, ["train.max_steps=2"]), Path({str(tmp_path)!r}) / str(i))
gc.collect()
print("engines alive:", sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects()))
"""
    proc = run_python("-c", script, timeout=300)
    assert "engines alive: 0" in proc.stdout


def test_dev_curves_are_logged_every_n_steps_on_each_dev_set(tmp_path):
    sets = (
        "eval.sets=[{name: tatoeba, queries: tatoeba/tatoeba.swh-eng.swh, "
        "targets: tatoeba/tatoeba.swh-eng.eng, max_pairs: 40}, "
        "{name: rev, kind: bible, queries: bible/Swahili-NT.xml, "
        "targets: bible/English-KJV-NT.xml, books: [REV], max_pairs: 40}]"
    )
    names = ["tatoeba", "rev"]
    run_train(tmp_path, "train.max_steps=8", "train.eval_every=4", sets, "train.dev_sets=[tatoeba, rev]")
    metrics = read_metrics(tmp_path)
    for name in names:
        scored = [m for m in metrics if f"dev/{name}/acc@1" in m]
        assert [m["step"] for m in scored] == [4, 8]
        assert all(0.0 <= m[f"dev/{name}/acc@1"] <= m[f"dev/{name}/mrr@10"] <= 100.0 for m in scored)


def test_a_dev_set_that_is_not_an_eval_set_is_named(tmp_path):
    proc = run_train(tmp_path, "train.eval_every=4", "train.dev_sets=[nope]", timeout=600, check=False)
    names = ", ".join(s.name for s in load_config(TINY).eval.sets)
    assert proc.returncode != 0
    assert f"config key 'train.dev_sets': expected one of eval.sets ({names})" in proc.stderr


def test_collapse_warning_is_relative_to_the_start(caplog):
    from dist_optical.train.metrics import warn_if_collapsing

    # e5 starts near 0.89: half the room to 1 is 0.945; MiniLM near 0.5: 0.75.
    for baseline, quiet, loud in ((0.89, 0.93, 0.96), (0.5, 0.7, 0.8)):
        caplog.clear()
        warn_if_collapsing({"step": 1, "collapse/student_cos": quiet}, baseline, 0.5)
        assert not caplog.records
        warn_if_collapsing({"step": 2, "collapse/student_cos": loud}, baseline, 0.5)
        assert "collapsing" in caplog.text and f"{baseline:.3f} at the start" in caplog.text
