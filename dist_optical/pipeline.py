"""The main job: shards (if not built) -> zero-shot eval -> train -> eval the student -> table.

Two protocols for the trained student: its foreign queries against pivot (English, French) targets
embedded by the frozen teacher (the index a retrieval system already has; computed once and reused
for every row), and the student alone on both sides (what a `SentenceTransformer(DIR)` user gets).
Both are scored both ways: foreign queries -> pivot targets, and pivot queries -> foreign targets
(the student as the document encoder).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dist_optical.config import Config, ConfigError
from dist_optical.eval.evaluator import Evaluator, Results, format_table
from dist_optical.files import write_json
from dist_optical.models.encoder import Encoder
from dist_optical.models.package import exported_meta, write_card

log = logging.getLogger("dist_optical.pipeline")


def run_pipeline(cfg: Config, out: Path, resume: str = "") -> dict[str, Results]:
    """The main job in run folder ``out``, held locked for its whole length (train locks its own)."""
    from dist_optical.engine.checkpoint import check_run_folder
    from dist_optical.files import hold_lock

    check_run_folder(out)  # before the lock file goes in
    with hold_lock(out / "locks" / "run.lock", "run"):
        return _run_pipeline(cfg, out, resume)


def _run_pipeline(cfg: Config, out: Path, resume: str) -> dict[str, Results]:
    from dist_optical.engine.checkpoint import refuse_fresh_start
    from dist_optical.train import train

    if not resume:
        refuse_fresh_start(out)  # before the zero-shot evaluation, not minutes later

    if not cfg.eval.sets:
        raise ConfigError("eval.sets is empty: the main job needs at least one evaluation set")
    teacher = Encoder.for_eval(cfg.model.teacher, cfg)
    evaluator = Evaluator(cfg, teacher)
    rows: dict[str, Results] = {"zero-shot teacher": evaluator(teacher)}
    if cfg.model.student and cfg.model.student != cfg.model.teacher:
        rows["untrained student"] = evaluator(Encoder.for_eval(cfg.model.student, cfg))
    else:
        log.info("the untrained student is the teacher (initialised from its weights): same row as zero-shot")

    summary = train(cfg, out, resume)
    student = Encoder.for_eval(summary["model"], cfg)
    rows["trained student -> teacher index"] = evaluator(student)
    rows["trained student alone"] = evaluator(student, target_model=student)

    report = {"run_dir": str(out), "steps": summary["steps"], "results": rows}
    write_json(out / "eval.json", report, "the run's evaluation")
    model_dir = Path(summary["model"])
    write_card(model_dir, exported_meta(model_dir), rows)
    pairs = ", ".join(dict.fromkeys(b.pair for b in cfg.data.bitexts))
    print(f"\nRetrieval acc@1 % (trained on {pairs}), at {student.max_length} tokens per text:\n")
    print(format_table(rows, "src->tgt", metrics=("acc@1",)))
    print()
    print(format_table(rows, "tgt->src", metrics=("acc@1",)))
    print(f"\nMRR@10, nDCG@10 and recall@10 in {out / 'eval.json'}; the student: {model_dir}")
    return rows
