"""The main job: shards (if not built) -> zero-shot eval -> train -> eval the student -> table.

Two protocols for the trained student: its foreign queries against English targets embedded by
the frozen teacher (the index an English retrieval system already has; computed once and reused
for every row), and the student alone on both sides (what a `SentenceTransformer(DIR)` user gets).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from dist_optical.atomic import atomic_write
from dist_optical.config import Config
from dist_optical.errors import UserError
from dist_optical.evalsets import EvalData, load_eval_set
from dist_optical.evaluate import Encoder, evaluate_parallel, evaluate_qrels, format_table, gold_ranks
from dist_optical.models.package import exported_meta, write_card

log = logging.getLogger("dist_optical.pipeline")

Results = dict[str, dict[str, dict[str, float]]]  # eval set -> direction -> metric -> value


class Evaluator:
    """Holds the eval sets (`evalsets.EvalData`) and the teacher's target embeddings across several
    students. Aligned sets (parallel, bible) are scored both ways; clir sets queries -> documents.
    Each model embeds a text once per call, however many sets share it (the four Revelation sets
    share their English side)."""

    def __init__(self, cfg: Config, teacher: Encoder):
        self.cfg = cfg
        self.teacher = teacher
        self.sets: dict[str, EvalData] = {s.name: load_eval_set(cfg, s) for s in cfg.eval.sets}
        self.targets = self._embed_all(teacher, "targets")

    def _embed_all(self, model: Encoder, side: str) -> dict[str, Tensor]:
        """Every set's ``side`` (queries or targets) by ``model``: unique texts embedded once."""
        texts = list(dict.fromkeys(t for data in self.sets.values() for t in getattr(data, side)))
        emb = model.embed(texts, self.cfg.eval.batch_size, desc=f"{side} by {model.name}")
        row = {text: i for i, text in enumerate(texts)}
        return {
            name: emb[torch.tensor([row[t] for t in getattr(data, side)], dtype=torch.long)]
            for name, data in self.sets.items()
        }

    def __call__(
        self, query_model: Encoder, target_model: Encoder | None = None, ranks: dict | None = None
    ) -> Results:
        """Foreign queries by ``query_model``; English targets by the teacher (its cached index), or by
        ``target_model`` (e.g. the student alone, as a `SentenceTransformer(DIR)` user has it).
        ``ranks``, if given, receives each aligned set's 1-based gold rank per query (foreign ->
        English): what a paired bootstrap over queries needs."""
        queries = self._embed_all(query_model, "queries")
        targets = self.targets if target_model is None else self._embed_all(target_model, "targets")
        results = {}
        for name, data in self.sets.items():
            if data.relevant is None:
                results[name] = evaluate_parallel(queries[name], targets[name])
                if ranks is not None:
                    gold = torch.arange(len(data.queries))
                    ranks[name] = gold_ranks(queries[name] @ targets[name].T, gold).tolist()
            else:
                results[name] = evaluate_qrels(queries[name], targets[name], data.relevant, data.gains)
        return results


def run_pipeline(cfg: Config, out: Path, resume: str = "") -> dict[str, Results]:
    """The main job in run folder ``out``, held locked for its whole length (train locks its own)."""
    from dist_optical import lock

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder (a run folder is a directory)")
    with lock.hold(out / "locks" / "run.lock", "run"):
        return _run_pipeline(cfg, out, resume)


def _run_pipeline(cfg: Config, out: Path, resume: str) -> dict[str, Results]:
    from dist_optical.engine.checkpoint import refuse_fresh_start
    from dist_optical.train import train

    if not resume:
        refuse_fresh_start(out)  # before the zero-shot evaluation, not minutes later

    if not cfg.eval.sets:
        raise ValueError("eval.sets is empty: the main job needs at least one evaluation set")
    teacher = Encoder.from_config(cfg.model.teacher, cfg.model, tiny=True)
    evaluator = Evaluator(cfg, teacher)
    rows: dict[str, Results] = {"zero-shot teacher": evaluator(teacher)}
    if cfg.model.student and cfg.model.student != cfg.model.teacher:
        rows["untrained student"] = evaluator(Encoder.from_config(cfg.model.student, cfg.model, tiny=True))
    else:
        log.info("the untrained student is the teacher (initialised from its weights): same row as zero-shot")

    summary = train(cfg, out, resume)
    student = Encoder.from_config(summary["model"], cfg.model)
    rows["trained student -> teacher index"] = evaluator(student)
    rows["trained student alone"] = evaluator(student, target_model=student)

    report = {"run_dir": str(out), "steps": summary["steps"], "results": rows}
    atomic_write(out / "eval.json", json.dumps(report, indent=2))
    model_dir = Path(summary["model"])
    write_card(model_dir, exported_meta(model_dir), rows)
    languages = "/".join(b.lang for b in cfg.data.bitexts)
    print(f"\nRetrieval acc@1 %, foreign ({languages}) queries -> {cfg.data.tgt_lang} targets:")
    print(format_table(rows, "src->tgt", metrics=("acc@1",)))
    print(f"\n{cfg.data.tgt_lang} queries -> foreign targets:")
    print(format_table(rows, "tgt->src", metrics=("acc@1",)))
    print(f"\nMRR@10, nDCG@10 and recall@10 in {out / 'eval.json'}; the student: {model_dir}")
    return rows
