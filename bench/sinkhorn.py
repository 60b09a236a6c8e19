"""Batched Sinkhorn speed against POT, and the OT loss's share of a MiniLM training step (CPU, fp32).

1. Solvers, B in {32, 256} x n = m in {32, 64, 128}, 50 iterations, eps 0.05, costs 1 - cos of random
   64-d vectors, uniform marginals: `dist_optical.ot.sinkhorn`, `ot.batch.solve_batch(log_sinkhorn)`
   and a Python loop of `ot.bregman.sinkhorn_log` (the first few items timed, scaled to B); forward,
   and forward + backward of sum <P, C> (envelope gradient); medians of repeats after a warm-up.
2. One training step (batch 16, max_length 64, Bible verses, all-MiniLM-L6-v2 teacher and student,
   no optimizer step) with the OT objective and with MSE; per-phase medians.

    python bench/sinkhorn.py           # results/sinkhorn.json and the Sinkhorn section of RESULTS.md
    python bench/sinkhorn.py --quick   # seconds: tiny shapes, a tiny BERT; JSON to a temp folder only
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path

import ot
import torch
from common import (
    REPO,
    Parser,
    Stopwatch,
    bench_encoder,
    device_sync,
    environment,
    finish,
    int_list,
    interleaved_medians,
    markdown_table,
    write_result,
)

from dist_optical.config import ContrastiveConfig, OTConfig
from dist_optical.data.collate import tokenize
from dist_optical.files import atomic_write
from dist_optical.models import encode, freeze, load_tokenizer, special_ids
from dist_optical.objectives import Objective
from dist_optical.ot import sinkhorn

RESULTS_MD = REPO / "bench" / "RESULTS.md"
BIBLE = REPO.parent / "shared" / "data" / "bible"
MODEL = "all-MiniLM-L6-v2"
EPS = 0.05
ITERS = 50
TARGETS = {"vs_pot_batch": 1.5, "vs_pot_loop": 50.0, "ot_step_share": 0.15}
PHASES = ("teacher_fwd", "student_fwd", "loss", "backward")
SOLVER_COLUMNS = ["B", "n=m", "ours fwd", "POT batch fwd", "POT loop fwd*", "ours fwd+bwd",
                  "POT batch fwd+bwd", "POT loop fwd+bwd*", "batch/ours fwd", "loop/ours fwd"]  # fmt: skip
STEP_COLUMNS = ["teacher fwd", "student fwd", "loss", "backward", "step", "loss share"]
QUICK = dict(batches=[4], sizes=[8], repeats=2, loop_items=2, steps=1, step_batch=2)


def solver_args(doc: str) -> Parser:
    """The arguments this script and bench/sinkhorn_device.py share."""
    parser = Parser(doc)
    parser.add_argument("--batches", type=int_list, default=[32, 256], help="comma list of B")
    parser.add_argument("--sizes", type=int_list, default=[32, 64, 128], help="comma list of n = m")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loop-items", type=int, default=16, help="items timed for the POT loop")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed per objective")
    parser.add_argument("--step-batch", type=int, default=16, help="the training step's batch")
    parser.add_argument("--bible", type=Path, default=BIBLE, help="has Swahili-NT.xml and English-KJV-NT.xml")
    return parser


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

    def pot_batch(cost):  # tol=0 never stops early: exactly ITERS iterations
        return ot.batch.solve_batch(cost, EPS, a, b, ITERS, 0.0, method="log_sinkhorn", grad="detach").plan

    def pot_loop(cost):
        return torch.stack([
            ot.bregman.sinkhorn_log(a[i], b[i], cost[i], EPS, numItermax=ITERS, stopThr=0.0, warn=False)
            for i in range(loop_items)
        ])  # fmt: skip

    return {"ours": ours, "pot_batch": pot_batch, "pot_loop": pot_loop}


def marginal_error(solve, cost, a, b, sync) -> float:
    """One untimed solve and backward: the L1 error of both marginals, max over the batch (NaN
    stays NaN: a broken solve shows). Raises whatever a solver that cannot run raises."""
    plan = solve(cost).float()
    k = len(plan)  # the POT loop solves only the first items
    marginal = (plan.sum(2) - a[:k].float()).abs().sum(1) + (plan.sum(1) - b[:k].float()).abs().sum(1)
    envelope_backward(cost, solve)
    sync()
    return float(marginal.max())


def bench_solvers(
    batches: list[int],
    sizes: list[int],
    repeats: int,
    loop_items: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    failures: dict[str, str] | None = None,
) -> list[dict]:
    """Rows {B, n, solver, fwd_s, fwd_bwd_s} of the problem on ``device`` in ``dtype``. With
    ``failures`` (the GPU path) a solver that fails (e.g. POT in bf16) is left out with its error
    there instead of stopping the bench, and the rows carry marginal_l1."""
    rows, sync = [], device_sync(device)
    for batch in batches:
        for n in sizes:
            cost, a, b = (t.to(device=device, dtype=dtype) for t in problem(batch, n))
            items = min(loop_items, batch)
            fns, errors = {}, {}
            for name, solve in solvers(a, b, items).items():
                if failures is not None:
                    try:
                        errors[name] = marginal_error(solve, cost, a, b, sync)
                    except Exception as err:  # noqa: BLE001 - any failure is the finding
                        failures[f"{name} B={batch} n={n}"] = why = f"{type(err).__name__}: {str(err)[:300]}"
                        print(f"B={batch:4d} n={n:4d} {name:9s} FAILED: {why[:200]}")
                        continue
                fns[name, "fwd_s"] = lambda solve=solve, cost=cost: solve(cost)
                fns[name, "fwd_bwd_s"] = lambda solve=solve, cost=cost: envelope_backward(cost, solve)
            medians = interleaved_medians(fns, repeats, sync)
            for name in dict.fromkeys(name for name, _ in fns):
                scale = batch / items if name == "pot_loop" else 1.0
                fwd, bwd = scale * medians[name, "fwd_s"], scale * medians[name, "fwd_bwd_s"]
                row = {"B": batch, "n": n, "solver": name, "fwd_s": fwd, "fwd_bwd_s": bwd}
                if name in errors:
                    row["marginal_l1"] = errors[name]
                rows.append(row)
                print(f"B={batch:4d} n={n:4d} {name:9s} fwd {fwd * 1e3:9.2f} ms, fwd+bwd {bwd * 1e3:9.2f} ms")
    return rows


def bible_pairs(count: int, bible: Path = BIBLE) -> list[tuple[str, str]]:
    """The first ``count`` (Swahili, English) verse pairs present in both XML files (read only)."""
    seg = re.compile(r'<seg id="([^"]+)"[^>]*>\s*(.*?)\s*</seg>', re.S)

    def verses(name: str) -> dict[str, str]:
        return {vid: text for vid, text in seg.findall((bible / name).read_text(encoding="utf-8")) if text}

    swahili, english = verses("Swahili-NT.xml"), verses("English-KJV-NT.xml")
    return [(swahili[vid], english[vid]) for vid in swahili if vid in english][:count]


def timed_step(teacher, student, special, objective, english, foreign, sync) -> dict[str, float]:
    """Seconds per phase of one step: teacher forward (no grad), student forward, loss, backward;
    ``sync`` ends each phase. The loss math is fp32 whatever the encoders' dtype (as in training)."""
    watch = Stopwatch(sync)
    with torch.no_grad():
        t_enc = encode(teacher, english["input_ids"], english["attention_mask"], special)
    watch.lap("teacher_fwd")
    s_enc = encode(student, foreign["input_ids"], foreign["attention_mask"], special)
    watch.lap("student_fwd")
    if t_enc.pooled.dtype != torch.float32:
        t_enc, s_enc = t_enc.float(), s_enc.float()
    loss, _ = objective(t_enc, s_enc)
    watch.lap("loss")
    loss.backward()
    watch.lap("backward")
    student.zero_grad(set_to_none=True)
    return watch.laps | {"step": watch.total}


