"""Training throughput, in one run: the anatomy of one step (bench/anatomy.py, one process) for the
default config and for each of its settings changed one at a time, then throughput and per-rank
memory for ZeRO 0/1/2/3 at 2 ranks and the trimmed student vocabulary against the full one.

    python bench/train.py            # default config: multilingual-e5-small, four languages, 2 CPU ranks
    python bench/train.py --quick    # configs/tiny.yaml, 1 anatomy row + ZeRO-1, 3 steps: a smoke run
    python bench/train.py --config configs/minilm.yaml   # the English-vocabulary path
    python bench/train.py --skip-zero                    # the anatomy table only (train-anatomy.json)

Each ZeRO row is a real 2-rank `torchrun -m dist_optical train` run: samples/s (median after the
first `--skip` steps), each rank's parameters, optimizer state and peak RSS. Writes
bench/results/train.json (train-NAME.json for another config) and prints the Markdown tables.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import REPO, TINY, Parser, Stopwatch, environment, finish, markdown_table, run_child, write_result

from dist_optical.config import load_config
from dist_optical.engine.dist import free_port

UNFUSED = "UNFUSED"  # stands for a copy of the run's DeepSpeed JSON without "fused" (made by main)
# The anatomy rows: today's default, then the default with one setting changed at a time.
ANATOMY = [
    ("default: precision auto, InfoNCE + MSE + English, live teacher, 128 tokens", ()),
    ("at 64 tokens (the old truncation)", ("model.max_length=64",)),
    ("in fp32", ("train.precision=fp32",)),
    ("without the English term", ("loss={contrastive: 1.0, mse: 100.0}",)),
    ("padded (no length grouping)", ("data.length_window=0",)),
    ("unfused AdamW", (UNFUSED,)),
    ("unpacked (each pass one padded batch)", ("train.pack=false",)),
    ("1 intra-op thread", ("OMP_NUM_THREADS=1",)),
    ("full vocabulary", ("model.trim_vocab=false",)),
]
# ZeRO stage, student vocabulary, overrides: each a real 2-rank run.
ZERO = [*((stage, "trimmed", ("model.trim_vocab=true",)) for stage in (0, 1, 2, 3)),
        (1, "full", ("model.trim_vocab=false",))]  # fmt: skip
ZERO_COLUMNS = ["ZeRO", "student vocabulary", "samples/s", "params MiB/rank", "optimizer MiB/rank",
                "(params+opt) vs ZeRO-0", "peak RSS MiB/rank"]  # fmt: skip


def run_anatomy(config: Path, steps: int, skip: int, overrides: tuple[str, ...], threads: int) -> dict:
    """bench/anatomy.py in a fresh process (its own torch.distributed init and memory), on
    ``threads`` intra-op threads unless an OMP_NUM_THREADS=N override says otherwise."""
    threads = next((o.split("=")[1] for o in overrides if o.startswith("OMP_NUM_THREADS=")), threads)
    config_overrides = [o for o in overrides if not o.startswith("OMP_NUM_THREADS=")]
    cmd = [sys.executable, str(REPO / "bench" / "anatomy.py"), "--config", str(config), "--steps", str(steps),
           "--skip", str(skip), *config_overrides]  # fmt: skip
    return json.loads(run_child(cmd, threads, f"anatomy {overrides}").strip().splitlines()[-1])


def anatomy_rows(
    config, steps, skip, variants, threads: int, tmp: Path, extra: tuple[str, ...]
) -> list[dict]:
    """One anatomy.py run per (name, overrides); UNFUSED: the config's DeepSpeed JSON without "fused"."""
    ds = json.loads((REPO / load_config(config).train.deepspeed).read_text())
    ds["optimizer"]["params"].pop("fused", None)
    unfused = tmp / "unfused.json"
    unfused.write_text(json.dumps(ds))
    rows = []
    for name, overrides in variants:
        overrides = tuple(f"train.deepspeed={unfused}" if o == UNFUSED else o for o in overrides)
        rows.append({"name": name, **run_anatomy(config, steps, skip, (*extra, *overrides), threads)})
        print(f"{name}: {rows[-1]['step_s']:.2f} s/step", flush=True)
    return rows


def zero_rows(config, steps, skip, variants, threads: int, tmp: Path, extra: tuple[str, ...]) -> list[dict]:
    """Throughput and per-rank memory of each (stage, vocabulary): a real 2-rank training run."""
    rows = []
    for stage, vocab, overrides in variants:
        out, watch = tmp / f"zero{stage}-{vocab}", Stopwatch()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "dist_optical", "train", "--config", str(config), "--out", str(out),
               f"train.max_steps={steps}", "train.warmup_steps=1",
               f"train.deepspeed=configs/ds/zero{stage}.json", *extra, *overrides]  # fmt: skip
        run_child(cmd, threads, f"ZeRO-{stage} run")
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
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
    phases = list(rows[0]["phase_share"])  # bench/anatomy.py's PHASES, in order
    columns = ["configuration", "s/step", "samples/s", "vs default", "padding", *phases, "real GFLOP/s",
               "matmul peak GFLOP/s", "real / peak"]  # fmt: skip
    return markdown_table(columns, [
        [r["name"], f"{r['step_s']:.2f}", f"{r['samples_per_s']:.1f}",
         f"{r['samples_per_s'] / rows[0]['samples_per_s']:.2f}x", f"{100 * r['padding_fraction']:.0f}%",
         *(f"{100 * r['phase_share'][p]:.0f}%" for p in phases), f"{r['real_gflop_s']:.1f}",
         f"{r['matmul_peak_gflop_s']:.1f}", f"{r['real_fraction_of_peak']:.2f}"]
        for r in rows
    ])  # fmt: skip


def zero_table(rows: list[dict]) -> str:
    return markdown_table(ZERO_COLUMNS, [
        [r["zero_stage"], r["vocab"], f"{r['samples_per_s']:.1f}", f"{r['params_mib_per_rank']:.1f}",
         f"{r['optimizer_mib_per_rank']:.1f}", f"{r['state_vs_zero0']:.2f}x",
         f"{r['peak_rss_mib_per_rank']:.0f}"]
        for r in rows
    ])  # fmt: skip


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the median")
    parser.add_argument("--config", type=Path, help="run config (default: configs/default.yaml)")
    parser.add_argument("--skip-zero", action="store_true", help="only the anatomy table")
    args = parser.parse(steps=3, skip=1)
    config = args.config or (TINY if args.quick else REPO / "configs" / "default.yaml")
    threads = max(1, (os.cpu_count() or 2) // 2)  # 2 ranks share the machine's cores
    anatomy_threads = os.cpu_count() or 1  # one process: all the cores
    anatomy_variants, zero_variants = ANATOMY, [] if args.skip_zero else ZERO
    if args.quick:  # the same code paths, fewest runs: one anatomy row (the unfused one), one 2-rank run
        anatomy_threads, anatomy_variants, zero_variants = 1, [ANATOMY[5]], zero_variants[1:2]

    env = environment()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        extra = (f"data.shards={tmp}/shards",) if args.quick else ()  # --quick: never in shards/
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
    name = "train-quick" if args.quick else "train" if args.config is None else f"train-{config.stem}"
    write_result(args, name + ("-anatomy" if args.skip_zero else "") + ".json", result)


if __name__ == "__main__":
    main()
