"""Evaluation sets of every kind: parallel, held-out Bible books (split checked), CLIR with qrels."""

from __future__ import annotations

import pytest
import torch
from helpers import BARE

from dist_optical.config import EvalSet, load_config
from dist_optical.errors import UserError
from dist_optical.eval.evaluator import Evaluator
from dist_optical.eval.sets import check_disjoint, load_eval_set, read_trec_qrels
from dist_optical.models.encoder import Encoder


def bible(path, verses):
    segs = "".join(f'<seg id="{key}" type="verse">{text}</seg>' for key, text in verses.items())
    path.write_text(f"<cesDoc><text><body>{segs}</body></text></cesDoc>", encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path):
    bible(tmp_path / "xx.xml", {"b.MAT.1.1": "a", "b.REV.1.1": "b", "b.REV.1.2": "c", "b.REV.1.3": ""})
    bible(tmp_path / "en.xml", {"b.MAT.1.1": "A", "b.REV.1.1": "B", "b.REV.1.2": "C", "b.REV.1.3": "D"})
    (tmp_path / "q.tsv").write_text("q1\tswali moja\nq2\tswali mbili\nq3\thakuna\n", encoding="utf-8")
    (tmp_path / "docs.tsv").write_text("d1\tone\nd2\ttwo\nd3\tthree\n", encoding="utf-8")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq1 0 d3 2\nq2 0 d2 1\nq3 0 d1 0\n", encoding="utf-8")
    return tmp_path


def config(root, *sets):
    return load_config(BARE, [f"data.root={root}", f"eval.sets={list(sets)}"])


def test_bible_set_pairs_the_held_out_book_by_verse_id(root):
    cfg = config(root)
    data = load_eval_set(cfg, EvalSet("rev", "bible", "xx.xml", "en.xml", books=["REV"]))
    assert data.keys == ["b.REV.1.1", "b.REV.1.2"]  # REV 1:3 is empty on the foreign side
    assert (data.queries, data.targets, data.relevant) == (["b", "c"], ["B", "C"], None)
    with pytest.raises(UserError, match="needs books"):
        load_eval_set(cfg, EvalSet("rev", "bible", "xx.xml", "en.xml"))
    with pytest.raises(UserError, match=r"books \['rev'\] not in both"):
        load_eval_set(cfg, EvalSet("rev", "bible", "xx.xml", "en.xml", books=["rev"]))


def test_check_disjoint_raises_on_overlap():
    check_disjoint(["b.MAT.1.1", "b.MAT.1.2"], ["b.REV.1.1"], "zul")
    with pytest.raises(UserError, match=r"zul: 1 evaluation keys are also training keys.*b.REV.1.1"):
        check_disjoint(["b.MAT.1.1", "b.REV.1.1"], ["b.REV.1.1", "b.REV.1.2"], "zul")


