"""Cross-lingual retrieval metrics: score by cosine, rank, and compute acc@1, MRR, recall, nDCG.

Metrics are pure functions of a ranking (the 1-based ranks of each query's relevant targets and
their graded relevance), implemented once for one gold target per query (parallel sentences)
and for qrels with several (CLIR), so they can be checked on hand-made cases and against a
maintained library (ranx) in tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

METRICS = ("acc@1", "mrr@10", "recall@10", "ndcg@10")


def gold_ranks(scores: Tensor, gold: Tensor) -> Tensor:
    """(Q, T) scores, (Q,) gold target index -> (Q,) 1-based rank of the gold target; (Q, R)
    gold indices (several relevant targets) -> (Q, R) ranks.

    Ties count against the query (a gold target tied with another ranks below it), so a
    degenerate model that scores everything equally cannot score well.
    """
    index = gold if gold.dim() == 2 else gold[:, None]
    gold_scores = scores.gather(1, index)
    # One (Q, T) comparison per column keeps memory at the size of the scores.
    ranks = torch.stack([(scores >= gold_scores[:, [r]]).sum(1) for r in range(index.shape[1])], dim=1)
    return ranks if gold.dim() == 2 else ranks[:, 0]


def graded_metrics(
    ranks: Tensor, gains: Tensor, k: int = 10, recall_k: int | None = None
) -> dict[str, float]:
    """(Q, R) 1-based ranks of each query's relevant targets, (Q, R) their relevance (> 0; 0 pads
    a query with fewer than R) -> metrics in percent, averaged over the queries:

    acc@1 (a relevant target ranks first), mrr@k (reciprocal rank of the first relevant target
    within k), recall@{recall_k, default k} (share of the relevant targets within recall_k) and
    ndcg@k (linear gains, ideal order from the query's own judgements, as trec_eval and ranx).
    """
    ranks, gains = ranks.double(), gains.double()
    relevant = gains > 0
    if not relevant.any(dim=1).all():
        raise ValueError("graded_metrics: every query needs at least one relevant target (gain > 0)")
    recall_k = recall_k or k
    first = torch.where(relevant, ranks, math.inf).amin(dim=1)
    within = relevant & (ranks <= k)
    dcg = torch.where(within, gains / torch.log2(ranks + 1), 0.0).sum(dim=1)
    ideal = gains.sort(dim=1, descending=True).values[:, :k]
    idcg = (ideal / torch.log2(torch.arange(2, ideal.shape[1] + 2, dtype=torch.float64))).sum(dim=1)
    found = (relevant & (ranks <= recall_k)).sum(dim=1) / relevant.sum(dim=1)
    return {
        "acc@1": 100.0 * (first == 1).double().mean().item(),
        f"mrr@{k}": 100.0 * torch.where(first <= k, 1.0 / first, 0.0).mean().item(),
        f"recall@{recall_k}": 100.0 * found.double().mean().item(),
        f"ndcg@{k}": 100.0 * (dcg / idcg).mean().item(),
    }


def retrieval_metrics(ranks: Tensor, k: int = 10) -> dict[str, float]:
    """Metrics for one relevant target per query, from its 1-based rank, in percent."""
    return graded_metrics(ranks[:, None], torch.ones(len(ranks), 1), k)


def parallel_ranks(query_emb: Tensor, target_emb: Tensor) -> dict[str, Tensor]:
    """Line i of queries translates line i of targets: each line's 1-based gold rank, both
    directions, cosine scores."""
    if len(query_emb) != len(target_emb):
        raise ValueError(
            f"parallel evaluation needs aligned sides: {len(query_emb)} vs {len(target_emb)} lines"
        )
    gold = torch.arange(len(query_emb))
    scores = query_emb @ target_emb.T
    return {"src->tgt": gold_ranks(scores, gold), "tgt->src": gold_ranks(scores.T, gold)}


def evaluate_parallel(query_emb: Tensor, target_emb: Tensor) -> dict[str, dict[str, float]]:
    """Line i of queries translates line i of targets; both directions, cosine scores."""
    return {d: retrieval_metrics(ranks) for d, ranks in parallel_ranks(query_emb, target_emb).items()}


def evaluate_qrels(
    query_emb: Tensor, doc_emb: Tensor, relevant: Tensor, gains: Tensor
) -> dict[str, dict[str, float]]:
    """CLIR: (Q, d) queries against (D, d) documents by cosine; (Q, R) relevant document indices
    and their (Q, R) relevance (0 pads). nDCG@10, MRR@10, Recall@100 (and acc@1), queries -> docs."""
    return {"src->tgt": graded_metrics(gold_ranks(query_emb @ doc_emb.T, relevant), gains, 10, 100)}
