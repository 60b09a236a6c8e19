"""Training throughput, in one run: first the anatomy of one step in one process for the default and
for each of its settings changed one at a time (bench/anatomy.py: phase shares, padding, real-token
FLOP/s against the matmul rate measured in the same process), then throughput and per-rank memory
for ZeRO 0/1/2/3 at 2 ranks and the trimmed student vocabulary against the full one.

    python bench/train.py            # default config: multilingual-e5-small, four languages, 2 CPU ranks
    python bench/train.py --quick    # configs/tiny.yaml, 1 anatomy row + ZeRO-1, 3 steps: a smoke run
    python bench/train.py --config configs/minilm.yaml   # the English-vocabulary path
    python bench/train.py --skip-zero                    # the anatomy table only (train-anatomy.json)

Each row is a real `torchrun --nproc_per_node 2 -m dist_optical train` run; figures come
from its metrics.jsonl: samples/s (median over steps after the first `--skip`), and each rank's
share of parameters and optimizer state and its peak RSS (mean over ranks). The last row is
ZeRO-1 with `model.trim_vocab=false` (every one of the tokenizer's embedding rows trained).
Writes bench/results/train.json (or train-NAME.json for another config; --quick: a temp folder, or
--out) and prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    REPO,
    TINY,
    Stopwatch,
    child_env,
    environment,
    finish,
    markdown_table,
    result_path,
    write_result,
)

from dist_optical.config import load_config
from dist_optical.engine.dist import free_port

# The anatomy rows: today's default, then the default with one setting changed at a time: what each
# of its choices costs or saves per step.
UNFUSED = "UNFUSED"  # stands for a copy of the run's DeepSpeed JSON without "fused" (made by main)
ANATOMY = [
    ("default: bf16, InfoNCE + MSE + English, live teacher, 128 tokens", ()),
    ("at 64 tokens (the old truncation)", ("model.max_length=64",)),
    ("in fp32", ("train.precision=fp32",)),
    ("without the English term", ("loss={contrastive: 1.0, mse: 100.0}",)),
    ("padded (no length grouping)", ("data.length_window=0",)),
    ("unfused AdamW", (UNFUSED,)),
    ("ZeRO-0 (one process)", ("train.deepspeed=configs/ds/zero0.json",)),
    ("1 intra-op thread", ("OMP_NUM_THREADS=1",)),
    ("full vocabulary", ("model.trim_vocab=false",)),
]
# ZeRO stage, student vocabulary, overrides: each a real 2-rank run.
ZERO = [*((stage, "trimmed", ("model.trim_vocab=true",)) for stage in (0, 1, 2, 3)),
        (1, "full", ("model.trim_vocab=false",))]  # fmt: skip
PHASES = ("data", "teacher forward", "student forward", "loss", "backward", "optimizer step")
ANATOMY_COLUMNS = ["configuration", "s/step", "samples/s", "vs default", "padding", *PHASES,
                   "real GFLOP/s", "matmul peak GFLOP/s", "real / peak"]  # fmt: skip
ZERO_COLUMNS = ["ZeRO", "student vocabulary", "samples/s", "params MiB/rank", "optimizer MiB/rank",
                "(params+opt) vs ZeRO-0", "peak RSS MiB/rank"]  # fmt: skip


def run_stage(
    stage: int, config: Path, steps: int, out: Path, threads: int, overrides: tuple[str, ...] = ()
) -> list[dict]:
    """One real `torchrun --nproc_per_node 2` training run at ZeRO ``stage``: its metrics.jsonl."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "dist_optical", "train", "--config", str(config), "--out", str(out),
           f"train.max_steps={steps}", "train.warmup_steps=1", f"train.deepspeed=configs/ds/zero{stage}.json",
           *overrides]  # fmt: skip
    proc = subprocess.run(cmd, env=child_env(threads), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ZeRO-{stage} run failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_anatomy(config: Path, steps: int, skip: int, overrides: tuple[str, ...], threads: int) -> dict:
    """bench/anatomy.py in a fresh process (its own torch.distributed init and memory), on
    ``threads`` intra-op threads unless an OMP_NUM_THREADS=N override says otherwise."""
    threads = next((o.split("=")[1] for o in overrides if o.startswith("OMP_NUM_THREADS=")), threads)
    config_overrides = [o for o in overrides if not o.startswith("OMP_NUM_THREADS=")]
    cmd = [sys.executable, str(REPO / "bench" / "anatomy.py"), "--config", str(config), "--steps", str(steps),
           "--skip", str(skip), *config_overrides]  # fmt: skip
    proc = subprocess.run(cmd, env=child_env(threads), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"anatomy {overrides} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unfused_copy(config: Path, folder: Path) -> Path:
    """The config's DeepSpeed JSON without torch's fused AdamW (the "unfused AdamW" row)."""
    ds = json.loads((REPO / load_config(config).train.deepspeed).read_text())
    ds["optimizer"]["params"].pop("fused", None)
    path = folder / "unfused.json"
    path.write_text(json.dumps(ds))
    return path


def anatomy_rows(
    config, steps, skip, variants, threads: int, tmp: Path, extra: tuple[str, ...]
) -> list[dict]:
    """One anatomy.py run per (name, overrides)."""
    unfused = unfused_copy(config, tmp)
    rows = []
    for name, overrides in variants:
        overrides = tuple(f"train.deepspeed={unfused}" if o == UNFUSED else o for o in overrides)
        rows.append({"name": name, **run_anatomy(config, steps, skip, (*extra, *overrides), threads)})
        print(f"{name}: {rows[-1]['step_s']:.2f} s/step", flush=True)
    return rows


def zero_rows(config, steps, skip, variants, threads: int, tmp: Path, extra: tuple[str, ...]) -> list[dict]:
    """Throughput and per-rank memory of each (stage, vocabulary) at 2 ranks."""
    rows = []
    for stage, vocab, overrides in variants:
        watch = Stopwatch()
        metrics = run_stage(stage, config, steps, tmp / f"zero{stage}-{vocab}", threads, (*extra, *overrides))
        last = metrics[-1]
        rows.append({
            "zero_stage": stage,
            "vocab": vocab,
            "samples_per_s": statistics.median(m["samples_per_s"] for m in metrics[skip:]),
            "params_mib_per_rank": last["mem/params_mib"],
            "optimizer_mib_per_rank": last["mem/optimizer_mib"],
            "peak_rss_mib_per_rank": last["mem/peak_rss_mib"],
            "final_loss": last["loss"],
            "wall_s": watch.lap("run"),
        })  # fmt: skip
    base = rows[0]["params_mib_per_rank"] + rows[0]["optimizer_mib_per_rank"] if rows else 1.0
    for row in rows:
        row["state_vs_zero0"] = (row["params_mib_per_rank"] + row["optimizer_mib_per_rank"]) / base
    return rows


def anatomy_table(rows: list[dict]) -> str:
    def cells(r: dict) -> list[str]:
        return [
            r["name"],
            f"{r['step_s']:.2f}",
            f"{r['samples_per_s']:.1f}",
            f"{r['samples_per_s'] / rows[0]['samples_per_s']:.2f}x",
            f"{100 * r['padding_fraction']:.0f}%",
            *(f"{100 * r['phase_share'][p]:.0f}%" for p in PHASES),
            f"{r['real_gflop_s']:.1f}",
            f"{r['matmul_peak_gflop_s']:.1f}",
            f"{r['real_fraction_of_peak']:.2f}",
        ]

    return markdown_table(ANATOMY_COLUMNS, [cells(r) for r in rows])


def zero_table(rows: list[dict]) -> str:
    def cells(r: dict) -> list[str]:
        return [
            r["zero_stage"],
            r["vocab"],
            f"{r['samples_per_s']:.1f}",
            f"{r['params_mib_per_rank']:.1f}",
            f"{r['optimizer_mib_per_rank']:.1f}",
            f"{r['state_vs_zero0']:.2f}x",
            f"{r['peak_rss_mib_per_rank']:.0f}",
        ]

    return markdown_table(ZERO_COLUMNS, [cells(r) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny config, 2 runs of 3 steps: a smoke run")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the median")
    parser.add_argument("--config", type=Path, help="run config (default: configs/default.yaml)")
    parser.add_argument("--skip-zero", action="store_true", help="only the anatomy table")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/train*.json)")
    args = parser.parse_args()
    config = args.config or (TINY if args.quick else REPO / "configs" / "default.yaml")
    threads = max(1, (os.cpu_count() or 2) // 2)  # 2 ranks share the machine's cores
    anatomy_threads = os.cpu_count() or 1  # one process: all the cores
    anatomy_variants, zero_variants = ANATOMY, [] if args.skip_zero else ZERO
    if args.quick:  # the same code paths, fewest runs: one anatomy row (the unfused one), one 2-rank run
        args.steps, args.skip, anatomy_threads = 3, 1, 1
        anatomy_variants, zero_variants = [ANATOMY[5]], zero_variants[1:2]
    name = "train-quick" if args.quick else "train" if args.config is None else f"train-{config.stem}"
    out = result_path(args.out, name + ("-anatomy" if args.skip_zero else "") + ".json", args.quick)

    env = environment()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        # --quick builds its shards (and teacher cache) in the temp folder, never in shards/
        extra = (f"data.shards={tmp}/shards",) if args.quick else ()
        anatomy = anatomy_rows(
            config, args.steps, args.skip, anatomy_variants, anatomy_threads, Path(tmp), extra
        )
        print(anatomy_table(anatomy), flush=True)
        rows = zero_rows(config, args.steps, args.skip, zero_variants, threads, Path(tmp), extra)
    print(zero_table(rows))
    result = {
        "env": finish(env),
        "anatomy": anatomy,
        "anatomy_table": anatomy_table(anatomy),
        "config": config.name,
        "ranks": 2,
        "steps": args.steps,
        "threads_per_rank": threads,
        "rows": rows,
        "table": zero_table(rows),
    }
    write_result(out, result)


if __name__ == "__main__":
    main()