def bench_step(
    batch: int,
    max_length: int,
    steps: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    bible: Path = BIBLE,
    quick: bool = False,
) -> dict[str, dict[str, float]]:
    """Median seconds per phase of a training step, for the OT and the MSE objective, both encoders
    on ``device`` in ``dtype`` (``quick``: a tiny random BERT)."""
    tokenizer = load_tokenizer(MODEL)
    teacher = freeze(bench_encoder(MODEL, tokenizer, quick)).to(device=device, dtype=dtype)
    student = bench_encoder(MODEL, tokenizer, quick).to(device=device, dtype=dtype).train()
    sync, special = device_sync(device), special_ids(tokenizer)
    pairs = bible_pairs(batch * (steps + 1), bible)
    objectives = {name: Objective({name: 1.0}, OTConfig(), ContrastiveConfig()) for name in ("ot", "mse")}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in objectives}
    for i in range(0, len(pairs), batch):
        foreign = tokenize(tokenizer, [sw for sw, _ in pairs[i : i + batch]], max_length)
        english = tokenize(tokenizer, [en for _, en in pairs[i : i + batch]], max_length)
        foreign, english = ({k: v.to(device) for k, v in side.items()} for side in (foreign, english))
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


def step_rows(step: dict, digits: int = 1) -> list[list[str]]:
    """[objective, ms per phase..., step ms, loss share] for the OT and the MSE step."""
    rows = []
    for name in ("ot", "mse"):
        ms = [f"{step[name][phase] * 1e3:.{digits}f}" for phase in (*PHASES, "step")]
        rows.append([name, *ms, f"{step[name]['loss'] / step[name]['step']:.1%}"])
    return rows


