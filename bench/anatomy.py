"""One training step taken apart, in one process: where the time goes and how close the real work
comes to what the machine can do. Used by bench/train.py (which runs it once per configuration in
a fresh subprocess); runnable alone:

    python bench/anatomy.py --config configs/default.yaml --steps 12 [key=value ...]

It sets up the trainer's own `Run` (train/run.py: the same models, stream, collator and objective),
then takes the steps `train/loop.py:micro_step` takes, timing each phase: the frozen teacher's
forward (English), the student's forward (foreign), the objective, backward, optimizer step, and
the wait for the next batch. FLOPs are counted per sequence from the encoder's shapes (layers L,
width d, FFN f; a sequence of n tokens costs L * (2n(4d^2 + 2df) + 4n^2 d) forward, backward twice
that; embeddings, norms and the loss are left out), for the real tokens (attention mask) and for
every padded position, over the work actually done: the student's forward and backward, and the
teacher's forward unless the teacher cache replaced it. The machine's dense fp32 rate is measured in
the same process: torch.mm at the encoder's own projection shapes (tokens x d times d x f, and
d x d), at the same thread count.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dist_optical.artifacts import MARKER  # noqa: E402
from dist_optical.config import load_config  # noqa: E402
from dist_optical.engine import dist  # noqa: E402
from dist_optical.train.run import setup_run  # noqa: E402

PHASES = ("data", "teacher forward", "student forward", "loss", "backward", "optimizer step")


def encoder_flops(lengths: torch.Tensor, layers: int, width: int, ffn: int) -> float:
    """Forward FLOPs of a BERT-style encoder over sequences of these token counts."""
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


def anatomy(config: Path, overrides: list[str], steps: int, skip: int) -> dict:
    cfg = load_config(config, [*overrides, f"train.max_steps={steps}", "train.eval_every=0"])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "run").mkdir()
        run = setup_run(cfg, Path(tmp) / "run", "", dist.setup())
        cache = None  # the cache's record: size, texts, and how long its (first) build took
        if run.teacher_cache is not None:
            cache = json.loads((run.teacher_cache.folder / MARKER).read_text(encoding="utf-8"))
            cache["bytes"] = sum(f["bytes"] for f in cache["files"].values())
        model_cfg = run.engine.module.config
        shape = (model_cfg.num_hidden_layers, model_cfg.hidden_size, model_cfg.intermediate_size)
        batches, records = iter(run.loader), []
        run.engine.train()
        for _ in range(steps):
            times = {}
            t = time.perf_counter()
            batch = next(batches)
            times["data"] = time.perf_counter() - t
            t = time.perf_counter()
            english = run.encode_english(batch)
            times["teacher forward"], t = time.perf_counter() - t, time.perf_counter()
            foreign = run.encode("student", batch["src_input_ids"], batch["src_attention_mask"])
            pivot = run.encode_pivot_by_student(batch) if run.objective.needs_student_english else None
            times["student forward"], t = time.perf_counter() - t, time.perf_counter()
            loss, _ = run.objective(english, foreign, pivot)
            times["loss"], t = time.perf_counter() - t, time.perf_counter()
            run.engine.backward(loss)
            times["backward"], t = time.perf_counter() - t, time.perf_counter()
            run.engine.step()
            times["optimizer step"] = time.perf_counter() - t
            tokens = {}
            masks = {"teacher": batch["tgt_attention_mask"], "student": batch["src_attention_mask"]}
            if pivot is not None:  # the student's pass over the pivot side (the `english` term)
                masks["student pivot"] = pivot.input_ids != run.student_tok.pad_token_id
            for side, mask in masks.items():
                tokens[side] = {"real": mask.sum(1), "padded": torch.full((len(mask),), mask.shape[1])}
            records.append({"times": times, "tokens": tokens})
        run.engine.destroy()
    timed = records[skip:]
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
    peak = matmul_rate(max(64, mean_tokens), shape[1], shape[2])
    total = {phase: sum(r["times"][phase] for r in timed) for phase in PHASES}
    return {
        "overrides": overrides,
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(json.dumps(anatomy(args.config, args.overrides, args.steps, args.skip)))


if __name__ == "__main__":
    main()
