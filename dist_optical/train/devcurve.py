"""The learning curve: the student scored on one eval set every `train.eval_every` steps."""

from __future__ import annotations

from dist_optical.config import Config
from dist_optical.eval.metrics import evaluate_parallel
from dist_optical.eval.sets import load_eval_set
from dist_optical.models.encoder import Encoder


class DevCurve:
    """Foreign queries by the student (as it is at that step) against English targets by the frozen
    teacher, embedded once; ``dev/acc@1`` and ``dev/mrr@10`` go into that step's metrics."""

    def __init__(self, cfg: Config, teacher: Encoder) -> None:
        names = [s.name for s in cfg.eval.sets]  # config.validate: dev_set names an aligned set
        name = cfg.train.dev_set or names[0]
        eval_set = cfg.eval.sets[names.index(name)]
        self.name, self.batch_size = name, cfg.eval.batch_size
        self.data = load_eval_set(cfg, eval_set)
        self.targets = teacher.embed(self.data.targets, self.batch_size, desc=f"{name} targets")

    def __call__(self, student: Encoder) -> dict[str, float]:
        queries = student.embed(self.data.queries, self.batch_size, desc=f"{self.name} queries")
        metrics = evaluate_parallel(queries, self.targets)["src->tgt"]
        return {"dev/acc@1": metrics["acc@1"], "dev/mrr@10": metrics["mrr@10"]}
