"""Training throughput and per-rank memory for ZeRO 0/1/2/3 at 2 ranks, in one run.

    python bench/train.py            # default config: all-MiniLM-L6-v2 on Swahili bitext, 2 CPU ranks
    python bench/train.py --quick    # tiny config (seconds), for a smoke check

Each stage is a real `torchrun --nproc_per_node 2 -m dist_optical train` run; figures come
from its metrics.jsonl: samples/s (median over steps after the first `--skip`), and each rank's
share of parameters and optimizer state and its peak RSS (mean over ranks). Writes
bench/results/train.json and prints a Markdown table.
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


def run_stage(stage: int, config: Path, steps: int, out: Path, threads: int) -> list[dict]:
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
    args = parser.parse_args()
    config = REPO / "configs" / ("tiny.yaml" if args.quick else "default.yaml")
    threads = max(1, (os.cpu_count() or 2) // 2)  # 2 ranks share the machine's cores

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (0, 1, 2, 3):
            t0 = time.perf_counter()
            metrics = run_stage(stage, config, args.steps, Path(tmp) / f"zero{stage}", threads)
            timed = metrics[args.skip :]
            last = metrics[-1]
            rows.append(
                {
                    "zero_stage": stage,
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
    out = REPO / "bench" / "results" / ("train-quick.json" if args.quick else "train.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = out.with_suffix(".json.tmp")
    tmp_file.write_text(json.dumps(result, indent=2))
    tmp_file.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
