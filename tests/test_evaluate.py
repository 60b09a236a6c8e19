import math

import pytest
import torch

from dist_optical.evaluate import evaluate_parallel, gold_ranks, read_lines, retrieval_metrics


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
    with pytest.raises(ValueError, match=r"q.txt:3: not valid UTF-8"):
        read_lines(path)
    assert read_lines(path, limit=2) == ["ok", "still ok"]
