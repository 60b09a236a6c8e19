"""dist-optical against sentence-transformers' own trainer: the same student, data, batch and
objective (MSE distillation, Reimers & Gurevych 2020), trained side by side in one run.

    python bench/st_trainer.py           # 3 rounds of every side, 3 warm-up + 15 measured steps each
    python bench/st_trainer.py --quick   # configs/tiny.yaml's tiny BERT, 2 rounds of 1 + 3 steps

The sentence-transformers side runs in its own process (`st_side.py`).

The frozen teacher (multilingual-e5-small) embeds the English side of Swahili-English NT pairs
(REV held out); the student, initialised from it, learns to match it from the Swahili side. Batch
16, max_length 64, fp32, CPU, configs/default.yaml's AdamW settings. The sides run one after the
other, each in its own process on the same thread count, once per round (`--rounds`, the order
rotated each round); every figure is the median of the rounds', and every ratio the median of the
rounds' ratios with their spread (one pass on a shared machine is partly noise):

1. dist-optical, trimmed vocabulary (the default): a real `python -m dist_optical train` run;
2. dist-optical, full vocabulary (`model.trim_vocab=false`, what ST trains: 250k embedding rows);
3. sentence-transformers, once per `--st-optims` entry (its default `adamw_torch_fused`, then the
   unfused `adamw_torch` DeepSpeed's torch_adam runs): `SentenceTransformerTrainer` +
   `losses.MSELoss`, the teacher's embeddings precomputed into a `label` column as its docs show.

A dist-optical step covers loader fetch, teacher (its cache, built before the timed steps), student
forward + backward, optimizer step and loss `.item()`; an ST step (`on_step_end` to `on_step_end`)
all of that but the precomputed teacher, whose measured time per sample the "its time added" rows
add (the like-for-like figure). The first `--warmup` steps of each side are left out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    REPO,
    TINY,
    Parser,
    Stopwatch,
    bench_encoder,
    child_env,
    environment,
    finish,
    load1,
    markdown_table,
    run_child,
    str_list,
    write_result,
)

from dist_optical.config import load_config, repo_path
from dist_optical.engine.deepspeed import zero_stage

CONFIG = REPO / "configs" / "default.yaml"
LANG = "swh"
FILES = ["bible/Swahili-NT.xml", "bible/English-KJV-NT.xml"]
TEACHER = "multilingual-e5-small"
MAX_LENGTH = 64
FULL_VOCAB = "full (250,037 rows)"
TABLE_COLUMNS = ["side", "vocabulary", "optimizer", "teacher", "samples/s (median)", "samples/s (mean)",
                 "s/step (median)", "load1 before → after", "dist-optical trimmed / this",
                 "dist-optical full / this"]  # fmt: skip


@dataclass(frozen=True)
class Bench:
    """What every side runs with; ``model_path``: the e5 folder, or --quick's tiny random BERT."""

    config: Path
    warmup: int
    steps: int
    threads: int
    quick: bool
    tmp: Path
    settings: dict
    model_path: str

    @property
    def total(self) -> int:
        return self.warmup + self.steps


def train_settings(config: Path) -> dict:
    """lr, warm-up, clipping, weight decay, batch, seed as dist-optical resolves them from the config."""
    cfg = load_config(config)
    t = cfg.train
    return {
        "micro_batch_size": t.micro_batch_size,
        "lr": t.lr,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "grad_clip": t.grad_clip,
        "seed": t.seed,
        "zero_config": t.deepspeed,
        "exclude_books": list(cfg.data.exclude_books),
        "data_root": str(repo_path(cfg.data.root)),
        "num_workers": cfg.data.num_workers,
        "pooling": cfg.model.pooling,
        "max_length": cfg.model.max_length,
        "prefix": cfg.model.prefix,
    }


def first_pairs(settings: dict, count: int) -> list[tuple[str, str]]:
    """The first ``count`` (Swahili, English) pairs of the bitext dist-optical trains on (REV held out)."""
    from dist_optical.data import read_bitext

    root = Path(settings["data_root"])
    pairs = []
    for pair in read_bitext([root / f for f in FILES], settings["exclude_books"]):
        pairs.append((pair.src, pair.tgt))
        if len(pairs) == count:
            return pairs
    raise SystemExit(f"only {len(pairs)} pairs in {FILES}, {count} needed")


