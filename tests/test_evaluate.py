import math

import pytest
import torch

from dist_optical.errors import UserError
from dist_optical.eval.metrics import (
    evaluate_parallel,
    evaluate_qrels,
    gold_ranks,
    graded_metrics,
    retrieval_metrics,
)
from dist_optical.files import read_lines


def test_gold_ranks_hand_made():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.3, 0.3, 0.3]])
    ranks = gold_ranks(scores, torch.tensor([0, 1, 2]))
    # query 2 ties with everything: ties count against it
    assert ranks.tolist() == [1, 2, 3]


def test_metrics_hand_made():
    m = retrieval_metrics(torch.tensor([1, 2, 11, 4]), k=10)
    assert m["acc@1"] == pytest.approx(25.0)
    assert m["mrr@10"] == pytest.approx(100 * (1 + 1 / 2 + 0 + 1 / 4) / 4)
    assert m["recall@10"] == pytest.approx(75.0)
    # one relevant target: DCG = 1 / log2(rank + 1), ideal DCG = 1
    assert m["ndcg@10"] == pytest.approx(100 * (1 + 1 / math.log2(3) + 0 + 1 / math.log2(5)) / 4)


def test_metrics_agree_with_ranx():
    ranx = pytest.importorskip("ranx")
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 40, generator=gen)
    gold = torch.arange(40)
    ours = retrieval_metrics(gold_ranks(scores, gold))
    qrels = ranx.Qrels({f"q{i}": {f"d{i}": 1} for i in range(40)})
    run = ranx.Run({f"q{i}": {f"d{j}": float(scores[i, j]) for j in range(40)} for i in range(40)})
    theirs = ranx.evaluate(qrels, run, ["hits@1", "mrr@10", "recall@10", "ndcg@10"])
    assert ours["acc@1"] == pytest.approx(100 * theirs["hits@1"])
    assert ours["mrr@10"] == pytest.approx(100 * theirs["mrr@10"])
    assert ours["recall@10"] == pytest.approx(100 * theirs["recall@10"])
    assert ours["ndcg@10"] == pytest.approx(100 * theirs["ndcg@10"])


def test_evaluate_parallel_both_directions():
    emb = torch.nn.functional.normalize(torch.eye(5) + 0.01, dim=-1)
    result = evaluate_parallel(emb, emb)
    assert result["src->tgt"]["acc@1"] == 100.0
    assert result["tgt->src"]["acc@1"] == 100.0
    shuffled = evaluate_parallel(emb, emb.roll(1, 0))
    assert shuffled["src->tgt"]["acc@1"] == 0.0
    with pytest.raises(ValueError, match="aligned"):
        evaluate_parallel(emb, emb[:4])


def test_read_lines_names_bad_line(tmp_path):
    path = tmp_path / "q.txt"
    path.write_bytes(b"ok\nstill ok\nbad \xff\n")
    with pytest.raises(UserError, match=r"q.txt:3: not valid UTF-8"):
        read_lines(path)
    assert read_lines(path, limit=2) == ["ok", "still ok"]


def test_gold_ranks_several_relevant_targets():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.5, 0.9, 0.5, 0.1]])
    ranks = gold_ranks(scores, torch.tensor([[1, 3], [0, 2]]))
    assert ranks.tolist() == [[2, 3], [3, 3]]  # the tie in row 1 counts against both golds
    assert gold_ranks(scores, torch.tensor([1, 0])).tolist() == [2, 3]


def test_graded_metrics_hand_made_qrels():
    # q1: relevant docs with gains 2 and 1 at ranks 2 and 3; q2: its one relevant doc first;
    # q3: two relevant docs tied at rank 5 (ties count against the query); padding has gain 0.
    ranks = torch.tensor([[2, 3], [1, 1], [5, 5]])
    gains = torch.tensor([[2.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    m = graded_metrics(ranks, gains, k=10, recall_k=4)
    assert m["acc@1"] == pytest.approx(100 / 3)
    assert m["mrr@10"] == pytest.approx(100 * (1 / 2 + 1 + 1 / 5) / 3)
    assert m["recall@4"] == pytest.approx(100 * (1 + 1 + 0) / 3)
    ndcg_q1 = (2 / math.log2(3) + 1 / math.log2(4)) / (2 + 1 / math.log2(3))
    ndcg_q3 = (2 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx(100 * (ndcg_q1 + 1 + ndcg_q3) / 3)
    # at k=2 q1 keeps only its rank-2 document; the ideal list is still gains [2, 1]; q3 scores 0
    ndcg2_q1 = (2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert graded_metrics(ranks, gains, k=2)["ndcg@2"] == pytest.approx(100 * (ndcg2_q1 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="at least one relevant"):
        graded_metrics(ranks, torch.zeros_like(gains))


def test_retrieval_metrics_is_the_one_gold_case_of_graded_metrics():
    ranks = torch.tensor([1, 2, 11, 4])
    assert retrieval_metrics(ranks) == graded_metrics(ranks[:, None], torch.ones(4, 1))


def test_evaluate_qrels_agrees_with_ranx():
    ranx = pytest.importorskip("ranx")
    gen = torch.Generator().manual_seed(1)
    queries, docs = 30, 150
    query_emb = torch.nn.functional.normalize(torch.randn(queries, 16, generator=gen), dim=-1)
    doc_emb = torch.nn.functional.normalize(torch.randn(docs, 16, generator=gen), dim=-1)
    width = 4
    relevant = torch.stack([torch.randperm(docs, generator=gen)[:width] for _ in range(queries)])
    gains = torch.randint(1, 4, (queries, width), generator=gen).double()
    gains[torch.arange(width) >= torch.randint(1, width + 1, (queries, 1), generator=gen)] = 0.0
    ours = evaluate_qrels(query_emb, doc_emb, relevant, gains)["src->tgt"]
    scores = query_emb @ doc_emb.T
    qrels = ranx.Qrels(
        {
            f"q{i}": {f"d{int(d)}": int(g) for d, g in zip(relevant[i], gains[i], strict=True) if g > 0}
            for i in range(queries)
        }
    )
    run = ranx.Run({f"q{i}": {f"d{j}": float(scores[i, j]) for j in range(docs)} for i in range(queries)})
    theirs = ranx.evaluate(qrels, run, ["hits@1", "mrr@10", "recall@100", "ndcg@10"])
    assert set(ours) == {"acc@1", "mrr@10", "recall@100", "ndcg@10"}
    assert ours["acc@1"] == pytest.approx(100 * theirs["hits@1"])
    assert ours["mrr@10"] == pytest.approx(100 * theirs["mrr@10"])
    assert ours["recall@100"] == pytest.approx(100 * theirs["recall@100"])
    assert ours["ndcg@10"] == pytest.approx(100 * theirs["ndcg@10"])
    assert 0 < ours["ndcg@10"] < 100 and 0 < ours["recall@100"] < 100  # the case is not degenerate
