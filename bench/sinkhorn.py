"""Batched Sinkhorn speed against POT, and the OT loss's share of a MiniLM training step (CPU, fp32).

Part 1: at B in {32, 256} and n = m in {32, 64, 128}, 50 iterations, eps 0.05, on the same costs
(1 - cosine of random 64-d vectors, near-uniform like real token costs), uniform marginals:
`dist_optical.ot.sinkhorn` vs `ot.batch.solve_batch(method="log_sinkhorn")` vs a Python loop of
`ot.bregman.sinkhorn_log` (only the first few items are timed and the time is scaled to B), and
GeomLoss if it is importable. Forward alone and forward + backward of sum <P, C> with the
envelope gradient everywhere (plan detached). Median of repeats after a warm-up.
Part 2: one training step at batch 16, max_length 64 on real Bible verses (Swahili through the
student, English through the frozen teacher, both all-MiniLM-L6-v2; no optimizer step), with
the OT objective (default OTConfig) and with MSE; per-phase medians.

    python bench/sinkhorn.py           # writes results/sinkhorn.json and the Sinkhorn section of RESULTS.md
    python bench/sinkhorn.py --quick   # tiny smoke run; prints only

On a GPU (`--device cuda`, any of `--dtypes fp32,bf16`): the same solvers on the device (POT's batch
solver and loop run on the same torch tensors there), a CUDA sync around every timed call, the
device's copy bandwidth (a large device-to-device copy, GB/s counting the bytes read + written),
and each solve's time against that bandwidth for the bytes a solve must move:

    bytes = (2 * iters + 2) * B * n * m * s  +  iters * B * (n + m) * s

i.e. every iteration reads the (B, n, m) kernel (or, in the log domain, the cost) once per
half-step (2 reads) and writes both scalings (or potentials), plus one read of the cost and one
write of the plan; s = 4 bytes for ours (it solves bf16 in fp32), the input dtype's size for POT.
It is a lower bound: building the logits/kernel and each logsumexp's temporaries add passes.
Writes results/sinkhorn-DEVICE.json (never RESULTS.md unless --results-md is given):

    python bench/sinkhorn.py --device cuda --dtypes fp32,bf16 --batches 32,256,1024 --sizes 32,64,128,256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ot
import torch

from dist_optical.config import ContrastiveConfig, OTConfig
from dist_optical.data.collate import tokenize
from dist_optical.models import encode, freeze, load_encoder, load_tokenizer, special_ids
from dist_optical.objectives import Objective
from dist_optical.ot import sinkhorn

HERE = Path(__file__).resolve().parent
BIBLE = HERE.parent.parent / "shared" / "data" / "bible"
EPS = 0.05
ITERS = 50
TARGETS = {"vs_pot_batch": 1.5, "vs_pot_loop": 50.0, "ot_step_share": 0.15}


def no_sync() -> None:
    """CPU work is done when the call returns."""


def device_sync(device: torch.device) -> Callable[[], None]:
    """What makes a timed call's device work finish before the clock is read (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return no_sync


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = no_sync
) -> dict[str, float]:
    """Median wall seconds of each function over ``repeats`` rounds after a warm-up round.

    Each round runs every function once, so a change of load on the shared machine hits all
    of them alike instead of whichever happened to be running. ``sync`` runs before the clock
    starts and before it stops (a CUDA synchronize on the GPU).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def problem(batch: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, n, n) costs 1 - cos of random 64-d vectors, and uniform (B, n) marginals; fp32."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, n, 64, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(batch, n, 64, generator=gen), dim=-1)
    weights = torch.full((batch, n), 1.0 / n)
    return 1.0 - x @ y.transpose(1, 2), weights, weights.clone()


def envelope_backward(cost: torch.Tensor, solve: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Forward + backward of sum <P, C> with P = solve(C) solved without autograd (the envelope gradient)."""
    leaf = cost.clone().requires_grad_(True)
    with torch.no_grad():
        plan = solve(leaf)
    (plan * leaf[: len(plan)]).sum().backward()  # the POT loop solves only the first items