def tiny_model_folder(config: Path, folder: Path) -> str:
    """--quick: the tiny random BERT dist-optical's side builds from `model.tiny`, as a folder for ST."""
    from dist_optical.models import load_tokenizer

    name = load_config(config).model.teacher
    tokenizer = load_tokenizer(name)
    bench_encoder(name, tokenizer, quick=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def side_figures(metrics: list[dict], warmup: int, batch: int) -> dict:
    """Throughput over the steps after ``warmup`` and the MSE's course, from RUN/metrics.jsonl."""
    timed = metrics[warmup:]
    return {
        "steps_measured": len(timed),
        "samples_per_s_median": statistics.median(m["samples_per_s"] for m in timed),
        "samples_per_s_mean": len(timed) / sum(1.0 / m["samples_per_s"] for m in timed),  # samples / seconds
        "step_s_median": statistics.median(batch / m["samples_per_s"] for m in timed),
        "loss_first": metrics[0]["loss"],
        "loss_last5": statistics.mean(m["loss"] for m in metrics[-5:]),
        "peak_rss_mib": metrics[-1].get("mem/peak_rss_mib"),
    }


def run_dist_optical(bench: Bench, trim: bool, round_: int) -> dict:
    """A real `python -m dist_optical train` run of the MSE objective, Swahili only, fp32 and
    MAX_LENGTH tokens as the ST side (whatever the config's default)."""
    vocab = "trimmed" if trim else "full"
    out = bench.tmp / f"dist-optical-{vocab}-round{round_}"
    cmd = [sys.executable, "-m", "dist_optical", "train", "--config", os.path.relpath(bench.config, REPO),
           "--out", str(out), "loss={mse: 1.0}", f"train.max_steps={bench.total}", "train.eval_every=0",
           "train.save_every=0", "train.precision=fp32", f"model.max_length={MAX_LENGTH}",
           f"data.bitexts=[{{lang: {LANG}, files: [{', '.join(FILES)}]}}]",
           f"model.trim_vocab={'true' if trim else 'false'}"]  # fmt: skip
    if bench.quick:  # its shards and teacher cache in the temp folder, never in shards/
        cmd.append(f"data.shards={bench.tmp / 'shards'}")
    load_before, watch = load1(), Stopwatch()
    run_child(cmd, bench.threads, f"dist-optical ({vocab})")
    wall, load_after = watch.lap("run"), load1()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(metrics) != bench.total:
        raise RuntimeError(
            f"dist-optical wrote {len(metrics)} steps to metrics.jsonl, expected {bench.total}"
        )
    kept = None
    with contextlib.suppress(Exception):
        kept = int(json.loads((out / "vocab.json").read_text())["rows"])
    return {
        "side": f"dist-optical, {vocab} vocabulary",
        "command": shlex.join(["dist-optical", *cmd[3:7], "DIR", *cmd[8:]]),
        "trim_vocab": trim,
        "kept_vocab_rows": kept,
        "steps_total": bench.total,
        **side_figures(metrics, bench.warmup, bench.settings["micro_batch_size"]),
        "wall_s": wall,
        "load1_before": load_before,
        "load1_after": load_after,
        "includes": "loader fetch (tokenized in 1 DataLoader worker) + teacher forward (live) + student "
        "forward/backward + DeepSpeed AdamW step (ZeRO-0: one rank) + loss .item()",
    }


def run_st(bench: Bench, pairs: list[tuple[str, str]], optim: str) -> dict:
    job, result = bench.tmp / "st-job.json", bench.tmp / "st-result.json"
    job.write_text(json.dumps({
        "pairs": pairs, "settings": bench.settings, "total_steps": bench.total, "warmup": bench.warmup,
        "model_path": bench.model_path, "optim": optim, "max_length": MAX_LENGTH, "threads": bench.threads,
        "result": str(result),
    }))  # fmt: skip
    load_before, watch = load1(), Stopwatch()
    run_child([sys.executable, str(Path(__file__).with_name("st_side.py")), str(job)], bench.threads,
              "sentence-transformers side")  # fmt: skip
    out = json.loads(result.read_text())
    out.update(wall_s=watch.lap("run"), load1_before_process=load_before, load1_after_process=load1())
    return out


def run_rounds(bench: Bench, pairs: list[tuple[str, str]], st_optims: list[str], rounds: int) -> list[dict]:
    """Every side once per round (never two at once), the order rotated each round: a drift of the
    shared machine's load hits every side, and each round gives its own ratios."""
    runs = {"dist_optical_trimmed": lambda round_: run_dist_optical(bench, True, round_),
            "dist_optical_full": lambda round_: run_dist_optical(bench, False, round_)}  # fmt: skip
    runs.update({f"st_{optim}": (lambda _, optim=optim: run_st(bench, pairs, optim)) for optim in st_optims})
    keys, per_round = list(runs), []
    for round_ in range(rounds):
        sides = {}
        for key in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]:
            print(f"[{time.strftime('%H:%M:%S')}] round {round_ + 1}/{rounds} {key}: {bench.total} steps, "
                  f"load1 {load1()}", flush=True)  # fmt: skip
            side = sides[key] = runs[key](round_)
            print(f"  {side['samples_per_s_median']:.2f} samples/s (median), wall {side['wall_s']:.0f} s")
        per_round.append({key: sides[key] for key in keys})
    return per_round


