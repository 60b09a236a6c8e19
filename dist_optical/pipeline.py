"""The main job: shards (if not built) -> zero-shot eval -> train -> eval the student -> table.

Queries (foreign side) are embedded by the model under test; targets (English side) by the
frozen teacher, whose index an English retrieval system already has. Teacher target
embeddings are computed once and reused for every row.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dist_optical.config import Config
from dist_optical.evalsets import EvalData, load_eval_set
from dist_optical.evaluate import Encoder, evaluate_parallel, evaluate_qrels, format_table

log = logging.getLogger("dist_optical.pipeline")

Results = dict[str, dict[str, dict[str, float]]]  # eval set -> direction -> metric -> value


class Evaluator:
    """Holds the eval sets (`evalsets.EvalData`) and the teacher's target embeddings across several
    students. Aligned sets (parallel, bible) are scored both ways; clir sets queries -> documents."""

    def __init__(self, cfg: Config, teacher: Encoder):
        self.cfg = cfg
        self.teacher = teacher
        self.sets: dict[str, tuple[EvalData, Any]] = {}
        for eval_set in cfg.eval.sets:
            data = load_eval_set(cfg, eval_set)
            target_emb = teacher.embed(data.targets, cfg.eval.batch_size, desc=f"{eval_set.name} targets")
            self.sets[eval_set.name] = (data, target_emb)

    def __call__(self, query_model: Encoder) -> Results:
        results = {}
        for name, (data, target_emb) in self.sets.items():
            query_emb = query_model.embed(data.queries, self.cfg.eval.batch_size, desc=f"{name} queries")
            if data.relevant is None:
                results[name] = evaluate_parallel(query_emb, target_emb)
            else:
                results[name] = evaluate_qrels(query_emb, target_emb, data.relevant, data.gains)
        return results


def run_pipeline(cfg: Config, out: Path, resume: str = "") -> dict[str, Results]:
    from dist_optical.train import train

    if not cfg.eval.sets:
        raise ValueError("eval.sets is empty: the main job needs at least one evaluation set")
    max_length, pooling = cfg.model.max_length, cfg.model.pooling
    teacher = Encoder.load(cfg.model.teacher, max_length, pooling, cfg.model.tiny)
    evaluator = Evaluator(cfg, teacher)
    rows: dict[str, Results] = {"zero-shot teacher": evaluator(teacher)}
    if cfg.model.student and cfg.model.student != cfg.model.teacher:
        rows["untrained student"] = evaluator(
            Encoder.load(cfg.model.student, max_length, pooling, cfg.model.tiny)
        )
    else:
        log.info("the untrained student is the teacher (initialised from its weights): same row as zero-shot")

    summary = train(cfg, out, resume)
    rows["trained student"] = evaluator(Encoder.load(summary["model"], max_length, pooling))

    report = {"run_dir": str(out), "steps": summary["steps"], "results": rows}
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    tmp.replace(out / "eval.json")
    print(f"\nRetrieval, {cfg.data.src_lang} queries -> {cfg.data.tgt_lang} targets (teacher-encoded), %:")
    print(format_table(rows, "src->tgt"))
    print(f"\n{cfg.data.tgt_lang} queries (teacher) -> {cfg.data.src_lang} targets, %:")
    print(format_table(rows, "tgt->src"))
    return rows
