"""The optimizer step against the memory-bandwidth bound: every AdamW path a user could pick, for the
student's parameters (multilingual-e5-small's shape, the trimmed and the full vocabulary).

    python bench/optimizer.py          # writes bench/results/optimizer.json, prints the table
    python bench/optimizer.py --quick  # configs/tiny.yaml's shape, a few repeats (seconds)

AdamW reads the parameter, its gradient and both moments and writes the parameter and the moments:
28 bytes per fp32 parameter at least. The bound is those bytes over the machine's measured bandwidth
for the same access pattern (`a.add_(b)` over large fp32 tensors: read a and b, write a); a path's
fraction of the bound is bound / measured. Paths, one rank in this process:
- torch.optim.AdamW as a for-loop, `foreach` and `fused`;
- DeepSpeed's CPU Adam (`DeepSpeedCPUAdam`, its AVX kernel, JIT-built on first use);
- a DeepSpeed engine at ZeRO 0, 1, 2 and 3 (configs/ds/zeroK.json: torch's fused AdamW), fp32;
and the engines again at 2 ranks (`torchrun`, one thread each; the bound is still one update of
every parameter: at ZeRO-0 both ranks update all of them). The engine rows time `engine.step()`;
`backward + step` adds the backward of a tiny batch (2 x 8 tokens), where ZeRO-2/3 reduce and
partition gradients.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from common import REPO, TINY, Parser, environment, finish, markdown_table, run_child, write_result

from dist_optical.config import load_config
from dist_optical.engine import dist
from dist_optical.engine.deepspeed import build_ds_config, wrap_student

BYTES_PER_PARAM = 28  # AdamW in fp32: read p, g, m, v; write p, m, v
E5_SMALL = {"layers": 12, "width": 384, "ffn": 1536, "heads": 12, "positions": 512}
VOCABS = {"trimmed": 30_000, "full": 250_037}  # the default run trims to ~30k rows of e5's 250,037
TORCH_PATHS = {"torch AdamW, for-loop": {"foreach": False}, "torch AdamW, foreach": {"foreach": True},
               "torch AdamW, fused": {"fused": True}}  # fmt: skip
STAGES = (0, 1, 2, 3)


def measure_bandwidth(mib: int, repeats: int) -> float:
    """Bytes per second that ``a.add_(b)`` moves (read a and b, write a) over ``mib`` MiB of fp32 each:
    AdamW's own access pattern, read-modify-write in place (a plain copy into untouched memory would
    also read the destination's lines before writing them, which AdamW never pays)."""
    a, b = torch.randn(mib * 2**18), torch.randn(mib * 2**18)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a.add_(b, alpha=1e-3)
        times.append(time.perf_counter() - start)
    return 3 * a.numel() * 4 / statistics.median(times[1:])


def student(vocab: int, shape: dict) -> torch.nn.Module:
    """A randomly initialised BERT of ``shape`` with ``vocab`` embedding rows (the optimizer's work
    depends on the parameter count only)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=shape["width"], num_hidden_layers=shape["layers"],
                        num_attention_heads=shape["heads"], intermediate_size=shape["ffn"],
                        max_position_embeddings=shape["positions"])  # fmt: skip
    return BertModel(config, add_pooling_layer=False)


def tiny_backward(model: torch.nn.Module, backward, vocab: int) -> None:
    """A forward and ``backward`` on 2 x 8 tokens: every parameter's gradient, at almost no compute."""
    ids = torch.arange(16).view(2, 8) % vocab
    backward(model(input_ids=ids).last_hidden_state.float().pow(2).mean())


def time_steps(backward_and_step, step, repeats: int) -> dict:
    """Median seconds of ``step`` alone (after a tiny backward) and of backward + step, after a warm-up."""
    steps, both = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        backward_and_step()
        middle = time.perf_counter()
        step()
        end = time.perf_counter()
        if i:
            steps.append(end - middle)
            both.append(end - start)
    return {"step_s": statistics.median(steps), "backward_step_s": statistics.median(both)}


def torch_row(name: str, kwargs: dict, vocab: int, shape: dict, repeats: int) -> dict:
    model = student(vocab, shape)
    if name == "DeepSpeedCPUAdam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        start = time.perf_counter()
        optimizer = DeepSpeedCPUAdam(model.parameters(), lr=2e-5, weight_decay=0.01, adamw_mode=True)
        kwargs = {"build_or_load_s": round(time.perf_counter() - start, 1)}
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, **kwargs)

    def backward():
        optimizer.zero_grad(set_to_none=False)
        tiny_backward(model, lambda loss: loss.backward(), vocab)

    return {"path": name, "ranks": 1, **kwargs, **time_steps(backward, optimizer.step, repeats),
            "params": sum(p.numel() for p in model.parameters())}  # fmt: skip


