"""Training throughput, in one run: first the anatomy of one step in one process for the default and
for each of its settings changed one at a time (bench/anatomy.py: phase shares, padding, real-token
FLOP/s against the matmul rate measured in the same process), then throughput and per-rank memory
for ZeRO 0/1/2/3 at 2 ranks and the trimmed student vocabulary against the full one.

    python bench/train.py            # default config: multilingual-e5-small, four languages, 2 CPU ranks
    python bench/train.py --quick    # tiny config (seconds), for a smoke check
    python bench/train.py --config configs/minilm.yaml   # the English-vocabulary path
    python bench/train.py --skip-zero                    # the anatomy table only (train-anatomy.json)

Each row is a real `torchrun --nproc_per_node 2 -m dist_optical train` run; figures come
from its metrics.jsonl: samples/s (median over steps after the first `--skip`), and each rank's
share of parameters and optimizer state and its peak RSS (mean over ranks). The last row is
ZeRO-1 with `model.trim_vocab=false` (every one of the tokenizer's embedding rows trained).
Writes bench/results/train.json (or train-NAME.json for another config) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dist_optical.config import load_config  # noqa: E402
from dist_optical.engine.dist import free_port  # noqa: E402


def run_stage(
    stage: int, config: Path, steps: int, out: Path, threads: int, overrides: tuple[str, ...] = ()
) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "dist_optical",
        "train",
        "--config",
        str(config),
        "--out",
        str(out),
        f"train.max_steps={steps}",
        "train.warmup_steps=1",
        f"train.deepspeed=configs/ds/zero{stage}.json",
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ZeRO-{stage} run failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


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


def run_anatomy(config: Path, steps: int, skip: int, overrides: tuple[str, ...]) -> dict:
    """bench/anatomy.py in a fresh process (its own torch.distributed init and memory)."""
    threads = next(
        (o.split("=")[1] for o in overrides if o.startswith("OMP_NUM_THREADS=")), str(os.cpu_count())
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=threads, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    config_overrides = [o for o in overrides if not o.startswith("OMP_NUM_THREADS=")]
    cmd = [sys.executable, str(REPO / "bench" / "anatomy.py"), "--config", str(config), "--steps", str(steps),
           "--skip", str(skip), *config_overrides]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"anatomy {overrides} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def anatomy_table(rows: list[dict]) -> str:
    phases = ("data", "teacher forward", "student forward", "loss", "backward", "optimizer step")
    columns = ["configuration", "s/step", "samples/s", "vs default", "padding", *phases,
               "real GFLOP/s", "matmul peak GFLOP/s", "real / peak"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        speedup = r["samples_per_s"] / rows[0]["samples_per_s"]
        cells = [
            r["name"],
            f"{r['step_s']:.2f}",
            f"{r['samples_per_s']:.1f}",
            f"{speedup:.2f}x",
            f"{100 * r['padding_fraction']:.0f}%",
            *(f"{100 * r['phase_share'][p]:.0f}%" for p in phases),
            f"{r['real_gflop_s']:.1f}",
            f"{r['matmul_peak_gflop_s']:.1f}",
            f"{r['real_fraction_of_peak']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny config instead of the default model")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the median")
    parser.add_argument("--config", type=Path, help="run config (default: configs/default.yaml)")
    parser.add_argument("--skip-zero", action="store_true", help="only the anatomy table")
    args = parser.parse_args()
    config = args.config or REPO / "configs" / ("tiny.yaml" if args.quick else "default.yaml")
    threads = max(1, (os.cpu_count() or 2) // 2)  # 2 ranks share the machine's cores
    variants = [(stage, "trimmed", ("model.trim_vocab=true",)) for stage in (0, 1, 2, 3)]
    variants.append((1, "full", ("model.trim_vocab=false",)))

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()
    anatomy = []
    ds = json.loads((REPO / load_config(config).train.deepspeed).read_text())
    ds["optimizer"]["params"].pop("fused", None)
    unfused = Path(tempfile.mkdtemp()) / "unfused.json"
    unfused.write_text(json.dumps(ds))
    for name, overrides in ANATOMY:
        overrides = tuple(f"train.deepspeed={unfused}" if o == UNFUSED else o for o in overrides)
        anatomy.append({"name": name, **run_anatomy(config, args.steps, args.skip, overrides)})
        print(f"{name}: {anatomy[-1]['step_s']:.2f} s/step", flush=True)
    print(anatomy_table(anatomy), flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage, vocab, overrides in [] if args.skip_zero else variants:
            t0 = time.perf_counter()
            out = Path(tmp) / f"zero{stage}-{vocab}"
            metrics = run_stage(stage, config, args.steps, out, threads, overrides)
            timed = metrics[args.skip :]
            last = metrics[-1]
            rows.append(
                {
                    "zero_stage": stage,
                    "vocab": vocab,
                    "samples_per_s": statistics.median(m["samples_per_s"] for m in timed),
                    "params_mib_per_rank": last["mem/params_mib"],
                    "optimizer_mib_per_rank": last["mem/optimizer_mib"],
                    "peak_rss_mib_per_rank": last["mem/peak_rss_mib"],
                    "final_loss": last["loss"],
                    "wall_s": time.perf_counter() - t0,
                }
            )
    base = rows[0]["params_mib_per_rank"] + rows[0]["optimizer_mib_per_rank"] if rows else 1.0
    for row in rows:
        row["state_vs_zero0"] = (row["params_mib_per_rank"] + row["optimizer_mib_per_rank"]) / base

    columns = [
        "ZeRO",
        "student vocabulary",
        "samples/s",
        "params MiB/rank",
        "optimizer MiB/rank",
        "(params+opt) vs ZeRO-0",
        "peak RSS MiB/rank",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        cells = [
            r["zero_stage"],
            r["vocab"],
            f"{r['samples_per_s']:.1f}",
            f"{r['params_mib_per_rank']:.1f}",
            f"{r['optimizer_mib_per_rank']:.1f}",
            f"{r['state_vs_zero0']:.2f}x",
            f"{r['peak_rss_mib_per_rank']:.0f}",
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    table = "\n".join(lines)
    print(table)
    result = {
        "command": " ".join(["python", "bench/train.py", *sys.argv[1:]]),
        "started": started,
        "load_before": load_before,
        "anatomy": anatomy,
        "anatomy_table": anatomy_table(anatomy),
        "config": config.name,
        "ranks": 2,
        "steps": args.steps,
        "threads_per_rank": threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "rows": rows,
        "table": table,
    }
    name = "train-quick" if args.quick else "train" if args.config is None else f"train-{config.stem}"
    name += "-anatomy" if args.skip_zero else ""
    out = REPO / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = out.with_suffix(".json.tmp")
    tmp_file.write_text(json.dumps(result, indent=2))
    tmp_file.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