def summary(rows: list[dict], step: dict) -> dict:
    """Speed-ups of ours over each POT solver at every shape, and the targets at B=256, n=64."""
    by = {(r["B"], r["n"], r["solver"]): r for r in rows}
    speedups = {
        f"B{batch}_n{n}_{solver}": {
            "fwd": row["fwd_s"] / by[batch, n, "ours"]["fwd_s"],
            "fwd_bwd": row["fwd_bwd_s"] / by[batch, n, "ours"]["fwd_bwd_s"],
        }
        for (batch, n, solver), row in by.items()
        if solver != "ours"
    }
    out = {"speedups": speedups, "ot_step_share": step["ot"]["loss"] / step["ot"]["step"]}
    if "B256_n64_pot_batch" in speedups:
        out["targets"] = {
            "vs_pot_batch": speedups["B256_n64_pot_batch"]["fwd"],
            "vs_pot_loop": speedups["B256_n64_pot_loop"]["fwd"],
            "ot_step_share": out["ot_step_share"],
        }
        out["met"] = {
            k: v <= TARGETS[k] if k == "ot_step_share" else v >= TARGETS[k] for k, v in out["targets"].items()
        }
    return out


def solver_table(result: dict) -> str:
    by = {(r["B"], r["n"], r["solver"]): r for r in result["solvers"]}
    rows = []
    for batch, n in sorted({(r["B"], r["n"]) for r in result["solvers"]}):
        o, pb, pl = (by[batch, n, s] for s in ("ours", "pot_batch", "pot_loop"))
        cells = [o["fwd_s"], pb["fwd_s"], pl["fwd_s"], o["fwd_bwd_s"], pb["fwd_bwd_s"], pl["fwd_bwd_s"]]
        ratios = [f"{pb['fwd_s'] / o['fwd_s']:.1f}x", f"{pl['fwd_s'] / o['fwd_s']:.0f}x"]
        rows.append([batch, n, *(f"{c * 1e3:.2f}" for c in cells), *ratios])
    return markdown_table(SOLVER_COLUMNS, rows)