def test_clir_set_reads_queries_documents_and_qrels(root):
    data = load_eval_set(config(root), EvalSet("clir", "clir", "q.tsv", "docs.tsv", qrels="qrels.txt"))
    assert data.keys == ["q1", "q2"]  # q3 has no relevant document
    assert data.targets == ["one", "two", "three"]
    assert data.relevant.tolist() == [[0, 2], [1, 0]]
    assert data.gains.tolist() == [[1.0, 2.0], [1.0, 0.0]]


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        ("q9 0 d1 1\n", "query 'q9' is not in"),
        ("q1 0 d9 1\n", "judges documents not in"),
        ("q1 d1 1\n", "qrels.txt:1: expected 'qid iteration docid relevance'"),
        ("q3 0 d1 0\n", "no query has a relevant document"),
    ],
)
def test_clir_bad_qrels_are_named(root, qrels, message):
    (root / "qrels.txt").write_text(qrels, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_eval_set(config(root), EvalSet("clir", "clir", "q.tsv", "docs.tsv", qrels="qrels.txt"))


def test_read_trec_qrels_keeps_graded_and_zero_judgements(root):
    assert read_trec_qrels(root / "qrels.txt") == {"q1": {"d1": 1, "d3": 2}, "q2": {"d2": 1}, "q3": {"d1": 0}}


class Lookup:
    """A stand-in Encoder: each text's embedding comes from a table."""

    name = "lookup"

    def __init__(self, table):
        self.table = table

    def embed(self, texts, batch_size=64, desc=""):
        return torch.nn.functional.normalize(torch.tensor([self.table[t] for t in texts]), dim=-1)


def test_evaluator_scores_clir_one_way_and_bible_both_ways(root):
    cfg = config(
        root,
        {"name": "clir", "kind": "clir", "queries": "q.tsv", "targets": "docs.tsv", "qrels": "qrels.txt"},
        {"name": "rev", "kind": "bible", "queries": "xx.xml", "targets": "en.xml", "books": ["REV"]},
    )
    vectors = {"one": [1.0, 0.0, 0.0], "two": [0.0, 1.0, 0.0], "three": [0.0, 0.0, 1.0]}
    vectors |= {"B": [1.0, 0.0, 0.0], "C": [0.0, 1.0, 0.0], "b": [0.0, 1.0, 0.1], "c": [1.0, 0.0, 0.1]}
    # q1 is closest to d3 (gain 2), then d1 (gain 1): a perfect ranking; q2 ranks d2 second
    vectors |= {"swali moja": [0.5, 0.0, 1.0], "swali mbili": [1.0, 0.9, 0.0]}
    results = Evaluator(cfg, Lookup(vectors), cache=False)(Lookup(vectors))
    assert set(results["clir"]) == {"src->tgt"}
    assert results["clir"]["src->tgt"]["ndcg@10"] == pytest.approx(100 * (1 + 1 / 1.5849625007211563) / 2)
    assert results["clir"]["src->tgt"]["mrr@10"] == pytest.approx(100 * (1 + 0.5) / 2)
    assert set(results["rev"]) == {"src->tgt", "tgt->src"}
    assert results["rev"]["src->tgt"]["acc@1"] == 0.0  # b and c are swapped on purpose


class Counting(Encoder):
    """A real (tiny) encoder that counts the texts it embeds."""

    def embed(self, texts, batch_size=64, desc=""):
        self.embedded = getattr(self, "embedded", 0) + len(texts)
        return super().embed(texts, batch_size, desc)


def tiny_encoder(cfg, seed=0):
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    base = Encoder.load("all-MiniLM-L6-v2", tiny={**tiny, "seed": seed})
    return Counting(base.name, base.model, base.tokenizer, cfg.eval.max_length)


def test_teacher_embeddings_are_computed_once_across_runs_and_rebuilt_when_damaged(root, tmp_path):
    (root / "sw.txt").write_text("habari\nasante sana\nkwaheri rafiki\n", encoding="utf-8")
    (root / "en.txt").write_text("hello\nthank you\ngoodbye friend\n", encoding="utf-8")
    cfg = load_config(
        BARE,
        [f"data.root={root}", f"data.shards={tmp_path / 'shards'}",
         "eval.sets=[{name: s, queries: sw.txt, targets: en.txt}]"],
    )  # fmt: skip
    teacher, student = tiny_encoder(cfg), tiny_encoder(cfg, seed=1)
    first = Evaluator(cfg, teacher)
    computed = first(teacher)
    assert teacher.embedded == 6
    again = tiny_encoder(cfg)  # another process's teacher: same weights, nothing embedded
    assert Evaluator(cfg, again)(again) == computed and getattr(again, "embedded", 0) == 0
    first(student)
    first(student, target_model=student)  # "student alone" reuses the student's queries
    assert student.embedded == 6
    other = tiny_encoder(cfg, seed=2)  # other weights: another cache entry, computed
    Evaluator(cfg, other)(other)
    assert other.embedded == 6
    for path in (tmp_path / "shards" / "eval-cache").glob("*/embeddings.npy"):
        path.write_bytes(b"\0" * 64)  # truncated: sizes are checked on every open
    fresh = tiny_encoder(cfg)
    assert Evaluator(cfg, fresh)(fresh) == computed and fresh.embedded == 6  # damaged: rebuilt
