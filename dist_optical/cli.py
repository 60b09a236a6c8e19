"""`dist-optical` entry points: run, shard, train, eval, export, submit, compare."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from dist_optical.config import REPO_ROOT, load_config
from dist_optical.engine.signals import PREEMPTED_EXIT_CODE, Preempted
from dist_optical.errors import UserError
from dist_optical.files import write_failure
from dist_optical.launch.cluster import CLUSTERS
from dist_optical.launch.submit import add_arguments as submit_arguments
from dist_optical.launch.submit import add_job_arguments

DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
NON_FINITE_EXIT_CODE = 3  # training stopped on a NaN/inf loss (75: stopped by a signal, resumable)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dist-optical", description=__doc__)
    # The deepspeed launcher passes --local_rank=N first; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="the main job: eval zero-shot, shard (if needed), train, eval, print table"
    )
    _config_args(run)
    run.add_argument(
        "--out", type=Path, default=Path("runs/default"), help="run folder (default: %(default)s)"
    )
    run.add_argument("--resume", default="", help="'auto' or a checkpoints path")

    shard = sub.add_parser("shard", help="write bitext to WebDataset shards + manifest.json")
    shard.add_argument("inputs", nargs="+", type=Path, help="FOREIGN PIVOT text/XML files, or one TSV")
    shard.add_argument("--out", type=Path, required=True)
    shard.add_argument("--pairs-per-shard", type=int, default=1000)
    shard.add_argument("--max-shard-bytes", type=int, default=0, help="roll over on size too (0 = off)")
    shard.add_argument("--max-chars", type=int, default=1000, help="drop pairs with a longer side")
    shard.add_argument("--src-lang", default="xx")
    shard.add_argument("--pivot", default="eng", help="the language of the side the teacher encodes")
    shard.add_argument("--exclude-books", nargs="*", default=[], help="Bible books to hold out, e.g. REV")
    shard.add_argument("--workers", type=int, default=1, help="writer processes")

    train = sub.add_parser("train", help="train a student (any launcher: none, torchrun, deepspeed, SLURM)")
    _config_args(train)
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument("--resume", default="", help="'auto' (newest complete checkpoint, if any) or a path")

    evaluate = sub.add_parser("eval", help="parallel-sentence retrieval metrics")
    evaluate.add_argument("--model", required=True, help="exported model folder or packaged model name")
    evaluate.add_argument("--queries", type=Path, required=True, help="foreign sentences, one a line")
    evaluate.add_argument(
        "--targets", type=Path, required=True, help="pivot (English, French) translations, line-aligned"
    )
    evaluate.add_argument(
        "--target-model",
        default="",
        help="encodes the targets (default: the teacher recorded in --model, else --model)",
    )
    evaluate.add_argument("--max-pairs", type=int, default=0)
    evaluate.add_argument(
        "--max-length",
        type=int,
        help="tokens per text (default: the exported student's, else the model's own maximum)",
    )
    evaluate.add_argument("--prefix", help="prepended to every text (default: the exported student's)")
    evaluate.add_argument("--json", type=Path, help="write the metrics here")

    export = sub.add_parser("export", help="consolidate a DeepSpeed checkpoint into a Hugging Face folder")
    export.add_argument("checkpoint", type=Path, help="RUN/checkpoints or RUN/checkpoints/stepNNNNNN")
    export.add_argument("out", type=Path)

    submit = sub.add_parser("submit", help="train as a submitit job (SLURM with requeue, or this machine)")
    _config_args(submit)
    submit_arguments(submit)

    compare = sub.add_parser(
        "compare", help="train and evaluate an objective x language x seed grid; write results and report"
    )
    compare.add_argument(
        "--config",
        type=Path,
        default=REPO_ROOT / "configs" / "compare.yaml",
        help="comparison spec (default: %(default)s)",
    )
    compare.add_argument(
        "--out", type=Path, default=Path("runs/compare"), help="output folder (default: %(default)s)"
    )
    compare.add_argument("--publish", type=Path, help="also copy report.md, plots and results.json here")
    compare.add_argument(
        "--stop-after",
        type=float,
        default=0.0,
        metavar="MIN",
        help="start no run after MIN minutes, and report over the finished ones (run again to continue)",
    )
    compare.add_argument(
        "--reuse",
        type=Path,
        metavar="RESULTS_JSON",
        help="a published results.json: its runs count as finished where their config is unchanged "
        "(default: the --publish folder's results.json, if there is one)",
    )
    compare.add_argument(
        "--cluster",
        choices=CLUSTERS,
        help="leave out to run every run here, one after another; else submit the unfinished runs as "
        "one submitit job array (auto: SLURM if `srun` is on PATH, else local processes)",
    )
    compare.add_argument("--gpus-per-node", type=int, default=0, choices=(0, 1), help="GPUs per run")
    add_job_arguments(compare)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from packages or folders, never a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    # compare has no --resume: the same command skips the finished runs and resumes the stopped one.
    how_to_resume = "run the same command again" if args.command == "compare" else "resume with --resume auto"
    try:
        COMMANDS[args.command](args)
    except Preempted as stop:  # a signal: checkpointed, resumable
        print(f"dist-optical {args.command}: {stop}; {how_to_resume}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except FloatingPointError as err:  # the loss went NaN/inf: a stop of its own, not a crash
        print(f"dist-optical {args.command}: stopped: {err}; the last complete checkpoint is kept "
              f"({how_to_resume}, e.g. with a lower train.lr)", file=sys.stderr)  # fmt: skip
        sys.exit(NON_FINITE_EXIT_CODE)
    except UserError as err:  # only the project's own errors: anything else is a bug, with its traceback
        sys.exit(f"dist-optical {args.command}: error: {err}")
    except OSError as err:  # a write failure no artifact's writer named (a full disk, permissions)
        failure = write_failure(err, Path(err.filename or "."), "a file")
        if failure is None:
            raise
        sys.exit(f"dist-optical {args.command}: error: {failure}")


def _run(args: argparse.Namespace) -> None:
    from dist_optical.pipeline import run_pipeline

    run_pipeline(load_config(args.config, args.overrides), args.out, args.resume)


def _shard(args: argparse.Namespace) -> None:
    from dist_optical.data import build_shards

    manifest = build_shards(
        args.inputs,
        args.out,
        src_lang=args.src_lang,
        tgt_lang=args.pivot,
        pairs_per_shard=args.pairs_per_shard,
        max_shard_bytes=args.max_shard_bytes,
        max_chars=args.max_chars,
        exclude_books=tuple(args.exclude_books),
        workers=args.workers,
    )
    print(
        f"{manifest['total_pairs']} pairs in {len(manifest['shards'])} shards -> {args.out / 'manifest.json'}"
    )


def _train(args: argparse.Namespace) -> None:
    from dist_optical.train import train

    summary = train(load_config(args.config, args.overrides), args.out, args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))


def _eval(args: argparse.Namespace) -> None:
    from dist_optical.eval.evaluator import format_table
    from dist_optical.eval.metrics import evaluate_parallel
    from dist_optical.files import read_lines, write_json
    from dist_optical.models.encoder import Encoder
    from dist_optical.models.package import exported_meta

    check_eval_options(args)
    # An exported student says how it was trained to encode: prefix, pooling, truncation.
    meta = exported_meta(args.model)
    settings = {
        "max_length": args.max_length or meta.get("max_length", 0),
        "pooling": meta.get("pooling", "mean"),
        "prefix": meta.get("prefix", "") if args.prefix is None else args.prefix,
    }
    queries, targets = read_lines(args.queries, args.max_pairs), read_lines(args.targets, args.max_pairs)
    for path, lines in ((args.queries, queries), (args.targets, targets)):
        if not lines:
            raise UserError(f"{path}: is empty; expected one sentence a line")
    if len(queries) != len(targets):
        raise UserError(f"{args.queries} has {len(queries)} lines but {args.targets} has {len(targets)}")
    model = Encoder.load(args.model, **settings)
    target_name = args.target_model or meta.get("teacher") or args.model
    target_model = model if target_name == args.model else Encoder.load(target_name, **settings)
    widths = (model.model.config.hidden_size, target_model.model.config.hidden_size)
    if widths[0] != widths[1]:
        raise UserError(
            f"--model {args.model} embeds in {widths[0]} dimensions but the targets' model {target_name} in "
            f"{widths[1]}: their embeddings cannot be compared (pass a --target-model of the same width)"
        )
    results = evaluate_parallel(model.embed(queries), target_model.embed(targets))
    print(f"queries {args.queries.name} by {args.model}; targets {args.targets.name} by {target_name}")
    print(format_table({args.model: {args.queries.stem: results}}, "src->tgt"))
    print(format_table({args.model: {args.queries.stem: results}}, "tgt->src"))
    if args.json:
        write_json(args.json, results, "the evaluation results")


def check_eval_options(args: argparse.Namespace) -> None:
    """`eval`'s numbers and paths, checked like config values: before any model is loaded."""
    if args.max_length is not None and args.max_length < 2:
        raise UserError(f"command line (--max-length {args.max_length}): expected >= 2 tokens (room for "
                        "the special tokens), or leave it out for the model's own")  # fmt: skip
    if args.max_pairs < 0:
        raise UserError(f"command line (--max-pairs {args.max_pairs}): expected >= 0 (0 = all)")
    if args.json is not None and args.json.is_dir():
        raise UserError(f"command line (--json {args.json}): is a folder; expected a file path to write")