def markdown(result: dict) -> str:
    """The "## Sinkhorn" section of bench/RESULTS.md."""
    env, summ, step, tok = result["env"], result["summary"], result["step"], result["step"]["tokens"]
    lines = [
        "## Sinkhorn",
        "",
        f"Command: `{env['command']}` ({env['date']}; {env['threads']} CPU threads, "
        f"torch {env['versions']['torch']}, POT {env['versions']['pot']}; load average "
        f"{env['load_before']} before, {env['load_after']} after; the machine is shared, so expect noise).",
        "",
        f"fp32, eps {EPS}, {ITERS} iterations, uniform marginals, costs 1 - cos of random 64-d vectors; "
        "median ms. fwd+bwd = forward and backward of sum <P, C> with P solved without autograd "
        "(envelope) for every solver. POT loop: a Python loop of `ot.bregman.sinkhorn_log`, only the "
        f"first {result['loop_items']} items timed and scaled to B (extrapolated). "
        f"GeomLoss: {result['geomloss']}.",
        "",
        solver_table(result),
        "",
        "\\* extrapolated from the timed subset.",
        "",
    ]
    if "targets" in summ:
        t, met = summ["targets"], {k: "met" if v else "NOT met" for k, v in summ["met"].items()}
        lines += [
            "Targets at B=256, n=m=64 (forward): "
            f"vs POT batch {t['vs_pot_batch']:.1f}x (target >= 1.5x: {met['vs_pot_batch']}); "
            f"vs POT loop {t['vs_pot_loop']:.0f}x (target >= 50x: {met['vs_pot_loop']}); "
            f"OT loss share of a step {t['ot_step_share']:.1%} (target <= 15%: {met['ot_step_share']}).",
            "",
        ]
    lines += [
        f"Training step, batch {result['step_batch']}, max_length {tok['truncated_at']}, all-MiniLM-L6-v2 "
        f"teacher and student, real Bible verses (mean {tok['swahili_mean']:.0f} Swahili / "
        f"{tok['english_mean']:.0f} English WordPiece tokens before truncation), no optimizer step; "
        f"median ms over {result['step_steps']} steps. `loss` is the whole objective forward (for OT: "
        "token costs, marginals, Sinkhorn, diagnostics); the OT backward through the costs is inside "
        "`backward`.",
        "",
        markdown_table(["objective", *STEP_COLUMNS], step_rows(step)),
    ]
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    """Put ``section`` (starting "## Sinkhorn") into ``path``, keeping every other section."""
    text = path.read_text(encoding="utf-8")
    match = re.search(r"^## Sinkhorn\n.*?(?=^## |\Z)", text, re.S | re.M)
    if match:
        rest = text[match.end() :]
        text = text[: match.start()] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write(path, text, "the benchmark results")


def geomloss_note() -> str:
    try:
        import geomloss  # noqa: F401
    except ImportError:
        return "skipped, not installed (and deliberately not pip-installed)"
    return "importable but not wired in"


def main() -> None:
    args = solver_args(__doc__).parse(**QUICK)
    env = environment()
    rows = bench_solvers(args.batches, args.sizes, args.repeats, args.loop_items)
    step = bench_step(args.step_batch, 64, args.steps, bible=args.bible, quick=args.quick)
    result = {
        "env": finish(env),
        "geomloss": geomloss_note(),
        "quick": args.quick,
        "eps": EPS,
        "iters": ITERS,
        "loop_items": args.loop_items,
        "step_batch": args.step_batch,
        "step_steps": args.steps,
        "solvers": rows,
        "step": step,
        "summary": summary(rows, step),
    }
    section = markdown(result)
    print(section)
    write_result(args, "sinkhorn.json", result)
    if not args.quick:
        replace_section(RESULTS_MD, section)
        print(f"and the Sinkhorn section of {RESULTS_MD}")


if __name__ == "__main__":
    main()
