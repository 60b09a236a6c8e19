"""Score encoders on every eval set of a run, and format the results as a table.

Aligned sets (parallel, bible) are scored both ways; clir sets queries -> documents.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dist_optical.config import Config, repo_path
from dist_optical.eval.cache import EmbeddingCache
from dist_optical.eval.metrics import evaluate_qrels, parallel_ranks, retrieval_metrics
from dist_optical.eval.sets import EvalData, load_eval_set
from dist_optical.models.encoder import Encoder

Results = dict[str, dict[str, dict[str, float]]]  # eval set -> direction -> metric -> value


class Evaluator:
    """Holds the eval sets (`evalsets.EvalData`) and the teacher's target embeddings across several
    students. Aligned sets (parallel, bible) are scored both ways; clir sets queries -> documents.
    Each model embeds a text once per call, however many sets share it (the four Revelation sets
    share their English side); the teacher's embeddings are cached on disk across runs
    (eval/cache.py)."""

    def __init__(self, cfg: Config, teacher: Encoder, cache: bool = True):
        """``cache``: keep the teacher's embeddings on disk across runs (they are the same in every
        run), in ``{data.shards}/eval-cache/``."""
        self.cfg = cfg
        self.teacher = teacher
        root = repo_path(cfg.data.shards) / "eval-cache"
        self.teacher_embed = EmbeddingCache(teacher, root).embed if cache else teacher.embed
        self.sets: dict[str, EvalData] = {s.name: load_eval_set(cfg, s) for s in cfg.eval.sets}
        # The last model's embeddings, by side: "student alone" reuses the student's queries.
        self._last: tuple[Encoder | None, dict[str, dict[str, Tensor]]] = (None, {})
        self.targets = self._embed_all(teacher, "targets")

    def _embed_all(self, model: Encoder, side: str) -> dict[str, Tensor]:
        """Every set's ``side`` (queries or targets) by ``model``: unique texts embedded once, and
        once per model across calls for the last model seen."""
        if self._last[0] is not model:
            self._last = (model, {})
        memo = self._last[1]
        if side not in memo:
            memo[side] = self._embed_sets(model, side)
        return memo[side]

    def _embed_sets(self, model: Encoder, side: str) -> dict[str, Tensor]:
        texts = list(dict.fromkeys(t for data in self.sets.values() for t in getattr(data, side)))
        embed = self.teacher_embed if model is self.teacher else model.embed
        emb = embed(texts, self.cfg.eval.batch_size, desc=f"{side} by {model.name}")
        row = {text: i for i, text in enumerate(texts)}
        return {
            name: emb[torch.tensor([row[t] for t in getattr(data, side)], dtype=torch.long)]
            for name, data in self.sets.items()
        }

    def __call__(
        self, query_model: Encoder, target_model: Encoder | None = None, ranks: dict | None = None
    ) -> Results:
        """Foreign queries by ``query_model``; pivot (English, French) targets by the teacher (its
        cached index), or by ``target_model`` (e.g. the student alone, as a `SentenceTransformer(DIR)`
        user has it).
        ``ranks``, if given, receives each aligned set's 1-based gold rank per query in both
        directions (``ranks[set]["src->tgt"]``): what a paired bootstrap over queries needs."""
        queries = self._embed_all(query_model, "queries")
        targets = self.targets if target_model is None else self._embed_all(target_model, "targets")
        results = {}
        for name, data in self.sets.items():
            if data.relevant is None:
                gold = parallel_ranks(queries[name], targets[name])
                results[name] = {direction: retrieval_metrics(r) for direction, r in gold.items()}
                if ranks is not None:
                    ranks[name] = {direction: r.tolist() for direction, r in gold.items()}
            else:
                results[name] = evaluate_qrels(queries[name], targets[name], data.relevant, data.gains)
        return results


DIRECTIONS = {"src->tgt": "foreign queries -> pivot targets", "tgt->src": "pivot queries -> foreign targets"}


def format_table(
    rows: dict[str, dict[str, dict[str, dict[str, float]]]],
    direction: str = "src->tgt",
    metrics: tuple[str, ...] = ("acc@1", "mrr@10"),
) -> str:
    """rows: label -> eval set -> direction -> metrics; one Markdown table, a column block per set,
    its first header cell naming the direction."""
    sets = list(next(iter(rows.values())))
    cells = " | ".join(f"{s} {m}" if len(metrics) > 1 else s for s in sets for m in metrics)
    header = f"| {DIRECTIONS[direction]} | {cells}"
    lines = [header + " |", "|" + "---|" * (1 + len(metrics) * len(sets))]
    for label, results in rows.items():
        cells = [  # clir sets are scored one way only (queries -> documents)
            f"{results[s][direction][m]:.1f}" if direction in results[s] else "-"
            for s in sets
            for m in metrics
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
