"""Cross-lingual retrieval: embed both sides, score by cosine, rank, and compute metrics.

Metrics are pure functions of a ranking (the 1-based ranks of each query's relevant targets and
their graded relevance), implemented once for one gold target per query (parallel sentences)
and for qrels with several (CLIR), so they can be checked on hand-made cases and against a
maintained library (ranx) in tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from dist_optical.config import ModelConfig
from dist_optical.models import (
    check_tokenizer_fits,
    encode,
    load_encoder,
    load_tokenizer,
    special_ids,
    tokenize,
)

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


def read_lines(path: Path, limit: int = 0) -> list[str]:
    """One sentence per line, UTF-8; a clear error names the file and line that is not."""
    if Path(path).is_dir():
        raise ValueError(f"{path}: is a folder; expected a text file with one sentence a line")
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid UTF-8 ({err.reason})") from err
            if limit and len(lines) == limit:
                break
    return lines


@dataclass
class Encoder:
    """A frozen model + tokenizer that turns texts into L2-normalised sentence embeddings."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    max_length: int = 128
    pooling: str = "mean"
    prefix: str = ""

    @classmethod
    def load(
        cls,
        name_or_path: str,
        max_length: int = 128,
        pooling: str = "mean",
        tiny: dict[str, int] | None = None,
        prefix: str = "",
    ) -> Encoder:
        """``tiny`` rebuilds the seeded random tiny BERT of a test config (the same one training used)."""
        tokenizer = load_tokenizer(name_or_path)
        model = load_encoder(name_or_path, tiny, vocab_size=len(tokenizer)).eval()
        check_tokenizer_fits(tokenizer, model, f"model {name_or_path!r}")
        return cls(name_or_path, model, tokenizer, max_length, pooling, prefix)

    @classmethod
    def from_config(cls, name_or_path: str, model: ModelConfig, tiny: bool = False) -> Encoder:
        """Encode as the run does (truncation, pooling, prefix); ``tiny``: rebuild model.tiny's seeded
        random weights (a test config's teacher; an exported student loads its own weights)."""
        return cls.load(
            name_or_path, model.max_length, model.pooling, model.tiny if tiny else None, model.prefix
        )

    @torch.no_grad()  # not inference_mode: a ZeRO-3 student gathers its parameters in hooks
    def embed(self, texts: list[str], batch_size: int = 64, desc: str = "embed") -> Tensor:
        special = special_ids(self.tokenizer)
        device = next(self.model.parameters()).device
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.config.hidden_size)
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, disable=len(texts) < 512):
            idx = order[start : start + batch_size]
            batch = tokenize(self.tokenizer, [texts[i] for i in idx], self.max_length, self.prefix)
            pooled = encode(
                self.model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                special,
                self.pooling,
            ).pooled
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
        return out


def evaluate_parallel(query_emb: Tensor, target_emb: Tensor) -> dict[str, dict[str, float]]:
    """Line i of queries translates line i of targets; both directions, cosine scores."""
    if len(query_emb) != len(target_emb):
        raise ValueError(
            f"parallel evaluation needs aligned sides: {len(query_emb)} vs {len(target_emb)} lines"
        )
    gold = torch.arange(len(query_emb))
    scores = query_emb @ target_emb.T
    return {
        "src->tgt": retrieval_metrics(gold_ranks(scores, gold)),
        "tgt->src": retrieval_metrics(gold_ranks(scores.T, gold)),
    }


def evaluate_qrels(
    query_emb: Tensor, doc_emb: Tensor, relevant: Tensor, gains: Tensor
) -> dict[str, dict[str, float]]:
    """CLIR: (Q, d) queries against (D, d) documents by cosine; (Q, R) relevant document indices
    and their (Q, R) relevance (0 pads). nDCG@10, MRR@10, Recall@100 (and acc@1), queries -> docs."""
    return {"src->tgt": graded_metrics(gold_ranks(query_emb @ doc_emb.T, relevant), gains, 10, 100)}


def format_table(
    rows: dict[str, dict[str, dict[str, dict[str, float]]]],
    direction: str = "src->tgt",
    metrics: tuple[str, ...] = ("acc@1", "mrr@10"),
) -> str:
    """rows: label -> eval set -> direction -> metrics; one Markdown table, a column block per set."""
    sets = list(next(iter(rows.values())))
    header = "| model | " + " | ".join(f"{s} {m}" if len(metrics) > 1 else s for s in sets for m in metrics)
    lines = [header + " |", "|" + "---|" * (1 + len(metrics) * len(sets))]
    for label, results in rows.items():
        cells = [  # clir sets are scored one way only (queries -> documents)
            f"{results[s][direction][m]:.1f}" if direction in results[s] else "-"
            for s in sets
            for m in metrics
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
