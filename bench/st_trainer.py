"""dist-optical against sentence-transformers' own trainer: the same student, data, batch and
objective (MSE distillation, Reimers & Gurevych 2020), trained side by side in one run.

    python bench/st_trainer.py                 # 5 warm-up + 40 measured steps per side (~7 min, 2 cores)
    python bench/st_trainer.py --steps 10 --warmup 2   # a smoke run

The frozen teacher (multilingual-e5-small, mean pooling, max_length 64, no prefix) embeds the
English side of Swahili-English New Testament verse pairs (REV held out); the student, initialised
from the same e5 weights, is trained so that its mean-pooled embedding of the Swahili side matches
the teacher's English embedding. Batch 16, the lr / warm-up / weight decay / clipping of
configs/default.yaml (and TrainConfig's defaults), AdamW, fp32, CPU, no evaluation, no checkpoint
inside the timed steps. The sides run one after the other (never at once), each in its own process
with the same torch thread count:

1. dist-optical, trimmed vocabulary (`model.trim_vocab=true`, the default): a real
   `python -m dist_optical train --config configs/default.yaml loss={mse: 1.0} ...` run, Swahili only;
2. dist-optical, full vocabulary (`model.trim_vocab=false`: the full 250k-row embedding table,
   what the sentence-transformers trainer trains);
3. sentence-transformers: `SentenceTransformerTrainer` + `losses.MSELoss`, the student a
   `SentenceTransformer` of `Transformer(local e5 folder) + Pooling("mean")`; the teacher
   embeddings precomputed as its docs show (`datasets.Dataset.map` with `teacher.encode` into a
   `label` column), and timed separately. Run once per `--st-optims` entry: by default with the
   trainer's own default optimizer (`adamw_torch_fused`), then with `adamw_torch` (unfused torch
   AdamW, the kernel DeepSpeed's `torch_adam` runs), so the optimizer's share is visible.

What a step's time covers. dist-optical (`samples_per_s` in RUN/metrics.jsonl): fetching the
batch from its loader (tokenized in a DataLoader worker), the teacher's English side (read from
the teacher cache with today's default `train.teacher_cache: fp16`, which is built once before the
timed steps, like ST's precomputed labels; live with `none`), student forward + backward, the
DeepSpeed (ZeRO-1, fused AdamW) optimizer step, the loss
`.item()`. sentence-transformers: the time between consecutive `on_step_end` callbacks: fetching the
batch (tokenized by the collator in the main process), student forward + backward, clipping,
optimizer + scheduler step, zero_grad and the Trainer's per-step logging; the teacher is NOT in it
(it was precomputed). So "training steps only" compares ST without its teacher against dist-optical
with it; "including teacher embeddings" adds ST's measured teacher-embedding time per sample to its
steps, which is the like-for-like figure. The first `--warmup` steps of each side are left out.

Writes bench/results/st_trainer.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "default.yaml"
LANG = "swh"
FILES = ["bible/Swahili-NT.xml", "bible/English-KJV-NT.xml"]
TEACHER = "multilingual-e5-small"
MAX_LENGTH = 64


def child_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
    )
    return env


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def train_settings() -> dict:
    """lr, warm-up, clipping, weight decay, batch, seed as dist-optical resolves them from the config."""
    sys.path.insert(0, str(REPO))
    from dist_optical.config import load_config

    cfg = load_config(CONFIG, [])
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
        "data_root": str((REPO / cfg.data.root).resolve())
        if not Path(cfg.data.root).is_absolute()
        else cfg.data.root,
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


# ---------------------------------------------------------------------------------------- dist-optical


def dist_optical_overrides(total_steps: int, trim: bool) -> list[str]:
    return [
        "loss={mse: 1.0}",
        f"train.max_steps={total_steps}",
        "train.eval_every=0",
        "train.save_every=0",
        f"data.bitexts=[{{lang: {LANG}, files: [{', '.join(FILES)}]}}]",
        f"model.trim_vocab={'true' if trim else 'false'}",
    ]


def run_dist_optical(total_steps: int, warmup: int, trim: bool, threads: int, tmp: Path) -> dict:
    out = tmp / f"dist-optical-{'trimmed' if trim else 'full'}"
    cmd = [
        sys.executable,
        "-m",
        "dist_optical",
        "train",
        "--config",
        str(CONFIG.relative_to(REPO)),
        "--out",
        str(out),
        *dist_optical_overrides(total_steps, trim),
    ]
    load_before, t0 = load1(), time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(threads), cwd=REPO, capture_output=True, text=True)
    wall, load_after = time.perf_counter() - t0, load1()
    if proc.returncode != 0:
        raise RuntimeError(f"dist-optical ({'trimmed' if trim else 'full'}) failed:\n{proc.stderr[-4000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(metrics) != total_steps:
        raise RuntimeError(
            f"dist-optical wrote {len(metrics)} steps to metrics.jsonl, expected {total_steps}"
        )
    timed = metrics[warmup:]
    seconds = [1.0 / m["samples_per_s"] for m in timed]  # seconds per sample, each step
    batch = 16  # checked below against the config
    kept = None
    vocab_file = out / "vocab.json"
    if vocab_file.is_file():
        with contextlib.suppress(Exception):
            kept = int(json.loads(vocab_file.read_text())["rows"])
    return {
        "side": f"dist-optical, {'trimmed' if trim else 'full'} vocabulary",
        "command": shlex.join(["dist-optical", *cmd[3:7], "DIR", *cmd[8:]]),
        "trim_vocab": trim,
        "kept_vocab_rows": kept,
        "steps_total": total_steps,
        "steps_measured": len(timed),
        "samples_per_s_median": statistics.median(m["samples_per_s"] for m in timed),
        # all measured samples / all measured seconds (each step's seconds per sample, summed)
        "samples_per_s_mean": len(timed) / sum(seconds),
        "step_s_median": statistics.median(batch / m["samples_per_s"] for m in timed),
        "loss_first": metrics[0]["loss"],
        "loss_last5": statistics.mean(m["loss"] for m in metrics[-5:]),
        "peak_rss_mib": metrics[-1].get("mem/peak_rss_mib"),
        "wall_s": wall,
        "load1_before": load_before,
        "load1_after": load_after,
        "includes": "loader fetch (tokenized in 1 DataLoader worker) + teacher forward (live) + student "
        "forward/backward + DeepSpeed ZeRO-1 AdamW step + loss .item()",
    }


# ----------------------------------------------------------------------------- sentence-transformers


def st_worker(args: argparse.Namespace) -> None:
    """The sentence-transformers side, in its own process; writes its result JSON to ``args.result``."""
    import torch

    torch.set_num_threads(args.threads)
    import numpy as np
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import TrainerCallback

    from dist_optical.models import resolve_model_path

    job = json.loads(Path(args.job).read_text())
    s, path = job["settings"], str(resolve_model_path(TEACHER))
    total = job["total_steps"]

    def build() -> SentenceTransformer:
        # No pooler: e5 ships none and the output is mean pooling (dist-optical loads the same way).
        word = Transformer(path, max_seq_length=MAX_LENGTH, model_kwargs={"add_pooling_layer": False})
        return SentenceTransformer(
            modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu"
        )

    teacher = build()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build()

    # --- teacher embeddings, as the MSELoss docs show (timed separately) ---
    foreign, english = [p[0] for p in job["pairs"]], [p[1] for p in job["pairs"]]
    load_teacher_before = load1()
    t0 = time.perf_counter()
    dataset = Dataset.from_dict({"english": english, "text": foreign})

    def compute_labels(batch):
        return {
            "label": teacher.encode(
                batch["english"], batch_size=s["micro_batch_size"], show_progress_bar=False
            )
        }

    dataset = dataset.map(compute_labels, batched=True).remove_columns("english")  # columns: text, label
    teacher_s = time.perf_counter() - t0

    # Agreement check (not timed): ST's teacher embedding = dist-optical's encode of the same text.
    from dist_optical.data.collate import tokenize
    from dist_optical.models import encode, load_tokenizer, special_ids

    tok = load_tokenizer(TEACHER)
    ids = tokenize(tok, english[:16], MAX_LENGTH, s["prefix"])
    with torch.no_grad():
        ours = encode(teacher[0].auto_model, ids["input_ids"], ids["attention_mask"], special_ids(tok)).pooled
    theirs = torch.tensor(np.asarray(dataset[:16]["label"]), dtype=torch.float32)
    teacher_max_abs_diff = float((ours - theirs).abs().max())

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends, self.begins, self.computes, self.losses = [], [], [], []

        def on_train_begin(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_step_begin(self, args, state, control, **kw):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.computes.append(now - self.begins[-1])
            self.ends.append(now)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=out,
            max_steps=total,
            per_device_train_batch_size=s["micro_batch_size"],
            learning_rate=s["lr"],
            warmup_steps=s["warmup_steps"],
            lr_scheduler_type="linear",  # DeepSpeed's WarmupDecayLR: linear warm-up, linear decay to 0
            weight_decay=s["weight_decay"],
            max_grad_norm=s["grad_clip"],
            optim=args.st_optim,
            seed=s["seed"],
            use_cpu=True,
            bf16=False,
            fp16=False,
            dataloader_drop_last=True,
            dataloader_num_workers=0,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=1,
            report_to="none",
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=student,
            args=training_args,
            train_dataset=dataset,
            loss=losses.MSELoss(student),
            callbacks=[timer],
        )
        load_before = load1()
        t0 = time.perf_counter()
        trainer.train()
        train_wall = time.perf_counter() - t0
        load_after = load1()

    steps = [b - a for a, b in zip(timer.ends[:-1], timer.ends[1:], strict=True)]
    if len(steps) != total:
        raise RuntimeError(f"sentence-transformers ran {len(steps)} steps, expected {total}")
    timed, computes = steps[job["warmup"] :], timer.computes[job["warmup"] :]
    batch = s["micro_batch_size"]
    n = len(job["pairs"])
    teacher_per_sample = teacher_s / n
    import resource

    result = {
        "side": "sentence-transformers trainer",
        "optim": args.st_optim,
        "steps_total": total,
        "steps_measured": len(timed),
        "samples_per_s_median": statistics.median(batch / t for t in timed),
        "samples_per_s_mean": batch * len(timed) / sum(timed),
        "step_s_median": statistics.median(timed),
        "compute_only_samples_per_s_median": statistics.median(batch / t for t in computes),
        # + the teacher: its measured embedding time per sample, added to every measured step
        "with_teacher_samples_per_s_median": statistics.median(
            batch / (t + batch * teacher_per_sample) for t in timed
        ),
        "with_teacher_samples_per_s_mean": batch
        * len(timed)
        / (sum(timed) + batch * len(timed) * teacher_per_sample),
        "teacher_embedding_s": teacher_s,
        "teacher_embedding_sentences": n,
        "teacher_samples_per_s": n / teacher_s,
        "teacher_embedding_load1_before": load_teacher_before,
        "teacher_max_abs_diff_vs_dist_optical_encode": teacher_max_abs_diff,
        "loss_first": timer.losses[0] if timer.losses else None,
        "loss_last5": statistics.mean(timer.losses[-5:]) if timer.losses else None,
        "trainable_params": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_wall_s": train_wall,
        "load1_before": load_before,
        "load1_after": load_after,
        "threads": torch.get_num_threads(),
        "includes": "steps: on_step_end to on_step_end = batch fetch (collator tokenizes in the main "
        "process) + student forward/backward + clip + AdamW + scheduler + zero_grad + per-step logging; "
        "teacher precomputed (teacher_embedding_s: Dataset.map + teacher.encode, batch 16, "
        "which sorts by length)",
    }
    Path(args.result).write_text(json.dumps(result, indent=2))


def run_st(pairs, settings, total_steps, warmup, threads, optim, tmp: Path) -> dict:
    job, result = tmp / "st-job.json", tmp / "st-result.json"
    job.write_text(
        json.dumps({"pairs": pairs, "settings": settings, "total_steps": total_steps, "warmup": warmup})
    )
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--st-worker",
        "--job",
        str(job),
        "--result",
        str(result),
        "--threads",
        str(threads),
        "--st-optim",
        optim,
    ]
    load_before, t0 = load1(), time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(threads), cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sentence-transformers side failed:\n{proc.stderr[-4000:]}")
    out = json.loads(result.read_text())
    out.update(wall_s=wall, load1_before_process=load_before, load1_after_process=load1())
    return out


# ------------------------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "sentence-transformers", "deepspeed", "datasets", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def dist_optical_setup() -> tuple[str, str]:
    """How configs/default.yaml runs the optimizer and the teacher (the dist-optical rows' labels)."""
    from dist_optical.config import load_config, repo_path

    train = load_config(REPO / "configs" / "default.yaml").train
    ds = json.loads(repo_path(train.deepspeed).read_text())
    fused = " fused" if ds["optimizer"]["params"].get("fused") else ""
    optim = f"DeepSpeed ZeRO-{ds['zero_optimization']['stage']}, torch AdamW{fused}"
    if train.teacher_cache == "none":
        return optim, "live, in the step"
    return optim, f"cache ({train.teacher_cache}), built before the timed steps"


def table(result: dict) -> str:
    sides, r = result["sides"], result["ratios"]
    trim, full = sides["dist_optical_trimmed"], sides["dist_optical_full"]
    lines = [
        "| side | vocabulary | optimizer | teacher | samples/s (median) | samples/s (mean) "
        "| s/step (median) | load1 before → after | dist-optical trimmed / this | dist-optical full / this |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|",
    ]

    def ratio(x):
        return f"{x:.2f}x" if x is not None else ""

    def row(name, vocab, optim, teacher, med, mean, step_s, side, vs_trim=None, vs_full=None):
        lines.append(
            f"| {name} | {vocab} | {optim} | {teacher} | {med:.2f} | {mean:.2f} | {step_s:.3f} "
            f"| {side['load1_before']} → {side['load1_after']} | {ratio(vs_trim)} | {ratio(vs_full)} |"
        )

    ds_optim, teacher = dist_optical_setup()
    row("dist-optical", f"trimmed ({trim['kept_vocab_rows'] or '?'} rows)", ds_optim, teacher,
        trim["samples_per_s_median"], trim["samples_per_s_mean"], trim["step_s_median"], trim)  # fmt: skip
    row("dist-optical", "full (250,037 rows)", ds_optim, teacher, full["samples_per_s_median"],
        full["samples_per_s_mean"], full["step_s_median"], full, r["trimmed_vs_full"])  # fmt: skip
    notes = []
    for key, st in sides.items():
        if not key.startswith("st_"):
            continue
        q = r[key]
        row("sentence-transformers", "full (250,037 rows)", st["optim"], "precomputed, not in the step",
            st["samples_per_s_median"], st["samples_per_s_mean"], st["step_s_median"], st,
            q["trimmed_vs_steps_only"], q["full_vs_steps_only"])  # fmt: skip
        per = st["teacher_embedding_s"] / st["teacher_embedding_sentences"]
        row("sentence-transformers", "full (250,037 rows)", st["optim"], "precomputed, its time added",
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
    lines += [
        "",
        f"dist-optical MSE first step → mean of the last 5: trimmed {trim['loss_first']:.5f} → "
        f"{trim['loss_last5']:.5f}, full {full['loss_first']:.5f} → {full['loss_last5']:.5f}.",
        *notes,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=5, help="steps run first and left out of the figures")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS) for every side"
    )
    parser.add_argument(
        "--st-optims",
        default="adamw_torch_fused,adamw_torch",
        help="the ST trainer's optimizers, one ST run each (default: its own default, fused, then "
        "adamw_torch: torch AdamW unfused, the kernel DeepSpeed's torch_adam runs)",
    )
    parser.add_argument("--st-optim", help=argparse.SUPPRESS)  # the worker's one optimizer
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "st_trainer.json")
    parser.add_argument("--st-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.st_worker:
        st_worker(args)
        return

    os.environ.update(child_env(args.threads))
    started = dt.datetime.now().astimezone()
    settings = train_settings()
    if settings["micro_batch_size"] != 16:
        raise SystemExit(
            f"configs/default.yaml: micro_batch_size {settings['micro_batch_size']}, expected 16"
        )
    total = args.warmup + args.steps
    pairs = first_pairs(settings, total * settings["micro_batch_size"])
    load_start = load1()
    sides = {}
    with tempfile.TemporaryDirectory(prefix="st-bench-") as tmp:
        for key, trim in (("dist_optical_trimmed", True), ("dist_optical_full", False)):
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {total} steps, load1 {load1()}", flush=True)
            sides[key] = run_dist_optical(total, args.warmup, trim, args.threads, Path(tmp))
            side = sides[key]
            print(f"  {side['samples_per_s_median']:.2f} samples/s (median), wall {side['wall_s']:.0f} s")
        for optim in [o.strip() for o in args.st_optims.split(",") if o.strip()]:
            key = f"st_{optim}"
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {total} steps, load1 {load1()}", flush=True)
            sides[key] = run_st(pairs, settings, total, args.warmup, args.threads, optim, Path(tmp))
            side = sides[key]
            print(f"  {side['samples_per_s_median']:.2f} samples/s (median), wall {side['wall_s']:.0f} s")
    trim = sides["dist_optical_trimmed"]["samples_per_s_median"]
    full = sides["dist_optical_full"]["samples_per_s_median"]
    # dist-optical's samples/s over the other side's (medians): > 1 means dist-optical is faster
    ratios = {"trimmed_vs_full": trim / full}
    for key, side in sides.items():
        if key.startswith("st_"):
            steps_only, with_teacher = side["samples_per_s_median"], side["with_teacher_samples_per_s_median"]
            ratios[key] = {
                "trimmed_vs_steps_only": trim / steps_only,
                "full_vs_steps_only": full / steps_only,
                "trimmed_vs_with_teacher": trim / with_teacher,
                "full_vs_with_teacher": full / with_teacher,
            }
    result = {
        "command": " ".join(["python", "bench/st_trainer.py", *sys.argv[1:]]),
        "date": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load1_start": load_start,
            "load1_end": load1(),
            "loadavg_end": list(os.getloadavg()),
        },
        "versions": versions(),
        "threads": args.threads,
        "batch": settings["micro_batch_size"],
        "max_length": MAX_LENGTH,
        "steps_warmup": args.warmup,
        "steps_measured": args.steps,
        "data": {
            "lang": LANG,
            "files": FILES,
            "exclude_books": settings["exclude_books"],
            "st_pairs": f"the first {len(pairs)} pairs (read_bitext order), shuffled by the trainer",
            "dist_optical_pairs": "its shuffled stream over the same bitext",
        },
        "settings": settings,
        "ratios": ratios,
        "sides": sides,
    }
    result["table"] = table(result)
    print()
    print(result["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = args.out.with_suffix(".json.tmp")
    tmp_file.write_text(json.dumps(result, indent=2) + "\n")
    tmp_file.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
