"""bench/sinkhorn.py's solvers and training step on a device (a GPU), against its copy bandwidth.

In each of `--dtypes`: the solvers (ours, POT's batch solver, POT's loop) on the same torch tensors
on the device, a device sync around every timed call, a solver that cannot run at a dtype reported
instead of stopping the bench; each solve's time against the device's copy bandwidth (a large
device-to-device copy, bytes read + written) for the bytes a solve must move (BYTE_MODEL); then the
MiniLM training step with both encoders in the dtype (fp32 loss math). Writes
results/sinkhorn-DEVICE.json (RESULTS.md is left alone); bench/gpu.sh runs it:

    python bench/sinkhorn_device.py --dtypes fp32,bf16 --batches 32,256,1024 --sizes 32,64,128,256
    python bench/sinkhorn_device.py --device cpu --quick   # seconds, anywhere; JSON to a temp folder
"""

from __future__ import annotations

import statistics

import torch
from common import Stopwatch, device_sync, environment, finish, markdown_table, str_list, write_result
from sinkhorn import EPS, ITERS, QUICK, STEP_COLUMNS, bench_solvers, bench_step, solver_args, step_rows

SOLVER_COLUMNS = ["dtype", "B", "n=m", "solver", "fwd ms", "fwd+bwd ms", "model MB", "implied GB/s",
                  "of copy BW", "floor ms", "solver / ours fwd", "marginal L1"]  # fmt: skip
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
    """Median time of ``dst.copy_(src)`` over a ``mib`` MiB fp32 tensor, as GB/s (1e9 bytes) of the
    bytes read plus the bytes written (2 x size)."""
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
    """Bytes one solve must move (BYTE_MODEL)."""
    return (2 * iters + 2) * batch * n * m * element_size + iters * batch * (n + m) * element_size


def bandwidth_rows(rows: list[dict], dtype: torch.dtype, copy_gb_per_s: float) -> list[dict]:
    """Each solver row with its modelled bytes, the bandwidth that implies, and the floor time."""
    out = []
    for row in rows:
        size = 4 if row["solver"] == "ours" else torch.tensor([], dtype=dtype).element_size()
        moved = solve_bytes(row["B"], row["n"], row["n"], ITERS, size)
        implied = moved / row["fwd_s"] / 1e9
        out.append(row | {"model_bytes": moved, "element_size": size, "implied_gb_per_s": implied,
                          "fraction_of_copy_bw": implied / copy_gb_per_s,
                          "floor_s": moved / (copy_gb_per_s * 1e9)})  # fmt: skip
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
    rows = [[name, *row] for name, step in result["step"].items() for row in step_rows(step, digits=2)]
    lines += [
        "",
        f"Training step, batch {result['step_batch']}, max_length 64, all-MiniLM-L6-v2 teacher and "
        f"student in the dtype, fp32 loss math; median ms over {result['step_steps']} steps.",
        "",
        markdown_table(["dtype", "objective", *STEP_COLUMNS], rows),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = solver_args(__doc__)
    parser.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu: where the solvers run")
    parser.add_argument("--dtypes", type=str_list, default=["fp32", "bf16"], help="of fp32, bf16, fp16")
    parser.add_argument("--bandwidth-mib", type=int, default=1024, help="size of the copy timed")
    args = parser.parse(**QUICK, bandwidth_mib=64)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = f"torch {torch.__version__}, built for CUDA {torch.version.cuda}"
        raise SystemExit(f"--device {args.device}: torch.cuda.is_available() is False ({why}); no usable GPU")
    if unknown := [d for d in args.dtypes if d not in DTYPES]:
        raise SystemExit(f"--dtypes: unknown {unknown}; choose from {sorted(DTYPES)}")
    if device.type == "cuda":  # TF32 would change the numbers
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    env = environment(args.device)
    bandwidth = copy_bandwidth(device, args.bandwidth_mib)
    print(f"copy bandwidth {bandwidth['gb_per_s']:.1f} GB/s ({args.bandwidth_mib} MiB device-to-device)")
    failures: dict[str, str] = {}
    per_dtype, steps = {}, {}
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        print(f"--- {dtype_name} ---")
        found: dict[str, str] = {}
        rows = bench_solvers(args.batches, args.sizes, args.repeats, args.loop_items, device, dtype, found)
        failures.update({f"{dtype_name} {k}": v for k, v in found.items()})
        per_dtype[dtype_name] = bandwidth_rows(rows, dtype, bandwidth["gb_per_s"])
        steps[dtype_name] = bench_step(args.step_batch, 64, args.steps, device, dtype, args.bible, args.quick)
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
        "step_batch": args.step_batch,
        "step_steps": args.steps,
        "step": steps,
    }
    result["markdown"] = device_markdown(result)
    print(result["markdown"])
    write_result(args, f"sinkhorn-{device.type}.json", result)


if __name__ == "__main__":
    main()
