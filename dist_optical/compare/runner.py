"""`dist-optical compare`: train and evaluate every run of a spec, one after another, then report.

Output folder (``--out``, default ``runs/compare``):
  runs/LANG/OBJECTIVE/pairs-N/seedS/   one training run (config.yaml, metrics.jsonl, tb/) and its
                                       result.json; zero-shot runs: runs/LANG/OBJECTIVE/result.json
  results.json                         every run's numbers, the summary, the splits, the timing
  report.md, *.png                     the report and its plots (`compare.report`)

A run is finished when its result.json exists (written atomically, last) and was made from the
same resolved config; finished runs are skipped, so re-running after an interruption continues.
A run whose config changed since is run again from scratch; its old folder is kept beside it, as
FOLDER.replaced-TIME. Checkpoints and the exported student are deleted once result.json is
written, unless the spec says ``keep_models: true``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dist_optical.artifacts import move_aside
from dist_optical.compare.report import summarise, write_report
from dist_optical.compare.spec import PROTOCOLS, RunKey, Spec, load_spec, plan
from dist_optical.compare.verdicts import significance, verdicts
from dist_optical.config import REPO_ROOT, Config, ConfigError, config_hash, config_to_dict
from dist_optical.data.bitext import is_verse_id, verse_book
from dist_optical.engine.signals import Preempted, StopRequest
from dist_optical.files import atomic_write, write_json

log = logging.getLogger("dist_optical.compare")

RESULT = "result.json"
# An unfinished run's config hash and the seconds of each invocation that trained it (more than one
# when a signal stopped it).
PIECES = "train_pieces.json"
# Diagnostics are averaged over the last steps: one step's batch of 16 is a noisy estimate.
TAIL_STEPS = 10
DIAGNOSTICS = (
    "collapse/student_cos",
    "ot/plan_entropy",
    "ot/cost_mean",
    "english/student_teacher_cos",
    "loss",
)


def checked_plan(spec_path: str | Path) -> tuple[Spec, list[RunKey], dict[RunKey, Config]]:
    """The spec, its runs in order and each run's resolved config, all validated up front."""
    spec = load_spec(spec_path)
    keys = plan(spec)
    configs = {
        key: spec.run_config(key) if key.trains else spec.language_config(key.language) for key in keys
    }
    check_configs(spec, configs)
    return spec, keys, configs