def solvers(a: torch.Tensor, b: torch.Tensor, loop_items: int) -> dict[str, Callable[[torch.Tensor], object]]:
    """Name -> forward function of the cost. The loop solves only the first ``loop_items`` items."""

    def ours(cost):
        return sinkhorn(cost, a, b, EPS, max_iters=ITERS)

    def pot_batch(cost):
        # tol=0 never stops early: exactly ITERS iterations (POT checks its marginals every 10).
        return ot.batch.solve_batch(cost, EPS, a, b, ITERS, 0.0, method="log_sinkhorn", grad="detach").plan

    def pot_loop(cost):
        plans = [
            ot.bregman.sinkhorn_log(a[i], b[i], cost[i], EPS, numItermax=ITERS, stopThr=0.0, warn=False)
            for i in range(loop_items)
        ]
        return torch.stack(plans)

    return {"ours": ours, "pot_batch": pot_batch, "pot_loop": pot_loop}


def bench_solvers(
    batches: list[int],
    sizes: list[int],
    repeats: int,
    loop_items: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    failures: dict[str, str] | None = None,
) -> list[dict]:
    """Rows {B, n, solver, fwd_s, fwd_bwd_s}. With ``device``/``dtype`` (the GPU path) the problem
    moves there, the timing syncs the device, and a solver that fails (e.g. POT in bf16) is left out
    with its error in ``failures`` instead of stopping the bench."""
    rows = []
    sync = device_sync(device) if device is not None else no_sync
    for batch in batches:
        for n in sizes:
            cost, a, b = problem(batch, n)
            if device is not None:
                cost, a, b = (t.to(device=device, dtype=dtype) for t in (cost, a, b))
            items = min(loop_items, batch)
            fns, errors = {}, {}
            names = list(solvers(a, b, items))
            for name, solve in solvers(a, b, items).items():
                if failures is not None:
                    try:  # one untimed call: a solver that cannot run at this dtype is reported, not fatal
                        plan = solve(cost).float()
                        k = len(plan)  # the POT loop solves only the first items
                        marginal = (plan.sum(2) - a[:k].float()).abs().sum(1) + (
                            plan.sum(1) - b[:k].float()
                        ).abs().sum(1)
                        errors[name] = float(marginal.max())  # NaN stays NaN: a broken solve shows
                        envelope_backward(cost, solve)
                        sync()
                    except Exception as err:  # noqa: BLE001 - any failure is the finding
                        failures[f"{name} B={batch} n={n}"] = f"{type(err).__name__}: {str(err)[:300]}"
                        print(
                            f"B={batch:4d} n={n:4d} {name:9s} FAILED: {type(err).__name__}: {str(err)[:200]}"
                        )
                        names.remove(name)
                        continue
                fns[name, "fwd_s"] = lambda solve=solve, cost=cost: solve(cost)
                fns[name, "fwd_bwd_s"] = lambda solve=solve, cost=cost: envelope_backward(cost, solve)
            medians = interleaved_medians(fns, repeats, sync)
            for name in names:
                scale = batch / items if name == "pot_loop" else 1.0
                fwd, bwd = scale * medians[name, "fwd_s"], scale * medians[name, "fwd_bwd_s"]
                row = {"B": batch, "n": n, "solver": name, "fwd_s": fwd, "fwd_bwd_s": bwd}
                if name in errors:  # the GPU path: L1 error of both marginals, max over the batch
                    row["marginal_l1"] = errors[name]
                rows.append(row)
                print(f"B={batch:4d} n={n:4d} {name:9s} fwd {fwd * 1e3:9.2f} ms, fwd+bwd {bwd * 1e3:9.2f} ms")
    return rows


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
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        times.append(time.perf_counter() - start)
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


def bible_pairs(count: int, bible: Path = BIBLE) -> list[tuple[str, str]]:
    """The first ``count`` (Swahili, English) verse pairs present in both XML files (read only)."""
    seg = re.compile(r'<seg id="([^"]+)"[^>]*>\s*(.*?)\s*</seg>', re.S)

    def verses(name: str) -> dict[str, str]:
        return {vid: text for vid, text in seg.findall((bible / name).read_text(encoding="utf-8")) if text}

    swahili, english = verses("Swahili-NT.xml"), verses("English-KJV-NT.xml")
    return [(swahili[vid], english[vid]) for vid in swahili if vid in english][:count]


