"""Data-pipeline throughput on the real Swahili-English Bible: is the loader ever the bottleneck?

Measures (1) shard building (read input + write tars) with 1 and 2 writer processes, from the Bible
XML (7.4k pairs, 8 shards) and from a 10x larger TSV (74k pairs, 75 shards); (2) pairs/s one loader
worker reads + tokenizes (MiniLM tokenizer, max_length 64, both sides), also read-only and with 2
workers; (3) pairs/s the trainer consumes at the default batch (16): one MiniLM step = teacher forward
without grad + student forward + backward (optimizer step left out: a faster trainer is the harder
case for the loader). Headroom = (2) per worker / (3); the target is >= 10x.

    python bench/data.py [--train-steps 5] [--train-step-s SECONDS] [--out bench/results/data.json]
    python bench/data.py --quick   # seconds: 500 TSV pairs, 5 batches, a tiny BERT; JSON to a temp folder
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from common import Parser, Stopwatch, bench_encoder, environment, finish, markdown_table, write_result

from dist_optical.config import DataConfig, data_path, load_config
from dist_optical.data import PairCollator, ShardLoader, ShardStream, build_shards, read_bitext
from dist_optical.data.collate import tokenize
from dist_optical.models import load_tokenizer

MODEL = "all-MiniLM-L6-v2"
BATCH = 16
MAX_LENGTH = 64


def build_rate(inputs: list[Path], out: Path, workers: int, repeats: int = 2, **kw) -> tuple[float, int]:
    """(pairs/s, pairs) of build_shards, best of ``repeats`` (its summary line is silenced)."""
    best, pairs = float("inf"), 0
    for _ in range(repeats):
        watch = Stopwatch()
        with contextlib.redirect_stdout(io.StringIO()):
            manifest = build_shards(inputs, out, "swh", "eng", workers=workers, **kw)
        best, pairs = min(best, watch.lap("build")), manifest["total_pairs"]
    return pairs / best, pairs


def write_big_tsv(inputs: list[Path], path: Path, copies: int, limit: int | None = None) -> Path:
    """The Bible pairs (the first ``limit``) ``copies`` times as one TSV: shards enough for 2 writers."""
    pairs = list(islice(read_bitext(inputs), limit))
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


def time_train_step(pairs: list[tuple[str, str]], steps: int, quick: bool) -> float:
    """Seconds per MiniLM training step at batch 16 (median of ``steps`` after one warm-up)."""
    tokenizer = load_tokenizer(MODEL)
    teacher = bench_encoder(MODEL, tokenizer, quick).eval()
    student = bench_encoder(MODEL, tokenizer, quick).train()
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


def shard_builds(inputs: list[Path], tmp: Path, quick: bool) -> tuple[dict[str, float], int, Path]:
    """pairs/s of building shards from the Bible XML and from the big TSV, with 1 and 2 writers; the
    Bible's pair count and its shard folder (which the loader then reads)."""
    repeats = 1 if quick else 2
    big = write_big_tsv(inputs, tmp / "big.tsv", copies=1 if quick else 10, limit=500 if quick else None)
    big_1, n_big = build_rate([big], tmp / "big", workers=1, repeats=repeats)
    big_2, _ = build_rate([big], tmp / "big", workers=2, repeats=repeats)
    shards, exclude = tmp / "swh-eng", DataConfig().exclude_books
    build_1, n_pairs = build_rate(inputs, shards, workers=1, repeats=repeats, exclude_books=exclude)
    build_2, _ = build_rate(inputs, shards, workers=2, repeats=repeats, exclude_books=exclude)
    rates = {
        "bible_xml_1_writer": build_1,
        "bible_xml_2_writers": build_2,
        f"tsv_{n_big}_pairs_1_writer": big_1,
        f"tsv_{n_big}_pairs_2_writers": big_2,
    }
    return rates, n_pairs, shards


def loader_rates(shards: Path, batches: int) -> dict[str, float]:
    """pairs/s one loader reads, reads + tokenizes (in the main process), and with 2 workers."""
    tokenizer = load_tokenizer(MODEL)
    collator = PairCollator(tokenizer, tokenizer, MAX_LENGTH)
    return {
        "read_only_1_worker": time_loader(shards, None, 0, batches),
        "read_tokenize_1_worker": time_loader(shards, collator, 0, batches),
        "read_tokenize_2_workers": time_loader(shards, collator, 2, batches),
    }


def table(results: dict) -> str:
    rates = {**results["shard_build_pairs_per_s"], **results["loader_pairs_per_s"]}
    rows = [(name.replace("_", " ") + " (pairs/s)", rate) for name, rate in rates.items()]
    rows += [
        (f"trainer step, batch {BATCH} (s)", results["train_step_s"]),
        ("trainer consumes (pairs/s)", results["trainer_pairs_per_s"]),
        ("headroom per worker (x)", results["headroom_per_worker"]),
    ]
    return markdown_table(["what", "value"], [(name, f"{value:,.2f}") for name, value in rows], "lr")


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--train-step-s", type=float, default=0.0, help="this step time, not measured")
    parser.add_argument("--batches", type=int, default=200, help="batches timed per loader measurement")
    args = parser.parse(batches=5, train_steps=1)
    env = environment()
    inputs = [data_path(load_config(), p) for p in load_config().data.bitexts[0].files]

    with tempfile.TemporaryDirectory() as tmp:
        builds, n_pairs, shards = shard_builds(inputs, Path(tmp), args.quick)
        loader = loader_rates(shards, args.batches)
        pairs = [(b["src"][0], b["tgt"][0]) for b in islice(ShardLoader(ShardStream(shards), 1), 100)]
    step_s = args.train_step_s or time_train_step(pairs, args.train_steps, args.quick)
    trainer = BATCH / step_s
    results = {
        "data": "Swahili-NT.xml + English-KJV-NT.xml (REV held out)",
        "pairs": n_pairs,
        "shard_build_pairs_per_s": builds,
        "loader_pairs_per_s": loader,
        "train_step_s": step_s,
        "train_step_measured": not args.train_step_s,
        "trainer_pairs_per_s": trainer,
        "headroom_per_worker": loader["read_tokenize_1_worker"] / trainer,
        "batch_size": BATCH,
        "max_length": MAX_LENGTH,
        "model": MODEL + (" (configs/tiny.yaml's random tiny BERT: --quick)" if args.quick else ""),
        "quick": args.quick,
        "env": finish(env),
    }
    print(table(results))
    write_result(args, "data.json", results)


if __name__ == "__main__":
    main()
