"""One training step taken apart, in one process: where the time goes and how close the real work
comes to what the machine can do. bench/train.py runs it once per configuration in a fresh process.

    python bench/anatomy.py --config configs/default.yaml --steps 12 [key=value ...]
    python bench/anatomy.py --quick     # configs/tiny.yaml, 3 steps, shards in a temp folder (seconds)

It takes the steps `train/loop.py:micro_step` takes with the trainer's own `Run`, timing each phase.
FLOPs (encoder_flops) are counted for the real tokens and for the rows computed (padding included), against
torch.mm's fp32 rate at the encoder's projection shapes. Prints one JSON object (bench/train.py
reads it) and writes it to `--out` when given.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import REPO, TINY, Parser, Stopwatch, environment, finish, write_result

from dist_optical.artifacts import MARKER
from dist_optical.config import load_config
from dist_optical.engine import dist
from dist_optical.models import pack, packable, packing_span
from dist_optical.train.run import setup_run

PHASES = ("data", "teacher forward", "student forward", "loss", "backward", "optimizer step")


def encoder_flops(lengths: torch.Tensor, layers: int, width: int, ffn: int) -> float:
    """Forward FLOPs of a BERT-style encoder over sequences of these token counts: n tokens cost
    L * (2n(4d^2 + 2df) + 4n^2 d), backward twice that; embeddings, norms and the loss left out."""
    n = lengths.double()
    return float((layers * (2 * n * (4 * width**2 + 2 * width * ffn) + 4 * n**2 * width)).sum())


def matmul_rate(tokens: int, width: int, ffn: int, seconds: float = 2.0) -> float:
    """Measured dense fp32 FLOP/s of torch.mm at the encoder's projection shapes (the best of them)."""
    best = 0.0
    for k, m in ((width, ffn), (ffn, width), (width, width)):
        a, b = torch.randn(tokens, k), torch.randn(k, m)
        for _ in range(3):
            torch.mm(a, b)  # warm-up
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            torch.mm(a, b)
            runs += 1
        best = max(best, 2.0 * tokens * k * m * runs / (time.perf_counter() - start))
    return best


def timed_step(run, batches) -> dict:
    """One step of `train/loop.py:micro_step`, each phase timed; with every side's token counts."""
    watch = Stopwatch()
    batch = next(batches)
    watch.lap("data")
    pivot = run.encode_pivot_by_teacher(batch)
    watch.lap("teacher forward")
    foreign = run.encode("student", batch["src_input_ids"], batch["src_attention_mask"])
    student_pivot = run.encode_pivot_by_student(batch) if run.objective.needs_student_english else None
    watch.lap("student forward")
    loss, _ = run.objective(pivot, foreign, student_pivot)
    watch.lap("loss")
    run.engine.backward(loss)
    watch.lap("backward")
    run.engine.step()
    watch.lap("optimizer step")
    masks = {"teacher": batch["tgt_attention_mask"], "student": batch["src_attention_mask"]}
    if pivot is not None:  # the student's pass over the pivot side (the `english` term)
        masks["student pivot"] = pivot.input_ids != run.student_tok.pad_token_id
    span = packing_span(run.engine) if run.cfg.train.pack and packable(run.engine) else None
    tokens = {
        side: {"real": mask.sum(1), "padded": computed_rows(mask, span)} for side, mask in masks.items()
    }
    return {"times": watch.laps, "tokens": tokens}


def computed_rows(mask: torch.Tensor, span: int | None) -> torch.Tensor:
    """The width of each row the encoder computes, padding included: the batch's rows at its width,
    or packed for an encoder of this ``span`` (models.pack, as models.packed_hidden runs it)."""
    if span is not None:
        plan = pack(mask, span)
        return torch.full((plan.rows,), plan.width)
    return torch.full((len(mask),), mask.shape[1])