def timed_step(
    teacher, student, special, objective, english, foreign, sync: Callable[[], None] = no_sync
) -> dict[str, float]:
    """Seconds per phase of one step: teacher forward (no grad), student forward, loss, backward.

    ``sync`` (a CUDA synchronize on the GPU) ends each phase; the loss math is fp32 whatever the
    encoders' dtype (as in training: bf16 encoders, fp32 Sinkhorn and softmaxes)."""
    sync()
    marks = [time.perf_counter()]
    with torch.no_grad():
        t_enc = encode(teacher, english["input_ids"], english["attention_mask"], special)
    sync()
    marks.append(time.perf_counter())
    s_enc = encode(student, foreign["input_ids"], foreign["attention_mask"], special)
    sync()
    marks.append(time.perf_counter())
    if t_enc.pooled.dtype != torch.float32:
        t_enc, s_enc = t_enc.float(), s_enc.float()
    loss, _ = objective(t_enc, s_enc)
    sync()
    marks.append(time.perf_counter())
    loss.backward()
    sync()
    marks.append(time.perf_counter())
    student.zero_grad(set_to_none=True)
    names = ("teacher_fwd", "student_fwd", "loss", "backward")
    durations = {name: end - start for name, start, end in zip(names, marks[:-1], marks[1:], strict=True)}
    return durations | {"step": marks[-1] - marks[0]}