def ratios(sides: dict[str, dict]) -> dict:
    """dist-optical's samples/s over the other side's (medians): > 1 means dist-optical is faster."""
    trim = sides["dist_optical_trimmed"]["samples_per_s_median"]
    full = sides["dist_optical_full"]["samples_per_s_median"]
    out: dict = {"trimmed_vs_full": trim / full}
    for key, side in sides.items():
        if key.startswith("st_"):
            steps_only, with_teacher = side["samples_per_s_median"], side["with_teacher_samples_per_s_median"]
            out[key] = {
                "trimmed_vs_steps_only": trim / steps_only,
                "full_vs_steps_only": full / steps_only,
                "trimmed_vs_with_teacher": trim / with_teacher,
                "full_vs_with_teacher": full / with_teacher,
            }
    return out


def combine(per_round: list[dict]) -> tuple[dict, dict]:
    """The sides over all rounds (each figure the median of its rounds', the load from the first
    round's start to the last's end) and the ratios: each the median of the rounds' ratios, with
    ``spread`` [min, max] and ``rounds``, the list."""
    sides = {}
    for key, first in per_round[0].items():
        rounds = [r[key] for r in per_round]
        side = dict(first, rounds=len(rounds), load1_after=rounds[-1]["load1_after"])
        for field, value in first.items():
            if field.endswith(("_median", "_mean")) and isinstance(value, float):
                side[field] = statistics.median(r[field] for r in rounds)
        side["samples_per_s_rounds"] = [r["samples_per_s_median"] for r in rounds]
        sides[key] = side
    each = [ratios(r) for r in per_round]

    def summary(values: list[float]) -> dict:
        return {"median": statistics.median(values), "spread": [min(values), max(values)], "rounds": values}

    out: dict = {"trimmed_vs_full": summary([r["trimmed_vs_full"] for r in each])}
    for key in sides:
        if key.startswith("st_"):
            out[key] = {name: summary([r[key][name] for r in each]) for name in each[0][key]}
    return sides, out


def medians(summaries: dict) -> dict:
    """`combine`'s ratios as their medians over the rounds, in `ratios`'s shape."""
    return {key: value["median"] if "median" in value else medians(value) for key, value in summaries.items()}


def dist_optical_setup(config: Path) -> tuple[str, str]:
    """How the config runs the optimizer and the teacher (the dist-optical rows' labels)."""
    train = load_config(config).train
    ds = json.loads(repo_path(train.deepspeed).read_text())
    fused = " fused" if ds["optimizer"]["params"].get("fused") else ""
    stage = zero_stage(ds.get("zero_optimization", {}), 1, "fp32")  # the sides: one rank, fp32
    optim = f"DeepSpeed ZeRO-{stage}, torch AdamW{fused}"
    if train.teacher_cache == "none":
        return optim, "live, in the step"
    return optim, f"cache ({train.teacher_cache}), built before the timed steps"


def table(result: dict) -> str:
    sides, r = result["sides"], medians(result["ratios"])
    trim, full = sides["dist_optical_trimmed"], sides["dist_optical_full"]
    ds_optim, teacher = dist_optical_setup(REPO / result["config"])
    rows = []

    def row(name, vocab, optim, teacher, med, mean, step_s, side, *ratios):
        rows.append([name, vocab, optim, teacher, f"{med:.2f}", f"{mean:.2f}", f"{step_s:.3f}",
                     f"{side['load1_before']} → {side['load1_after']}",
                     *(f"{x:.2f}x" for x in ratios), *[""] * (2 - len(ratios))])  # fmt: skip

    row("dist-optical", f"trimmed ({trim['kept_vocab_rows'] or '?'} rows)", ds_optim, teacher,
        trim["samples_per_s_median"], trim["samples_per_s_mean"], trim["step_s_median"], trim)  # fmt: skip
    row("dist-optical", FULL_VOCAB, ds_optim, teacher, full["samples_per_s_median"],
        full["samples_per_s_mean"], full["step_s_median"], full, r["trimmed_vs_full"])  # fmt: skip
    notes = []
    for key, st in sides.items():
        if not key.startswith("st_"):
            continue
        q, per = r[key], st["teacher_embedding_s"] / st["teacher_embedding_sentences"]
        row("sentence-transformers", FULL_VOCAB, st["optim"], "precomputed, not in the step",
            st["samples_per_s_median"], st["samples_per_s_mean"], st["step_s_median"], st,
            q["trimmed_vs_steps_only"], q["full_vs_steps_only"])  # fmt: skip
        row("sentence-transformers", FULL_VOCAB, st["optim"], "precomputed, its time added",
            st["with_teacher_samples_per_s_median"], st["with_teacher_samples_per_s_mean"],
            st["step_s_median"] + per * result["batch"], st,
            q["trimmed_vs_with_teacher"], q["full_vs_with_teacher"])  # fmt: skip
        notes.append(
            f"ST ({st['optim']}): teacher embedding {st['teacher_embedding_sentences']} English sentences in "
            f"{st['teacher_embedding_s']:.1f} s ({st['teacher_samples_per_s']:.1f}/s, load1 "
            f"{st['teacher_embedding_load1_before']} before); its teacher vs dist-optical's encode max "
            f"|Δ| {st['teacher_max_abs_diff_vs_dist_optical_encode']:.1e}; MSE {st['loss_first']:.5f} → "
            f"{st['loss_last5']:.5f} (first step → mean of the last 5); {st['trainable_params']:,} "
            "trainable parameters."
        )
    return "\n".join([
        markdown_table(TABLE_COLUMNS, rows, align="llllrrrlrr"),
        "",
        f"dist-optical MSE first step → mean of the last 5: trimmed {trim['loss_first']:.5f} → "
        f"{trim['loss_last5']:.5f}, full {full['loss_first']:.5f} → {full['loss_last5']:.5f}.",
        *notes,
        *spread_lines(result["ratios"], trim["rounds"]),
    ])  # fmt: skip


