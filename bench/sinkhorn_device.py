"""bench/sinkhorn.py's solvers and training step on a device (a GPU), against its copy bandwidth.

The same solvers as bench/sinkhorn.py (ours, POT's batch solver and POT's loop, on the same torch
tensors on the device) in each of `--dtypes`, a device sync around every timed call, a solver that
cannot run at a dtype reported instead of stopping the bench; the device's copy bandwidth (a large
device-to-device copy, GB/s counting the bytes read + written); and each solve's time against that
bandwidth for the bytes a solve must move:

    bytes = (2 * iters + 2) * B * n * m * s  +  iters * B * (n + m) * s

i.e. every iteration reads the (B, n, m) kernel (or, in the log domain, the cost) once per
half-step (2 reads) and writes both scalings (or potentials), plus one read of the cost and one
write of the plan; s = 4 bytes for ours (it solves bf16 in fp32), the input dtype's size for POT.
It is a lower bound: building the logits/kernel and each logsumexp's temporaries add passes.
Then the MiniLM training step of bench/sinkhorn.py with both encoders in the dtype (fp32 loss math).
Writes results/sinkhorn-DEVICE.json (RESULTS.md is left alone); bench/gpu.sh runs it:

    python bench/sinkhorn_device.py --dtypes fp32,bf16 --batches 32,256,1024 --sizes 32,64,128,256
    python bench/sinkhorn_device.py --device cpu --quick   # seconds, anywhere; JSON to a temp folder
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import (
    Stopwatch,
    device_sync,
    environment,
    finish,
    markdown_table,
    result_path,
    write_result,
)
from sinkhorn import BIBLE, EPS, ITERS, STEP_COLUMNS, bench_solvers, bench_step, int_list, step_rows

SOLVER_COLUMNS = [
    "dtype",
    "B",
    "n=m",
    "solver",
    "fwd ms",
    "fwd+bwd ms",
    "model MB",
    "implied GB/s",
    "of copy BW",
    "floor ms",
    "solver / ours fwd",
    "marginal L1",
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BYTE_MODEL = (
    "bytes = (2 * iters + 2) * B * n * m * s + iters * B * (n + m) * s: each iteration reads the "
    "(B, n, m) kernel (exp domain, ours) or cost (log domain, POT) once per half-step and writes "
    "the scalings/potentials, plus one read of the cost and one write of the plan; s = 4 for ours "
    "(bf16 is solved in fp32), the input dtype's size for POT. A lower bound (logits/kernel builds "
    "and logsumexp temporaries add passes); 'floor' = model bytes / copy bandwidth, 'implied' = "
    "model bytes / measured fwd time."
)


def copy_bandwidth(device: torch.device, mib: int = 1024, repeats: int = 20) -> dict[str, float]:
    """The device's copy bandwidth: median time of ``dst.copy_(src)`` over a ``mib`` MiB fp32 tensor,
    counting the bytes read plus the bytes written (2 x size), in GB/s (1e9 bytes)."""
    sync = device_sync(device)
    numel = mib * 2**20 // 4
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        watch = Stopwatch(sync)
        dst.copy_(src)
        times.append(watch.lap("copy"))
    seconds = statistics.median(times)
    del src, dst
    return {"bytes_copied": numel * 4, "median_s": seconds, "gb_per_s": 2 * numel * 4 / seconds / 1e9}


def solve_bytes(batch: int, n: int, m: int, iters: int, element_size: int) -> int:
    """Bytes one solve must move (the module doc's model): per iteration 2 reads of the (B, n, m)
    kernel/cost and a write of both scalings, plus one read of the cost and one write of the plan."""
    matrix = batch * n * m * element_size
    return (2 * iters + 2) * matrix + iters * batch * (n + m) * element_size


def bandwidth_rows(rows: list[dict], dtype: torch.dtype, copy_gb_per_s: float) -> list[dict]:
    """Each solver row with its modelled bytes, the bandwidth that implies, and the floor time."""
    out = []
    for row in rows:
        size = 4 if row["solver"] == "ours" else torch.tensor([], dtype=dtype).element_size()
        moved = solve_bytes(row["B"], row["n"], row["n"], ITERS, size)
        implied = moved / row["fwd_s"] / 1e9
        out.append(
            row
            | {
                "model_bytes": moved,
                "element_size": size,
                "implied_gb_per_s": implied,
                "fraction_of_copy_bw": implied / copy_gb_per_s,
                "floor_s": moved / (copy_gb_per_s * 1e9),
            }
        )
    return out


def solver_rows(result: dict) -> list[list[str]]:
    rows = []
    for name, solver_rows_ in result["solvers"].items():
        ours = {(r["B"], r["n"]): r["fwd_s"] for r in solver_rows_ if r["solver"] == "ours"}
        for r in solver_rows_:
            base = ours.get((r["B"], r["n"]))
            rows.append([
                name, r["B"], r["n"], r["solver"], f"{r['fwd_s'] * 1e3:.3f}", f"{r['fwd_bwd_s'] * 1e3:.3f}",
                f"{r['model_bytes'] / 1e6:.2f}", f"{r['implied_gb_per_s']:.1f}",
                f"{r['fraction_of_copy_bw']:.1%}", f"{r['floor_s'] * 1e3:.3f}",
                f"{r['fwd_s'] / base:.1f}x" if base else "n/a", f"{r.get('marginal_l1', float('nan')):.1e}",
            ])  # fmt: skip
    return rows


def device_markdown(result: dict) -> str:
    """The device run's tables (printed and stored in its JSON; RESULTS.md is left alone)."""
    env, bw = result["env"], result["copy_bandwidth"]
    lines = [
        f"## Sinkhorn on {env['device_name']}",
        "",
        f"Command: `{env['command']}` ({env['date']}; torch {env['versions']['torch']} (CUDA "
        f"{env.get('cuda')}), POT {env['versions']['pot']}). eps {EPS}, {ITERS} iterations, uniform "
        f"marginals; median ms over {result['repeats']} repeats, a device sync around every call. Copy "
        f"bandwidth: **{bw['gb_per_s']:.0f} GB/s** (device-to-device copy of "
        f"{bw['bytes_copied'] / 2**20:.0f} MiB, read + write counted). Byte model per solve: "
        + result["byte_model"]
        + " Marginal L1: |P 1 - a|_1 + |P^T 1 - b|_1 of one untimed solve, max over the batch (the "
        "dtype's accuracy).",
        "",
        markdown_table(SOLVER_COLUMNS, solver_rows(result)),
    ]
    if result["failures"]:
        lines += ["", "Failed (left out): " + "; ".join(f"{k}: {v}" for k, v in result["failures"].items())]
    if result.get("step"):
        rows = [[name, *row] for name, step in result["step"].items() for row in step_rows(step, digits=2)]
        lines += [
            "",
            f"Training step, batch {result['step_batch']}, max_length 64, all-MiniLM-L6-v2 teacher and "
            f"student in the dtype, fp32 loss math; median ms over {result['step_steps']} steps.",
            "",
            markdown_table(["dtype", "objective", *STEP_COLUMNS], rows),
        ]
    return "\n".join(lines) + "\n"


def check_device(args: argparse.Namespace) -> torch.device:
    """The device, usable (else a one-line exit naming why), with fp32 meaning fp32 on a GPU."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}); no usable NVIDIA GPU here"
        )
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown:
        raise SystemExit(f"--dtypes: unknown {unknown}; choose from {sorted(DTYPES)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would change the numbers
        torch.backends.cudnn.allow_tf32 = False
    return device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu: where the solvers run")
    parser.add_argument(
        "--dtypes",
        type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
        default=["fp32", "bf16"],
        help="comma list of fp32, bf16, fp16 (default fp32,bf16)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, steps, model; JSON in a temp dir")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loop-items", type=int, default=16, help="items timed for the POT loop")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed per objective")
    parser.add_argument("--batches", type=int_list, help="comma list of B (default 32,256)")
    parser.add_argument("--sizes", type=int_list, help="comma list of n = m (default 32,64,128)")
    parser.add_argument("--no-step", action="store_true", help="skip the MiniLM training step")
    parser.add_argument("--bandwidth-mib", type=int, default=1024, help="size of the copy timed")
    parser.add_argument("--out", type=Path, help="results JSON (default results/sinkhorn-DEVICE.json)")
    parser.add_argument(
        "--bible", type=Path, default=BIBLE, help="folder with Swahili-NT.xml and English-KJV-NT.xml"
    )
    args = parser.parse_args()
    if args.quick:
        batches, sizes, step_batch = [4], [8], 2
        args.repeats, args.loop_items, args.steps, args.bandwidth_mib = 2, 2, 1, min(args.bandwidth_mib, 64)
    else:
        batches, sizes, step_batch = [32, 256], [32, 64, 128], 16
    batches, sizes = args.batches or batches, args.sizes or sizes
    device = check_device(args)
    out = result_path(args.out, f"sinkhorn-{device.type}.json", args.quick)

    env = environment(args.device)
    bandwidth = copy_bandwidth(device, args.bandwidth_mib)
    print(f"copy bandwidth {bandwidth['gb_per_s']:.1f} GB/s ({args.bandwidth_mib} MiB device-to-device)")
    failures: dict[str, str] = {}
    per_dtype, steps = {}, {}
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        print(f"--- {dtype_name} ---")
        found: dict[str, str] = {}
        rows = bench_solvers(batches, sizes, args.repeats, args.loop_items, device, dtype, found)
        failures.update({f"{dtype_name} {k}": v for k, v in found.items()})
        per_dtype[dtype_name] = bandwidth_rows(rows, dtype, bandwidth["gb_per_s"])
        if not args.no_step:
            steps[dtype_name] = bench_step(step_batch, 64, args.steps, device, dtype, args.bible, args.quick)
    result = {
        "env": finish(env),
        "quick": args.quick,
        "eps": EPS,
        "iters": ITERS,
        "repeats": args.repeats,
        "loop_items": args.loop_items,
        "copy_bandwidth": bandwidth,
        "byte_model": BYTE_MODEL,
        "solvers": per_dtype,
        "failures": failures,
        "step_batch": step_batch,
        "step_steps": args.steps,
        "step": steps,
    }
    result["markdown"] = device_markdown(result)
    print(result["markdown"])
    write_result(out, result)


if __name__ == "__main__":
    main()
