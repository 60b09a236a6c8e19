"""The learning curves: the student scored on the dev sets every `train.eval_every` steps."""

from __future__ import annotations

from dist_optical.config import Config
from dist_optical.eval.metrics import evaluate_parallel
from dist_optical.eval.sets import load_eval_set
from dist_optical.models.encoder import Encoder


class DevCurve:
    """Foreign queries by the student (as it is at that step) against pivot targets by the frozen
    teacher, embedded once, on each of `train.dev_sets` (default: the first eval set);
    ``dev/SET/acc@1`` and ``dev/SET/mrr@10`` go into that step's metrics."""

    def __init__(self, cfg: Config, teacher: Encoder) -> None:
        sets = {s.name: s for s in cfg.eval.sets}  # config.validate: dev_sets name aligned sets
        names = cfg.train.dev_sets or [cfg.eval.sets[0].name]
        self.batch_size = cfg.eval.batch_size
        self.data = {name: load_eval_set(cfg, sets[name]) for name in names}
        self.targets = {
            name: teacher.embed(data.targets, self.batch_size, desc=f"{name} targets")
            for name, data in self.data.items()
        }

    def __call__(self, student: Encoder) -> dict[str, float]:
        scores = {}
        for name, data in self.data.items():
            queries = student.embed(data.queries, self.batch_size, desc=f"{name} queries")
            metrics = evaluate_parallel(queries, self.targets[name])["src->tgt"]
            scores.update({f"dev/{name}/acc@1": metrics["acc@1"], f"dev/{name}/mrr@10": metrics["mrr@10"]})
        return scores