def spread_lines(ratios_: dict, rounds: int) -> list[str]:
    """Each ST side's ratios as "median [min, max]" over the rounds."""
    names = {"full_vs_steps_only": "full vocabulary, ST steps only",
             "full_vs_with_teacher": "full vocabulary, ST with its teacher time",
             "trimmed_vs_steps_only": "trimmed, ST steps only",
             "trimmed_vs_with_teacher": "trimmed, ST with its teacher time"}  # fmt: skip
    lines = []
    for key, value in ratios_.items():
        if key.startswith("st_"):
            parts = [f"{names[n]} {v['median']:.2f}x [{v['spread'][0]:.2f}, {v['spread'][1]:.2f}]"
                     for n, v in value.items()]  # fmt: skip
            lines.append(
                f"dist-optical / {key[3:]} over {rounds} rounds, median [min, max]: " + "; ".join(parts) + "."
            )
    return lines


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--steps", type=int, default=15, help="measured steps per side and round")
    parser.add_argument("--warmup", type=int, default=3, help="steps run first and left out of the figures")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS), every side")
    parser.add_argument(
        "--st-optims",
        type=str_list,
        default=["adamw_torch_fused"],
        help="the ST trainer's optimizers, one ST run each (adamw_torch: the unfused one)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="every side once a round, order rotated")
    args = parser.parse(warmup=1, steps=3, threads=1, st_optims=["adamw_torch"], rounds=2)
    os.environ.update(child_env(args.threads))
    config = TINY if args.quick else CONFIG
    settings = train_settings(config)
    if not args.quick and settings["micro_batch_size"] != 16:
        raise SystemExit(f"{config.name}: micro_batch_size {settings['micro_batch_size']}, expected 16")
    env = environment()
    with tempfile.TemporaryDirectory(prefix="st-bench-") as tmp:
        if args.quick:
            model_path = tiny_model_folder(config, Path(tmp) / "tiny-model")
        else:
            from dist_optical.models import resolve_model_path

            model_path = str(resolve_model_path(TEACHER))
        bench = Bench(
            config, args.warmup, args.steps, args.threads, args.quick, Path(tmp), settings, model_path
        )
        pairs = first_pairs(settings, bench.total * settings["micro_batch_size"])
        sides, ratio = combine(run_rounds(bench, pairs, args.st_optims, args.rounds))
    result = {
        "env": finish(env),
        "config": os.path.relpath(config, REPO),
        "quick": args.quick,
        "threads": args.threads,
        "batch": settings["micro_batch_size"],
        "max_length": MAX_LENGTH,
        "steps_warmup": args.warmup,
        "steps_measured": args.steps,
        "rounds": args.rounds,
        "data": {
            "lang": LANG,
            "files": FILES,
            "exclude_books": settings["exclude_books"],
            "st_pairs": f"the first {len(pairs)} pairs (read_bitext order), shuffled by the trainer",
            "dist_optical_pairs": "its shuffled stream over the same bitext",
        },
        "settings": settings,
        "ratios": ratio,
        "sides": sides,
    }
    result["table"] = table(result)
    print()
    print(result["table"])
    write_result(args, "st_trainer.json", result)


if __name__ == "__main__":
    main()