def bench_step(
    batch: int,
    max_length: int,
    steps: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    bible: Path = BIBLE,
) -> dict[str, dict[str, float]]:
    """Median seconds per phase of a training step, for the OT and the MSE objective (on ``device``
    with both encoders in ``dtype`` when given: the GPU path)."""
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    teacher = freeze(load_encoder("all-MiniLM-L6-v2"))
    student = load_encoder("all-MiniLM-L6-v2")
    sync = no_sync
    if device is not None:
        teacher, student = teacher.to(device=device, dtype=dtype), student.to(device=device, dtype=dtype)
        sync = device_sync(device)
    student.train()
    special = special_ids(tokenizer)
    pairs = bible_pairs(batch * (steps + 1), bible)
    objectives = {
        "ot": Objective({"ot": 1.0}, OTConfig(), ContrastiveConfig()),
        "mse": Objective({"mse": 1.0}, OTConfig(), ContrastiveConfig()),
    }
    times: dict[str, list[dict[str, float]]] = {name: [] for name in objectives}
    for i in range(0, len(pairs), batch):
        foreign = tokenize(tokenizer, [sw for sw, _ in pairs[i : i + batch]], max_length)
        english = tokenize(tokenizer, [en for _, en in pairs[i : i + batch]], max_length)
        if device is not None:
            foreign = {k: v.to(device) for k, v in foreign.items()}
            english = {k: v.to(device) for k, v in english.items()}
        for name, objective in objectives.items():  # interleaved, as in `interleaved_medians`
            phases = timed_step(teacher, student, special, objective, english, foreign, sync)
            if i:  # the first batch is the warm-up
                times[name].append(phases)
    results = {}
    for name, steps_ in times.items():
        results[name] = {phase: statistics.median(t[phase] for t in steps_) for phase in steps_[0]}
        print(f"step with {name}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in results[name].items()))
    results["tokens"] = {
        "swahili_mean": statistics.mean(len(tokenizer(sw)["input_ids"]) for sw, _ in pairs),
        "english_mean": statistics.mean(len(tokenizer(en)["input_ids"]) for _, en in pairs),
        "truncated_at": max_length,
    }
    return results


def summary(rows: list[dict], step: dict) -> dict:
    """Speed-ups of ours over each POT solver at every shape, and the targets at B=256, n=64."""
    by = {(r["B"], r["n"], r["solver"]): r for r in rows}
    speedups = {}
    for (batch, n, solver), row in by.items():
        if solver == "ours":
            continue
        ours = by[(batch, n, "ours")]
        speedups[f"B{batch}_n{n}_{solver}"] = {
            "fwd": row["fwd_s"] / ours["fwd_s"],
            "fwd_bwd": row["fwd_bwd_s"] / ours["fwd_bwd_s"],
        }
    out = {"speedups": speedups, "ot_step_share": step["ot"]["loss"] / step["ot"]["step"]}
    key = "B256_n64_pot_{}"
    if key.format("batch") in speedups:
        out["targets"] = {
            "vs_pot_batch": speedups[key.format("batch")]["fwd"],
            "vs_pot_loop": speedups[key.format("loop")]["fwd"],
            "ot_step_share": out["ot_step_share"],
        }
        out["met"] = {
            "vs_pot_batch": out["targets"]["vs_pot_batch"] >= TARGETS["vs_pot_batch"],
            "vs_pot_loop": out["targets"]["vs_pot_loop"] >= TARGETS["vs_pot_loop"],
            "ot_step_share": out["ot_step_share"] <= TARGETS["ot_step_share"],
        }
    return out


def markdown(result: dict) -> str:
    """The "## Sinkhorn" section of bench/RESULTS.md."""
    env, summ, step = result["env"], result["summary"], result["step"]
    by = {(r["B"], r["n"], r["solver"]): r for r in result["solvers"]}
    lines = [
        "## Sinkhorn",
        "",
        f"Command: `{env['command']}` ({env['date']}; {env['cpu_threads']} CPU threads, "
        f"torch {env['torch']}, POT {env['pot']}; load average {env['load_before']} before, "
        f"{env['load_after']} after; the machine is shared, so expect noise).",
        "",
        f"fp32, eps {EPS}, {ITERS} iterations, uniform marginals, costs 1 - cos of random 64-d vectors; "
        "median ms. fwd+bwd = forward and backward of sum <P, C> with P solved without autograd "
        "(envelope) for every solver. POT loop: a Python loop of `ot.bregman.sinkhorn_log`, only the "
        f"first {result['loop_items']} items timed and scaled to B (extrapolated). "
        f"GeomLoss: {env['geomloss']}.",
        "",
        "| B | n=m | ours fwd | POT batch fwd | POT loop fwd* | ours fwd+bwd | POT batch fwd+bwd "
        "| POT loop fwd+bwd* | batch/ours fwd | loop/ours fwd |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch, n in sorted({(r["B"], r["n"]) for r in result["solvers"]}):
        o, pb, pl = (by[(batch, n, s)] for s in ("ours", "pot_batch", "pot_loop"))
        cells = [o["fwd_s"], pb["fwd_s"], pl["fwd_s"], o["fwd_bwd_s"], pb["fwd_bwd_s"], pl["fwd_bwd_s"]]
        lines.append(
            f"| {batch} | {n} | "
            + " | ".join(f"{c * 1e3:.2f}" for c in cells)
            + f" | {pb['fwd_s'] / o['fwd_s']:.1f}x | {pl['fwd_s'] / o['fwd_s']:.0f}x |"
        )
    lines += ["", "\\* extrapolated from the timed subset.", ""]
    if "targets" in summ:
        t, met = summ["targets"], {k: "met" if v else "NOT met" for k, v in summ["met"].items()}
        lines += [
            "Targets at B=256, n=m=64 (forward): "
            f"vs POT batch {t['vs_pot_batch']:.1f}x (target >= 1.5x: {met['vs_pot_batch']}); "
            f"vs POT loop {t['vs_pot_loop']:.0f}x (target >= 50x: {met['vs_pot_loop']}); "
            f"OT loss share of a step {t['ot_step_share']:.1%} (target <= 15%: {met['ot_step_share']}).",
            "",
        ]
    tok = step["tokens"]
    lines += [
        f"Training step, batch {result['step_batch']}, max_length {tok['truncated_at']}, all-MiniLM-L6-v2 "
        f"teacher and student, real Bible verses (mean {tok['swahili_mean']:.0f} Swahili / "
        f"{tok['english_mean']:.0f} English WordPiece tokens before truncation), no optimizer step; "
        f"median ms over {result['step_steps']} steps. `loss` is the whole objective forward (for OT: "
        "token costs, marginals, Sinkhorn, diagnostics); the OT backward through the costs is inside "
        "`backward`.",
        "",
        "| objective | teacher fwd | student fwd | loss | backward | step | loss share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("ot", "mse"):
        ms = {phase: f"{seconds * 1e3:.1f}" for phase, seconds in step[name].items()}
        share = step[name]["loss"] / step[name]["step"]
        lines.append(
            f"| {name} | {ms['teacher_fwd']} | {ms['student_fwd']} | {ms['loss']} | {ms['backward']} "
            f"| {ms['step']} | {share:.1%} |"
        )
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    """Put ``section`` (starting "## Sinkhorn") into ``path``, keeping every other section."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    match = re.search(r"^## Sinkhorn\n.*?(?=^## |\Z)", text, re.S | re.M)
    if match:
        rest = text[match.end() :]
        text = text[: match.start()] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_atomic(path, text)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def device_markdown(result: dict) -> str:
    """The device run's tables (printed and stored in its JSON; RESULTS.md is left alone)."""
    env, bw = result["env"], result["copy_bandwidth"]
    lines = [
        f"## Sinkhorn on {env['device_name']}",
        "",
        f"Command: `{env['command']}` ({env['date']}; torch {env['torch']} (CUDA {env['cuda']}), "
        f"POT {env['pot']}). eps {EPS}, {ITERS} iterations, uniform marginals; median ms over "
        f"{result['repeats']} repeats, a device sync around every call. Copy bandwidth: "
        f"**{bw['gb_per_s']:.0f} GB/s** (device-to-device copy of {bw['bytes_copied'] / 2**20:.0f} MiB, "
        "read + write counted). Byte model per solve: " + result["byte_model"] + " Marginal L1: "
        "|P 1 - a|_1 + |P^T 1 - b|_1 of one untimed solve, max over the batch (the dtype's accuracy).",
        "",
        "| dtype | B | n=m | solver | fwd ms | fwd+bwd ms | model MB | implied GB/s | of copy BW "
        "| floor ms | solver / ours fwd | marginal L1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["solvers"].items():
        ours = {(r["B"], r["n"]): r["fwd_s"] for r in rows if r["solver"] == "ours"}
        for r in rows:
            base = ours.get((r["B"], r["n"]))
            ratio = f"{r['fwd_s'] / base:.1f}x" if base else "n/a"
            lines.append(
                f"| {name} | {r['B']} | {r['n']} | {r['solver']} | {r['fwd_s'] * 1e3:.3f} | "
                f"{r['fwd_bwd_s'] * 1e3:.3f} | {r['model_bytes'] / 1e6:.2f} | {r['implied_gb_per_s']:.1f} | "
                f"{r['fraction_of_copy_bw']:.1%} | {r['floor_s'] * 1e3:.3f} | {ratio} "
                f"| {r.get('marginal_l1', float('nan')):.1e} |"
            )
    if result["failures"]:
        lines += ["", "Failed (left out): " + "; ".join(f"{k}: {v}" for k, v in result["failures"].items())]
    if result.get("step"):
        lines += [
            "",
            f"Training step, batch {result['step_batch']}, max_length 64, all-MiniLM-L6-v2 teacher and "
            f"student in the dtype, fp32 loss math; median ms over {result['step_steps']} steps.",
            "",
            "| dtype | objective | teacher fwd | student fwd | loss | backward | step | loss share |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, step in result["step"].items():
            for objective in ("ot", "mse"):
                ms = {phase: f"{sec * 1e3:.2f}" for phase, sec in step[objective].items()}
                share = step[objective]["loss"] / step[objective]["step"]
                lines.append(
                    f"| {name} | {objective} | {ms['teacher_fwd']} | {ms['student_fwd']} | {ms['loss']} "
                    f"| {ms['backward']} | {ms['step']} | {share:.1%} |"
                )
    return "\n".join(lines) + "\n"


BYTE_MODEL = (
    "bytes = (2 * iters + 2) * B * n * m * s + iters * B * (n + m) * s: each iteration reads the "
    "(B, n, m) kernel (exp domain, ours) or cost (log domain, POT) once per half-step and writes "
    "the scalings/potentials, plus one read of the cost and one write of the plan; s = 4 for ours "
    "(bf16 is solved in fp32), the input dtype's size for POT. A lower bound (logits/kernel builds "
    "and logsumexp temporaries add passes); 'floor' = model bytes / copy bandwidth, 'implied' = "
    "model bytes / measured fwd time."
)


def device_main(args: argparse.Namespace, batches: list[int], sizes: list[int], step_batch: int) -> None:
    """--device / --dtypes other than the CPU fp32 default: the solvers (and the step) on the device."""
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
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (TF32 would change the numbers)
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"
    load_before = os.getloadavg()
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
            steps[dtype_name] = bench_step(step_batch, 64, args.steps, device, dtype, args.bible)
    result = {
        "env": {
            "command": " ".join(["python", "bench/sinkhorn.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "device": str(device),
            "device_name": name,
            "cuda": torch.version.cuda,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "pot": ot.__version__,
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
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
    section = device_markdown(result)
    result["markdown"] = section
    print(section)
    if not args.quick:
        out = args.out or HERE / "results" / f"sinkhorn-{device.type}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and steps; write nothing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loop-items", type=int, default=16, help="items timed for the POT loop")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed per objective")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default results/sinkhorn.json; results/sinkhorn-DEVICE.json "
        "with --device/--dtypes)",
    )
    parser.add_argument(
        "--results-md",
        type=Path,
        default=HERE / "RESULTS.md",
        help="the CPU fp32 run rewrites its Sinkhorn section here; a device run never does",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the solvers run")
    parser.add_argument(
        "--dtypes",
        type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
        default=["fp32"],
        help="comma list of fp32, bf16, fp16 (default fp32)",
    )
    parser.add_argument("--batches", type=int_list, help="comma list of B (default 32,256)")
    parser.add_argument("--sizes", type=int_list, help="comma list of n = m (default 32,64,128)")
    parser.add_argument("--no-step", action="store_true", help="skip part 2 (the MiniLM training step)")
    parser.add_argument("--bandwidth-mib", type=int, default=1024, help="size of the copy timed (device run)")
    parser.add_argument(
        "--bible", type=Path, default=BIBLE, help="folder with Swahili-NT.xml and English-KJV-NT.xml"
    )
    args = parser.parse_args()
    if args.quick:
        batches, sizes, args.repeats, args.loop_items, args.steps, step_batch = [4], [8], 2, 2, 1, 2
    else:
        batches, sizes, step_batch = [32, 256], [32, 64, 128], 16
    batches, sizes = args.batches or batches, args.sizes or sizes
    if args.device != "cpu" or args.dtypes != ["fp32"]:
        device_main(args, batches, sizes, step_batch)
        return
    args.out = args.out or HERE / "results" / "sinkhorn.json"
    try:
        import geomloss  # noqa: F401

        geomloss_note = "importable but not wired in"
    except ImportError:
        geomloss_note = "skipped, not installed (and deliberately not pip-installed)"

    load_before = os.getloadavg()
    rows = bench_solvers(batches, sizes, args.repeats, args.loop_items)
    step = bench_step(step_batch, 64, args.steps, bible=args.bible)
    result = {
        "env": {
            "command": " ".join(["python", "bench/sinkhorn.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "pot": ot.__version__,
            "geomloss": geomloss_note,
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "eps": EPS,
        "iters": ITERS,
        "loop_items": args.loop_items,
        "step_batch": step_batch,
        "step_steps": args.steps,
        "solvers": rows,
        "step": step,
        "summary": summary(rows, step),
    }
    section = markdown(result)
    print(section)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, json.dumps(result, indent=2) + "\n")
        replace_section(args.results_md, section)
        print(f"wrote {args.out} and the Sinkhorn section of {args.results_md}")


if __name__ == "__main__":
    main()
