"""Training throughput and per-rank memory for ZeRO 0/1/2/3 at 2 ranks, and the trimmed student
vocabulary against the full one, in one run.

    python bench/train.py            # default config: multilingual-e5-small, four languages, 2 CPU ranks
    python bench/train.py --quick    # tiny config (seconds), for a smoke check
    python bench/train.py --config configs/minilm.yaml   # the English-vocabulary path

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny config instead of the default model")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the median")
    parser.add_argument("--config", type=Path, help="run config (default: configs/default.yaml)")
    args = parser.parse_args()
    config = args.config or REPO / "configs" / ("tiny.yaml" if args.quick else "default.yaml")
    threads = max(1, (os.cpu_count() or 2) // 2)  # 2 ranks share the machine's cores
    variants = [(stage, "trimmed", ("model.trim_vocab=true",)) for stage in (0, 1, 2, 3)]
    variants.append((1, "full", ("model.trim_vocab=false",)))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage, vocab, overrides in variants:
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
    base = rows[0]["params_mib_per_rank"] + rows[0]["optimizer_mib_per_rank"]
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
        "config": config.name,
        "ranks": 2,
        "steps": args.steps,
        "threads_per_rank": threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "rows": rows,
        "table": table,
    }
    name = "train-quick" if args.quick else "train" if args.config is None else f"train-{config.stem}"
    out = REPO / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = out.with_suffix(".json.tmp")
    tmp_file.write_text(json.dumps(result, indent=2))
    tmp_file.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