def run_steps(
    cfg, steps: int, compile_: bool = False
) -> tuple[list[dict], tuple[int, int, int], dict | None]:
    """The trainer's own `Run` for ``cfg`` (in a temp run folder): ``steps`` timed steps, the
    encoder's (layers, width, ffn), and the teacher cache's record (size, texts, first build time).
    ``compile_``: the student through DeepSpeed's `engine.compile` (torch.compile, dynamic shapes:
    batches differ in length), its compile time inside the first steps."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "run").mkdir()
        run = setup_run(cfg, Path(tmp) / "run", "", dist.setup())
        cache = None
        if run.teacher_cache is not None:
            cache = json.loads((run.teacher_cache.folder / MARKER).read_text(encoding="utf-8"))
            cache["bytes"] = sum(f["bytes"] for f in cache["files"].values())
        model_cfg = run.engine.module.config
        shape = (model_cfg.num_hidden_layers, model_cfg.hidden_size, model_cfg.intermediate_size)
        batches = iter(run.loader)
        if compile_:
            run.engine.compile(compile_kwargs={"dynamic": True})
        run.engine.train()
        records = [timed_step(run, batches) for _ in range(steps)]
        run.engine.destroy()
    return records, shape, cache


def summarise(cfg, timed: list[dict], shape, cache: dict | None, peak_seconds: float) -> dict:
    """Step time, phase shares, padding, and real-token FLOP/s against the measured matmul rate."""
    step_s = statistics.median(sum(r["times"].values()) for r in timed)
    # The work done: the student's forward and backward (2x), and the teacher's forward unless the
    # cache replaced it (then the English side costs no FLOPs and its padding costs nothing).
    computed = {"student": 3, **({"teacher": 1} if cache is None else {})}
    if "student pivot" in timed[0]["tokens"]:
        computed["student pivot"] = 3
    flops = {}
    for kind in ("real", "padded"):
        per_step = [
            sum(times * encoder_flops(r["tokens"][side][kind], *shape) for side, times in computed.items())
            for r in timed
        ]
        flops[kind] = statistics.mean(per_step)
    real_tokens = sum(int(r["tokens"][side]["real"].sum()) for r in timed for side in computed)
    padded_tokens = sum(int(r["tokens"][side]["padded"].sum()) for r in timed for side in computed)
    mean_tokens = padded_tokens // (len(computed) * len(timed))
    peak = matmul_rate(max(64, mean_tokens), shape[1], shape[2], peak_seconds)
    total = {phase: sum(r["times"][phase] for r in timed) for phase in PHASES}
    return {
        "threads": torch.get_num_threads(),
        "encoder": dict(zip(("layers", "width", "ffn"), shape, strict=True)),
        "steps_timed": len(timed),
        "step_s": step_s,
        "samples_per_s": cfg.train.micro_batch_size / step_s,
        "phase_share": {phase: total[phase] / sum(total.values()) for phase in PHASES},
        "padding_fraction": 1 - real_tokens / padded_tokens,
        "gflop_per_step_real": flops["real"] / 1e9,
        "gflop_per_step_padded": flops["padded"] / 1e9,
        "real_gflop_s": flops["real"] / step_s / 1e9,
        "padded_gflop_s": flops["padded"] / step_s / 1e9,
        "matmul_peak_gflop_s": peak / 1e9,
        "real_fraction_of_peak": flops["real"] / step_s / peak,
        "teacher_cache": cache and {k: cache[k] for k in ("dtype", "texts", "bytes", "build_s")},
    }


def anatomy(
    config: Path,
    overrides: list[str],
    steps: int,
    skip: int,
    peak_seconds: float = 2.0,
    compile_: bool = False,
) -> dict:
    cfg = load_config(config, [*overrides, f"train.max_steps={steps}", "train.eval_every=0"])
    records, shape, cache = run_steps(cfg, steps, compile_)
    skipped = [sum(r["times"].values()) for r in records[:skip]]  # warm-up (and compile) steps
    return {"overrides": overrides, "compiled": compile_, "skipped_steps_s": skipped,
            **summarise(cfg, records[skip:], shape, cache, peak_seconds)}  # fmt: skip


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (engine.compile)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse(config=TINY, steps=3, skip=1)
    env = environment()
    with tempfile.TemporaryDirectory(prefix="bench-quick-") as shards:  # --quick: never in shards/
        overrides = [f"data.shards={shards}", *args.overrides] if args.quick else args.overrides
        result = anatomy(
            args.config, overrides, args.steps, args.skip, 0.3 if args.quick else 2.0, args.compile
        )
    result["env"] = finish(env)
    if args.out:
        write_result(args, "anatomy.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
