"""Data-pipeline throughput on the real Swahili-English Bible: is the loader ever the bottleneck?

Measures (1) shard building (read input + write tars) with 1 and 2 writer processes, from the Bible
XML (7.4k pairs, 8 shards) and from a 10x larger TSV (74k pairs, 75 shards); (2) pairs/s one loader
worker reads + tokenizes (MiniLM tokenizer, max_length 64, both sides), also read-only and with 2
workers; (3) pairs/s the trainer consumes at the default batch (16): one MiniLM step = teacher forward
without grad + student forward + backward (optimizer step left out: a faster trainer is the harder
case for the loader). Headroom = (2) per worker / (3); the target is >= 10x.

    python bench/data.py [--train-steps 5] [--train-step-s SECONDS] [--out bench/results/data.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from dist_optical.config import DataConfig, data_path, load_config
from dist_optical.data import PairCollator, ShardLoader, ShardStream, build_shards, read_bitext
from dist_optical.data.collate import tokenize
from dist_optical.models import load_encoder, load_tokenizer

MODEL = "all-MiniLM-L6-v2"
BATCH = 16
MAX_LENGTH = 64


def build_rate(inputs: list[Path], out: Path, workers: int, repeats: int = 2, **kw) -> tuple[float, int]:
    """(pairs/s, pairs) of build_shards, best of ``repeats`` (its summary line is silenced)."""
    best, pairs = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            manifest = build_shards(inputs, out, "swh", "eng", workers=workers, **kw)
        best, pairs = min(best, time.perf_counter() - start), manifest["total_pairs"]
    return pairs / best, pairs


def write_big_tsv(inputs: list[Path], path: Path, copies: int) -> Path:
    """The Bible pairs ``copies`` times as one TSV: enough shards for parallel writing to matter."""
    pairs = list(read_bitext(inputs))
    with path.open("w", encoding="utf-8") as f:
        f.write("key\tsrc\ttgt\n")  # declares the three columns
        for copy in range(copies):
            f.writelines(f"{p.key}#{copy}\t{p.src}\t{p.tgt}\n" for p in pairs)
    return path


def time_loader(shards: Path, collate_fn, num_workers: int, batches: int) -> float:
    """Pairs/s over ``batches`` batches, after one warm-up batch (worker start-up is not throughput)."""
    loader = iter(ShardLoader(ShardStream(shards), BATCH, collate_fn, num_workers=num_workers))
    next(loader)
    start = time.perf_counter()
    for _ in islice(loader, batches):
        pass
    return batches * BATCH / (time.perf_counter() - start)


def time_train_step(pairs: list[tuple[str, str]], steps: int) -> float:
    """Seconds per MiniLM training step at batch 16 (median of ``steps`` after one warm-up)."""
    tokenizer = load_tokenizer(MODEL)
    teacher, student = load_encoder(MODEL).eval(), load_encoder(MODEL).train()
    times = []
    for i in range(steps + 1):
        chunk = pairs[i * BATCH : (i + 1) * BATCH]
        src = tokenize(tokenizer, [s for s, _ in chunk], MAX_LENGTH)
        tgt = tokenize(tokenizer, [t for _, t in chunk], MAX_LENGTH)
        start = time.perf_counter()
        with torch.no_grad():
            english = teacher(**tgt).last_hidden_state.mean(1)
        foreign = student(**src).last_hidden_state.mean(1)
        torch.nn.functional.mse_loss(foreign, english).backward()
        student.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[steps // 2]


def write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument(
        "--train-step-s", type=float, default=0.0, help="use this step time instead of measuring"
    )
    parser.add_argument("--batches", type=int, default=200, help="batches timed per loader measurement")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data.json")
    args = parser.parse_args()
    cfg = load_config()
    load_before = os.getloadavg()[0]  # other jobs on a shared machine skew every figure: record it
    inputs = [data_path(cfg, p) for p in cfg.data.bitexts[0].files]

    with tempfile.TemporaryDirectory() as tmp:
        big = write_big_tsv(inputs, Path(tmp) / "big.tsv", copies=10)
        big_1, n_big = build_rate([big], Path(tmp) / "big", workers=1)
        big_2, _ = build_rate([big], Path(tmp) / "big", workers=2)
        shards = Path(tmp) / "swh-eng"
        exclude = DataConfig().exclude_books
        build_1, n_pairs = build_rate(inputs, shards, workers=1, exclude_books=exclude)
        build_2, _ = build_rate(inputs, shards, workers=2, exclude_books=exclude)
        tokenizer = load_tokenizer(MODEL)
        collator = PairCollator(tokenizer, tokenizer, MAX_LENGTH)
        read_only = time_loader(shards, None, 0, args.batches)
        per_worker = time_loader(shards, collator, 0, args.batches)
        two_workers = time_loader(shards, collator, 2, args.batches)
        pairs = [(b["src"][0], b["tgt"][0]) for b in islice(ShardLoader(ShardStream(shards), 1), 100)]
    step_s = args.train_step_s or time_train_step(pairs, args.train_steps)
    trainer = BATCH / step_s

    results = {
        "data": "Swahili-NT.xml + English-KJV-NT.xml (REV held out)",
        "pairs": n_pairs,
        "shard_build_pairs_per_s": {
            "bible_xml_1_writer": build_1,
            "bible_xml_2_writers": build_2,
            f"tsv_{n_big}_pairs_1_writer": big_1,
            f"tsv_{n_big}_pairs_2_writers": big_2,
        },
        "loader_pairs_per_s": {
            "read_only_1_worker": read_only,
            "read_tokenize_1_worker": per_worker,
            "read_tokenize_2_workers": two_workers,
        },
        "train_step_s": step_s,
        "train_step_measured": not args.train_step_s,
        "trainer_pairs_per_s": trainer,
        "headroom_per_worker": per_worker / trainer,
        "batch_size": BATCH,
        "max_length": MAX_LENGTH,
        "model": MODEL,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
    }
    rows = [
        ("shard build, Bible XML, 1 writer (pairs/s)", build_1),
        ("shard build, Bible XML, 2 writers (pairs/s)", build_2),
        (f"shard build, {n_big} TSV, 1 writer (pairs/s)", big_1),
        (f"shard build, {n_big} TSV, 2 writers (pairs/s)", big_2),
        ("read only, 1 worker (pairs/s)", read_only),
        ("read + tokenize, 1 worker (pairs/s)", per_worker),
        ("read + tokenize, 2 workers (pairs/s)", two_workers),
        (f"trainer step, batch {BATCH} (s)", step_s),
        ("trainer consumes (pairs/s)", trainer),
        ("headroom per worker (x)", per_worker / trainer),
    ]
    for name, value in rows:
        print(f"{name:<46} {value:>12,.2f}")
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