def engine_row(stage: int, vocab: int, shape: dict, repeats: int, env: dist.DistEnv) -> dict:
    """A DeepSpeed engine over the student, as the trainer builds it (`build_ds_config`, fp32)."""
    overrides = [f"train.deepspeed=configs/ds/zero{stage}.json", "train.precision=fp32"]
    cfg = load_config(REPO / "configs" / "default.yaml", overrides)
    engine, _ = wrap_student(student(vocab, shape), build_ds_config(cfg.train, env.world_size, stage))
    engine.train()
    row = time_steps(lambda: tiny_backward(engine, engine.backward, vocab), engine.step, repeats)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    engine.destroy()
    return {"path": f"DeepSpeed ZeRO-{stage}, torch fused AdamW", "ranks": env.world_size, "stage": stage,
            **row, "params": params}  # fmt: skip


def with_bound(row: dict, bandwidth: float) -> dict:
    """The row with its bound: one update of every parameter (28 bytes each) over the bandwidth."""
    bound = BYTES_PER_PARAM * row["params"] / bandwidth
    return {**row, "bound_s": bound, "fraction_of_bound": bound / row["step_s"]}


def vocab_rows(args, vocab: str) -> int:
    """The embedding rows of ``vocab`` ("trimmed", "full"); with --quick, the tiny model's."""
    return args.tiny_vocab if args.quick else VOCABS[vocab]


def engine_rows(args, vocab: str, env: dist.DistEnv) -> list[dict]:
    """The engine at each ZeRO stage, at this process's world size."""
    rows = []
    for stage in STAGES:
        rows.append(
            {"vocab": vocab, **engine_row(stage, vocab_rows(args, vocab), args.shape, args.repeats, env)}
        )
        if env.world_size == 1:  # under torchrun the parent reads rank 0's JSON, stdout's last line
            print(f"{vocab} ZeRO-{stage}: {1e3 * rows[-1]['step_s']:.0f} ms", flush=True)
    return rows


def worker(args) -> None:
    """One rank of the 2-rank engine rows (under torchrun): rank 0 prints them as one JSON line."""
    env = dist.setup()
    rows = [row for vocab in args.vocabs for row in engine_rows(args, vocab, env)]
    if env.is_main:
        print(json.dumps(rows))


def table(rows: list[dict]) -> str:
    return markdown_table(
        ["vocabulary", "path", "ranks", "params (M)", "step ms", "backward + step ms", "bound ms",
         "fraction of bound"],
        [[r["vocab"], r["path"], r["ranks"], f"{r['params'] / 1e6:.1f}", f"{1e3 * r['step_s']:.0f}",
          f"{1e3 * r['backward_step_s']:.0f}", f"{1e3 * r['bound_s']:.0f}", f"{r['fraction_of_bound']:.2f}"]
         for r in rows],
        "llrrrrrr",
    )  # fmt: skip


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--vocabs", default="trimmed,full", help="comma-separated: trimmed, full")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a rank of the 2-rank rows
    args = parser.parse(repeats=2)
    args.vocabs = [v.strip() for v in args.vocabs.split(",") if v.strip()]
    tiny = load_config(TINY).model.tiny
    quick_shape = {"layers": tiny["num_hidden_layers"], "width": tiny["hidden_size"],
                   "ffn": tiny["intermediate_size"], "heads": tiny["num_attention_heads"],
                   "positions": tiny.get("max_position_embeddings", 128)}  # fmt: skip
    args.shape = quick_shape if args.quick else E5_SMALL
    args.tiny_vocab = 1000
    if args.worker:
        worker(args)
        return

    env = environment()
    bandwidth = measure_bandwidth(16 if args.quick else 512, args.repeats)
    print(f"bandwidth, a.add_(b): {bandwidth / 1e9:.1f} GB/s (read + write)", flush=True)
    rows = []
    single = dist.setup()
    for vocab in args.vocabs:
        for name, kwargs in [*TORCH_PATHS.items(), ("DeepSpeedCPUAdam", {})]:
            row = torch_row(name, kwargs, vocab_rows(args, vocab), args.shape, args.repeats)
            rows.append({"vocab": vocab, **row})
            print(f"{vocab} {name}: {1e3 * row['step_s']:.0f} ms", flush=True)
        rows += engine_rows(args, vocab, single)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(dist.free_port()), str(Path(__file__)), "--worker", "--repeats", str(args.repeats),
           "--vocabs", ",".join(args.vocabs), *(["--quick"] if args.quick else [])]  # fmt: skip
    child_threads = max(1, (os.cpu_count() or 2) // 2)
    out = run_child(cmd, child_threads, "the 2-rank engine rows")
    rows += json.loads(out.strip().splitlines()[-1])
    rows = [with_bound(r, bandwidth) for r in rows]
    print(table(rows))
    result = {"env": finish(env), "bandwidth_gb_s": bandwidth / 1e9, "bytes_per_param": BYTES_PER_PARAM,
              "shape": args.shape, "rows": rows, "table": table(rows)}  # fmt: skip
    write_result(args, "optimizer.json", result)


if __name__ == "__main__":
    main()