def run_compare(
    spec_path: str | Path,
    out: Path,
    publish: Path | None = None,
    stop_after_s: float = 0.0,
    reuse: Path | None = None,
) -> dict[str, Any]:
    """Run (or skip) every planned run, then write results.json, report.md and the plots.

    The report (and its published copy) is rewritten after every run this invocation finishes, so
    a grid stopped any way (a killed job, a machine taken back) has every finished run reported.
    ``stop_after_s`` (0 = never): start no run after that many seconds, and report over the finished
    ones (the report names the missing runs); the next invocation continues. ``reuse``: a published
    results.json whose runs count as finished where their config is unchanged (a grid carried to
    another machine)."""
    started, load_start = time.time(), os.getloadavg()
    spec, keys, configs = checked_plan(spec_path)
    languages = list(dict.fromkeys(key.language for key in keys))
    splits = {language: check_split(language, spec.language_config(language)) for language in languages}
    if reuse is not None:
        import_records(reuse, out, keys, configs)

    def report(skipped: int) -> dict[str, Any]:
        """results.json, report.md and the plots over every finished run (the rest: missing)."""
        finished = {key: _finished(out / "runs" / key.folder(), config_hash(configs[key])) for key in keys}
        records = [record for record in finished.values() if record is not None]
        results = {
            # Relative to the repository when inside it: the published report names no machine's folders.
            "spec": spec.path.relative_to(REPO_ROOT).as_posix()
            if spec.path.is_relative_to(REPO_ROOT)
            else str(spec.path),
            # What made this invocation (a grid run in pieces has one per piece; the report shows the last).
            "command": shlex.join(["dist-optical", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "wall_s": time.time() - started,
            # Summed over runs as each was measured when it ran (also when this invocation reused it).
            "runs_wall_s": sum(r.get("train_wall_s", 0.0) + r["eval_wall_s"] for r in records),
            "runs_total": len(records),
            "runs_skipped": skipped,
            "runs_planned": len(keys),
            "runs_missing": [key.folder() for key, record in finished.items() if record is None],
            "cpus": os.cpu_count(),
            "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
            "grids": {name: vars(grid) for name, grid in spec.grids.items()},
            "settings": run_settings(
                next(configs[k] for k in keys if k.trains) if any(k.trains for k in keys) else None
            ),
            "splits": splits,
            "runs": records,
            "summary": summarise(records),
            "significance": significance(records, spec),
        }
        results["verdicts"] = verdicts(results, spec)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", results, "the comparison's results")
        files = write_report(results, spec, out)
        if publish is not None:
            publish.mkdir(parents=True, exist_ok=True)
            for path in [out / "results.json", *files]:
                atomic_write(publish / path.name, path.read_bytes(), "the published comparison")
            log.info("published %s to %s", ", ".join(p.name for p in files), publish)
        return results

    skipped = 0
    # One language's teacher and eval sets in memory at a time (its targets are cached on disk).
    evaluators = {language: _LazyEvaluator(spec.language_config(language)) for language in languages}
    for position, key in enumerate(keys, 1):
        for language in languages:
            if language != key.language:
                evaluators[language].release()
        run_dir = out / "runs" / key.folder()
        late = stop_after_s and time.time() - started > stop_after_s
        if late and _finished(run_dir, config_hash(configs[key])) is None:
            log.info("[%d/%d] not started (past --stop-after) %s", position, len(keys), key.folder())
            continue
        _, was_skipped = run_one(key, configs[key], run_dir, evaluators[key.language], spec.keep_models)
        skipped += was_skipped
        log.info(
            "[%d/%d] %s %s",
            position,
            len(keys),
            "skipped (finished)" if was_skipped else "done",
            key.folder(),
        )
        if not was_skipped and position < len(keys):
            report(skipped)
    results = report(skipped)
    log.info(
        "compare: %d runs (%d skipped) in %.1f min -> %s",
        results["runs_total"],
        skipped,
        results["wall_s"] / 60,
        out,
    )
    return results


def import_records(path: Path, out: Path, keys: list[RunKey], configs: dict[RunKey, Config]) -> None:
    """Write the records of ``path`` (a results.json) into ``out``'s run folders as finished runs,
    where the run is planned, not finished here, and was made from the same resolved config."""
    try:
        records = {r["folder"]: r for r in json.loads(path.read_text(encoding="utf-8"))["runs"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--reuse {path}: not a results.json of `dist-optical compare` ({err})") from err
    imported = 0
    for key in keys:
        record, run_dir = records.get(key.folder()), out / "runs" / key.folder()
        digest = config_hash(configs[key])
        if record and record.get("config_hash") == digest and _finished(run_dir, digest) is None:
            if run_dir.is_dir() and any(run_dir.iterdir()):  # another config's run, or one half-trained
                move_aside(run_dir, "is replaced by the reused finished run", "run", "replaced")
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / RESULT, record, "a reused compare result")
            imported += 1
    log.info("reused %d finished run(s) from %s", imported, path)


def unfinished(out: Path, keys: list[RunKey], configs: dict[RunKey, Config]) -> list[RunKey]:
    """The runs without a result.json made from their current config."""
    return [key for key in keys if _finished(out / "runs" / key.folder(), config_hash(configs[key])) is None]


def run_folder(
    spec_path: str | Path, out: Path, folder: str, stop: StopRequest | None = None
) -> dict[str, Any]:
    """Train and evaluate the one run of the spec stored in ``runs/FOLDER`` (a job array task)."""
    spec, keys, configs = checked_plan(spec_path)
    key = next((k for k in keys if k.folder() == folder), None)
    if key is None:
        raise ConfigError(f"{spec.path}: no run is stored in runs/{folder}")
    evaluator = _LazyEvaluator(spec.language_config(key.language))
    record, _ = run_one(key, configs[key], out / "runs" / folder, evaluator, spec.keep_models, stop)
    return {name: record[name] for name in ("folder", "config_hash", "eval_wall_s")}


# What every run of a language shares with its zero-shot row: the eval (sets, teacher, length), the
# training pairs that check_split checks against the held-out verses (the pairs budget aside), and
# the dev sets the verdicts leave out.
SHARED_BY_A_LANGUAGE = {
    "eval": lambda cfg: cfg.eval,
    **{f"model.{name}": (lambda cfg, n=name: getattr(cfg.model, n)) for name in
       ("teacher", "max_length", "pooling", "tiny")},
    "data": lambda cfg: replace(cfg.data, max_pairs=0),
    "train.dev_sets": lambda cfg: cfg.train.dev_sets,
}  # fmt: skip


def check_configs(spec: Spec, configs: dict[RunKey, Config]) -> None:
    """Fail before any training: every run of a language is trained on the same split and evaluated
    exactly as the language's zero-shot row is (SHARED_BY_A_LANGUAGE). Each run's config is already
    validated (spec.py), its objective included."""
    for key, cfg in configs.items():
        reference = spec.language_config(key.language)
        for field, shared in SHARED_BY_A_LANGUAGE.items():
            if shared(cfg) != shared(reference):
                raise ConfigError(
                    f"{spec.path}: objectives.{key.objective} changes {field} for {key.language}: runs of a "
                    "language must be trained on one split and evaluated alike (set it in overrides or "
                    "languages instead)"
                )
        if not cfg.eval.sets:
            raise ConfigError(f"{spec.path}: languages.{key.language}: eval.sets is empty")


def check_split(language: str, cfg: Config) -> dict[str, Any]:
    """Build the language's shards (once) and check that no training pair is a held-out Bible
    eval verse: the split is by book, and it is checked on the keys, not assumed from the config."""
    from dist_optical.data import ShardStream
    from dist_optical.data.prepare import ensure_shards
    from dist_optical.eval.sets import check_disjoint, load_eval_set

    manifests = ensure_shards(cfg)
    train_keys = [sample["key"] for sample in ShardStream(manifests, shuffle=False)]
    split: dict[str, Any] = {
        "shards": [str(m.parent) for m in manifests],
        "bitexts": [b.files for b in cfg.data.bitexts],
        "train_pairs": len(train_keys),
        "exclude_books": cfg.data.exclude_books,
        "eval": {},
    }
    for eval_set in cfg.eval.sets:
        if eval_set.kind != "bible":
            continue
        data = load_eval_set(cfg, eval_set)
        check_disjoint(train_keys, data.keys, f"{language}: eval set {eval_set.name}")
        split["eval"][eval_set.name] = {"books": eval_set.books, "verses": len(data.keys), "overlap": 0}
    if split["eval"]:  # a split by book: which books the training pairs come from
        split["train_books"] = sorted({verse_book(key) for key in train_keys if is_verse_id(key)})
    return split


class _LazyEvaluator:
    """The language's teacher and target embeddings, built on first use (not at all when every
    run of the language is finished) and shared by all its runs."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._evaluator = None

    def get(self):
        if self._evaluator is None:
            from dist_optical.eval.evaluator import Evaluator
            from dist_optical.models.encoder import Encoder

            teacher = Encoder.for_eval(self.cfg.model.teacher, self.cfg)
            self._evaluator = Evaluator(self.cfg, teacher)
        return self._evaluator

    def release(self) -> None:
        self._evaluator = None


def run_one(
    key: RunKey,
    cfg: Config,
    run_dir: Path,
    evaluator: _LazyEvaluator,
    keep_models: bool,
    stop: StopRequest | None = None,
) -> tuple[dict[str, Any], bool]:
    """Train (unless zero-shot) and evaluate one run -> (its record, whether it was skipped)."""
    digest = config_hash(cfg)
    result_path = run_dir / RESULT
    if (record := _finished(run_dir, digest)) is not None:
        return record, True
    if result_path.is_file():  # finished with another config: kept beside, then run again
        move_aside(run_dir, "was made from another config; running it again", "finished run", "replaced")
    elif _pieces(run_dir).get("config_hash", digest) != digest:  # stopped, then its config changed
        move_aside(run_dir, "was started from another config; starting again", "unfinished run", "replaced")
    run_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "language": key.language,
        "objective": key.objective,
        "pairs": key.pairs,
        "seed": key.seed if key.trains else None,
        "folder": key.folder(),
        "config_hash": digest,
    }
    ranks: dict[str, dict] = {protocol: {} for protocol in PROTOCOLS}
    if key.trains:
        from dist_optical.models.encoder import Encoder

        summary, pieces = train_in_pieces(cfg, run_dir, stop, digest)
        record["train_wall_s"], record["train_pieces_s"] = sum(pieces), pieces
        t0 = time.perf_counter()  # evaluation from here: the teacher and its index built after training
        evaluate = evaluator.get()
        model = Encoder.for_eval(summary["model"], cfg)
        record.update(training_record(cfg, summary["steps"], run_dir / "metrics.jsonl"))
        results = {
            "idx": evaluate(model, ranks=ranks["idx"]),
            "alone": evaluate(model, target_model=model, ranks=ranks["alone"]),
        }
    else:  # the teacher against its own index is the teacher alone: one evaluation serves both
        t0, evaluate = time.perf_counter(), evaluator.get()
        idx = evaluate(evaluate.teacher, ranks=ranks["idx"])
        results, ranks["alone"] = {"idx": idx, "alone": idx}, ranks["idx"]
    record["eval_wall_s"] = time.perf_counter() - t0
    # The wall times above are only comparable when the machine was equally busy: record how busy.
    record["load_average"] = os.getloadavg()[0]
    record["results"] = results  # protocol -> set -> direction -> metric
    record["ranks"] = ranks  # protocol -> set -> direction -> gold rank per query: the paired bootstrap
    write_json(result_path, record, "a run's result")  # last: from here on the run counts as finished
    (run_dir / PIECES).unlink(missing_ok=True)  # in the record now; a run redone starts from none
    if key.trains and not keep_models:  # ~400 MB a run; the numbers are in result.json
        for name in ("checkpoints", "model"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    return record, False


def train_in_pieces(
    cfg: Config, run_dir: Path, stop: StopRequest | None, digest: str
) -> tuple[dict[str, Any], list[float]]:
    """Train (resuming the run's checkpoint, if any) -> (train's summary, the seconds of every
    invocation whose work the checkpoints keep). PIECES notes them with the config's hash from the
    start: a run stopped by a signal resumes next time and its minutes add up, or is moved aside if
    its config changed meanwhile. A crash's unsaved steps do not count. The note stays in the run
    folder until result.json is written: an evaluation cut short does not lose it."""
    from dist_optical.train import train

    def note(seconds: list[float]) -> None:
        write_json(run_dir / PIECES, {"config_hash": digest, "seconds": seconds}, "a run's training time")

    started, pieces = time.perf_counter(), _pieces(run_dir).get("seconds", [])
    note(pieces)
    try:
        summary = train(cfg, run_dir, resume="auto", stop=stop)
    except Preempted:
        note([*pieces, time.perf_counter() - started])
        raise
    pieces.append(time.perf_counter() - started)
    note(pieces)
    return summary, pieces


def _pieces(run_dir: Path) -> dict[str, Any]:
    """The run folder's PIECES note ({} when there is none)."""
    path = run_dir / PIECES
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _finished(run_dir: Path, digest: str) -> dict[str, Any] | None:
    """The run's record if its result.json exists and was made from the config hashed to ``digest``."""
    result_path = run_dir / RESULT
    if not result_path.is_file():
        return None
    record = json.loads(result_path.read_text(encoding="utf-8"))
    return record if record.get("config_hash") == digest else None


def training_record(cfg: Config, steps: int, metrics_path: Path) -> dict[str, Any]:
    """Steps, training pairs (the pool and how many were drawn), seconds per step, the learning
    curve, and the diagnostics of the first and last `TAIL_STEPS` steps (why a run failed: the
    collapse signal and the plan entropy)."""
    from dist_optical.data.prepare import shard_folder
    from dist_optical.data.shards import load_manifest

    sizes = [load_manifest(shard_folder(cfg, b))["total_pairs"] for b in cfg.data.bitexts]
    lines = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines()]
    pairs_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum
    step_s = [pairs_per_step / line["samples_per_s"] for line in lines]
    return {
        "curve": learning_curve(lines, pairs_per_step),
        "step_s": statistics.median(step_s) if step_s else 0.0,
        "steps": steps,
        "pairs_pool": sum(min(n, cfg.data.max_pairs) if cfg.data.max_pairs else n for n in sizes),
        "pairs_seen": steps * cfg.train.micro_batch_size * cfg.train.grad_accum,
        "diagnostics": {
            "first": _mean_of(lines[:TAIL_STEPS]),
            "last": _mean_of(lines[-TAIL_STEPS:]),
        },
    }


def learning_curve(lines: list[dict[str, Any]], pairs_per_step: int) -> dict[str, Any]:
    """Every train.eval_every steps: pairs seen, training seconds so far (the steps' own time, the
    dev scoring excluded: accuracy at equal wall time) and each dev set's acc@1."""
    curve: dict[str, Any] = {"pairs": [], "train_s": [], "acc@1": {}}
    seconds = 0.0
    for line in lines:
        seconds += pairs_per_step / line["samples_per_s"]
        scores = {
            key.split("/")[1]: v
            for key, v in line.items()
            if key.startswith("dev/") and key.endswith("/acc@1")
        }
        if scores:
            curve["pairs"].append(line["step"] * pairs_per_step)
            curve["train_s"].append(round(seconds, 2))
            for name, value in scores.items():
                curve["acc@1"].setdefault(name, []).append(value)
    return curve


def _mean_of(lines: list[dict[str, float]]) -> dict[str, float]:
    return {
        name: sum(line[name] for line in lines) / len(lines)
        for name in DIAGNOSTICS
        if lines and all(name in line for line in lines)
    }


def run_settings(cfg: Config | None) -> dict[str, Any]:
    """The settings every training run shares (those of the first run), for the report's setup."""
    if cfg is None:
        return {}
    full = config_to_dict(cfg)
    return {section: full[section] for section in ("model", "ot", "contrastive", "train")}