def _export(args: argparse.Namespace) -> None:
    from dist_optical.files import hold_lock
    from dist_optical.train.export import export_checkpoint

    ckpt = args.checkpoint
    run_dir = ckpt.parent if ckpt.name == "checkpoints" else ckpt.parent.parent
    # Not while that run's main rank is training (or another export is writing).
    locks = run_dir / "locks"
    with hold_lock(locks / "rank0.lock", "export") if locks.is_dir() else contextlib.nullcontext():
        print(export_checkpoint(ckpt, args.out))


def _submit(args: argparse.Namespace) -> None:
    from dist_optical.launch.submit import main as submit_main

    submit_main(args)


def _compare(args: argparse.Namespace) -> None:
    if args.reuse is not None and not args.reuse.is_file():
        raise UserError(f"command line (--reuse {args.reuse}): no such file")
    if args.reuse is None and args.publish is not None and (args.publish / "results.json").is_file():
        # What was published is finished work: the same command continues it from a fresh clone.
        args.reuse = args.publish / "results.json"
    if args.cluster is not None:
        from dist_optical.compare.dispatch import main as dispatch_main

        dispatch_main(args)
        return
    from dist_optical.compare import run_compare

    if args.stop_after < 0:
        raise UserError(f"command line (--stop-after {args.stop_after}): expected minutes >= 0")
    run_compare(args.config, args.out, args.publish, args.stop_after * 60, args.reuse)


COMMANDS = {
    "run": _run,
    "shard": _shard,
    "train": _train,
    "eval": _eval,
    "export": _export,
    "submit": _submit,
    "compare": _compare,
}
