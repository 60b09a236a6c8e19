"""Deterministic, partitioned streaming over bitext shards (after mosaicml/streaming).

Global order: for each (seed, epoch) the pairs form one sequence that does not depend on the number
of ranks R or workers W: the shard order is permuted, the shards' pairs are concatenated (manifest
order inside a shard), and the sequence is shuffled inside consecutive blocks of ``shuffle_buffer``
pairs (a bounded shuffle: a worker holds only the few shards a block spans).

Several sources (one per language): each source gets its own order as above, and the orders are
merged by weight: source l's k-th pair sits at time (k + u) / w_l, u uniform in [0, 1), and the epoch
sorts all pairs by time. So while every source still has pairs, a stretch of the epoch holds them in
the ratio of the weights; every pair is still seen exactly once per epoch, so a source weighted above
its share of the pairs runs out early and the epoch's tail is the others' (``language_weights``).

Partition (``partition``, a pure function): starting at global position ``start``, global step t takes
the next R*B pairs and rank r gets slice [r*B, (r+1)*B) of it. Rank r's step t is produced by worker
t % W, as whole batches, so DataLoader's round-robin over workers returns steps in order. Resuming is
just a new ``start``; because the order is global, a different R, W or B on resume still sees every
pair of the epoch exactly once.

Length grouping (``length_window`` > 1): after the merge, each consecutive window of that many
positions is sorted by pair length (both sides' characters), ascending or descending at random per
window, so each batch holds pairs of similar length and pads little. It permutes positions inside a
window, so every guarantee above holds; and it does not depend on R, W or B (only on the lengths,
the seed and the epoch), so resuming elsewhere still continues the same order.

Remainder policy: the last (N - start) mod (R*B) pairs of an epoch's order (< one global batch) are
dropped, with a warning, so every rank takes the same number of steps (no rank waits on a collective
that others never reach). The order is reshuffled each epoch, so a different tail is dropped each time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls

from dist_optical.config import OnError

from .samples import Sample, ShardCache, ShardError
from .shards import MANIFEST, load_manifest, pair_length, read_shard

logger = logging.getLogger(__name__)


def group_by_length(
    order: np.ndarray, lengths: np.ndarray, window: int, rng: np.random.Generator
) -> np.ndarray:
    """``order`` with each consecutive ``window`` positions sorted by ``lengths[id]``, in a random
    direction per window (module doc); unchanged when window <= 1."""
    if window <= 1:
        return order
    grouped = order.copy()
    for lo in range(0, len(order), window):
        block = grouped[lo : lo + window]
        ranked = block[np.argsort(lengths[block], kind="stable")]
        grouped[lo : lo + window] = ranked[::-1] if rng.random() < 0.5 else ranked
    return grouped


def _sample_length(sample: dict[str, Any]) -> int:
    """A raw shard sample's `pair_length` (undecodable text counts as empty: it is skipped later)."""
    text = [sample.get(f, b"").decode("utf-8", errors="replace") for f in ("src.txt", "tgt.txt")]
    return pair_length(*text)


def language_weights(sizes: Sequence[int], temperature: float = 1.0) -> np.ndarray:
    """Temperature sampling over source sizes: w_l proportional to n_l ** (1 / T), summing to 1.
    T = 1 keeps the natural mixture (every stretch of the epoch holds each language in proportion to
    its pairs); large T tends to equal shares, which upsamples the smallest language early in an epoch."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    weights = np.asarray(sizes, dtype=np.float64) ** (1.0 / temperature)
    return weights / weights.sum()


def partition(
    num_samples: int,
    start: int,
    batch_size: int,
    world_size: int,
    rank: int,
    num_workers: int = 1,
    worker: int = 0,
) -> np.ndarray:
    """Positions in the epoch's global order that (rank, worker) reads: (steps of this worker, B).

    Step t covers positions start + t*R*B + [0, R*B); rank r takes [r*B, (r+1)*B) of it and worker
    t % W produces it. Only whole global steps are formed (the remainder policy in the module doc).
    """
    steps = (num_samples - start) // (world_size * batch_size)
    t = np.arange(worker, steps, num_workers, dtype=np.int64)
    return start + (t * world_size + rank)[:, None] * batch_size + np.arange(batch_size, dtype=np.int64)


class ShardStream(IterableDataset):
    """Pairs from shards, exactly once per epoch across ranks x DataLoader workers.

    Args:
        manifest_path: a manifest.json, a shard folder holding one, or a webdataset URL pattern
            (``shards/swa-{000000..000127}.tar``, ``pipe:cat x.tar``, several joined by ``::``);
            or a list of those, one source per language, merged by ``weights`` (module doc).
            Pattern mode has no manifest, so the shards are read once at construction (on every rank)
            to count their pairs; after that everything (order, partition, resume) works the same,
            but nothing checks sizes up front and a shard that changes between the scan and the read
            shows up as corrupt. Every local shard must exist at construction (FileNotFoundError).
        rank, world_size: this process's data-parallel rank and the number of ranks.
        seed, shuffle, shuffle_buffer: the global order (module doc); shuffle=False = manifest order.
        on_error: "raise" stops on a bad sample naming shard and key; "skip" drops it and counts it
            (``ShardLoader.error_counts()``).
        max_pairs: > 0 uses only the first N pairs of each source's manifest order (low-resource
            budget).
        weights: one positive weight per source (relative); None = ``language_weights(sizes,
            temperature)``.
        length_window: > 1 sorts each window of that many positions of the order by pair length
            (module doc); 0 = off.
        lengths: what length grouping sorts by, one per pair in sample-id (manifest) order, e.g. the
            student's token counts; None = both sides' characters, from the manifest.

    Samples are ``{key, src, tgt, lang, pair}`` strings (lang: the source manifest's ``src_lang``;
    pair: ``src_lang-tgt_lang``, e.g. ``wol-fra``).
    Iterating the stream directly yields epoch ``set_epoch(e)`` from its start; training should use
    ``ShardLoader``, which batches, counts consumption and resumes.
    """

    def __init__(
        self,
        manifest_path: str | Path,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        on_error: OnError = "raise",
        max_pairs: int = 0,
        weights: Sequence[float] | None = None,
        temperature: float = 1.0,
        length_window: int = 0,
        lengths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.shuffle_buffer, self.on_error = shuffle, max(1, shuffle_buffer), on_error
        self.length_window = length_window
        self.epoch = 0
        sources = list(manifest_path) if isinstance(manifest_path, list | tuple) else [manifest_path]
        if not sources:
            raise ValueError("ShardStream: no source given")
        self.urls: list[str] = []
        self.sha256s: list[str | None] = []  # from the manifest (None for URL patterns): checked on read
        self.languages: list[str] = []
        self.pairs: list[str] = []  # per source, its language pair (``wol-fra``): what logs name
        full_counts: list[int] = []
        counts: list[int] = []
        source_of_shard: list[int] = []
        manifest_lengths: list[np.ndarray] = []
        for index, source in enumerate(sources):
            urls, source_counts, (lang, pivot), sha256s, shard_lengths = self._resolve(source)
            # max_pairs keeps the first N pairs of each source's manifest order: cut its shard counts.
            before = np.concatenate([[0], np.cumsum(source_counts)[:-1]]).astype(np.int64)
            kept = np.clip(max_pairs - before, 0, source_counts) if max_pairs > 0 else source_counts
            self.urls += urls
            self.sha256s += sha256s
            self.languages.append(lang)
            self.pairs.append(f"{lang}-{pivot}" if pivot else lang)
            full_counts += list(source_counts)
            counts += [int(c) for c in kept]
            source_of_shard += [index] * len(urls)
            manifest_lengths += [
                np.asarray(n[:k], dtype=np.int64) for n, k in zip(shard_lengths, kept, strict=True)
            ]
        self.counts = np.asarray(counts, dtype=np.int64)
        self.full_counts = np.asarray(full_counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.source_of_shard = np.asarray(source_of_shard, dtype=np.int64)
        self.source_sizes = np.bincount(self.source_of_shard, self.counts, len(sources)).astype(np.int64)
        self.num_pairs = int(self.counts.sum())
        # (num_pairs,), sample-id order: the caller's lengths, else the manifest's characters
        self.lengths = np.concatenate([np.zeros(0, np.int64), *manifest_lengths])
        if lengths is not None:
            if len(lengths) != self.num_pairs:
                raise ValueError(f"lengths: expected one per pair ({self.num_pairs}), got {len(lengths)}")
            self.lengths = np.asarray(lengths, dtype=np.int64)
        if weights is None:
            weights = language_weights(self.source_sizes, temperature)
        if len(weights) != len(sources) or not all(w > 0 for w in weights):
            raise ValueError(
                f"weights: expected {len(sources)} positive values (one per source), got {weights}"
            )
        self.weights = [float(w) / float(sum(weights)) for w in weights]

    def _resolve(
        self, source: str | Path
    ) -> tuple[list[str], list[int], tuple[str, str], list[str | None], list[list[int]]]:
        """One source -> its shard URLs, their pair counts, its languages (manifest ``src_lang`` and
        ``tgt_lang``, the pivot), the shards' sha256 (None where there is no manifest) and each
        shard's pair lengths."""
        source = str(source)
        path = Path(source)
        if path.is_dir() or source.endswith(".json"):
            manifest_path = path / MANIFEST if path.is_dir() else path
            if not manifest_path.is_file():
                raise ShardError(f"shard manifest not found: {manifest_path}", "missing_shard")
            manifest = load_manifest(manifest_path)
            urls = [str(manifest_path.parent / s["name"]) for s in manifest["shards"]]
            self._check_files(urls, [s["bytes"] for s in manifest["shards"]])
            shards = manifest["shards"]
            return (
                urls,
                [s["pairs"] for s in shards],
                (manifest.get("src_lang", ""), manifest.get("tgt_lang", "")),
                [s["sha256"] for s in shards],
                [s["lengths"] for s in shards],
            )
        urls = expand_urls(source)
        self._check_files(urls, [None] * len(urls))
        lengths = [[_sample_length(sample) for sample in read_shard(url)] for url in urls]
        return urls, [len(n) for n in lengths], ("", ""), [None] * len(urls), lengths

    def _check_files(self, urls: list[str], sizes: list[int | None]) -> None:
        """Fail before training starts: a missing shard would otherwise surface hours in."""
        for url, size in zip(urls, sizes, strict=True):
            if url.startswith("pipe:") or "://" in url:
                continue
            path = Path(url.removeprefix("file:"))
            if not path.is_file():
                raise ShardError(f"shard not found: {path}", "missing_shard")
            if size is not None and path.stat().st_size != size:
                actual = path.stat().st_size
                msg = f"shard {path}: {actual} bytes, manifest says {size} (truncated or replaced?)"
                if self.on_error == "raise":
                    raise ShardError(msg)
                logger.warning("%s; its bad samples will be skipped", msg)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's global order: sample ids (0..num_pairs-1), a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        orders = [self._source_order(source, rng) for source in range(len(self.languages))]
        if not self.shuffle:
            return np.concatenate(orders)
        if len(orders) == 1:
            return group_by_length(orders[0], self.lengths, self.length_window, rng)
        # Merge by weight (module doc): the k-th pair of source l is due at (k + u) / w_l.
        due = np.concatenate(
            [(np.arange(len(o)) + rng.random(len(o))) / w for o, w in zip(orders, self.weights, strict=True)]
        )
        order = np.concatenate(orders)[np.argsort(due, kind="stable")]
        return group_by_length(order, self.lengths, self.length_window, rng)

    def _source_order(self, source: int, rng: np.random.Generator) -> np.ndarray:
        """One source's order: its shards permuted, then a block shuffle of ``shuffle_buffer`` pairs."""
        shards = np.flatnonzero((self.source_of_shard == source) & (self.counts > 0))
        if self.shuffle:
            shards = rng.permutation(shards)
        order = np.concatenate(
            [np.zeros(0, np.int64)] + [self.offsets[s] + np.arange(self.counts[s]) for s in shards]
        )
        if self.shuffle:
            for lo in range(0, len(order), self.shuffle_buffer):
                block = order[lo : lo + self.shuffle_buffer]
                order[lo : lo + self.shuffle_buffer] = rng.permutation(block)
        return order

    def iter_batches(
        self, epoch: int, start: int, batch_size: int, worker: int = 0, num_workers: int = 1
    ) -> Iterator[tuple[list[Sample], Counter]]:
        """This (rank, worker)'s batches of ``epoch`` from global position ``start``, each with the
        error counts met while reading it. With on_error="skip" a batch can be short (even empty):
        it is still yielded so that every rank takes the same number of steps."""
        ids = self.epoch_order(epoch)[
            partition(self.num_pairs, start, batch_size, self.world_size, self.rank, num_workers, worker)
        ]
        reader = ShardCache(self, ids.ravel())
        for batch_ids in ids:
            samples, errors = [], Counter()
            for sample_id in batch_ids:
                try:
                    samples.append(reader.get(int(sample_id)))
                except ShardError as err:
                    if self.on_error == "raise":
                        raise
                    errors[err.kind] += 1
                    logger.debug("skipped: %s", err)
            yield samples, errors

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        errors: Counter = Counter()
        for samples, batch_errors in self.iter_batches(self.epoch, 0, 1, worker, num_workers):
            errors.update(batch_errors)
            yield from samples
        if errors:
            logger.warning(
                "rank %d worker %d epoch %d: skipped %s", self.rank, worker, self.epoch, dict(errors)
            )

    def __len__(self) -> int:
        """Pairs this rank sees per epoch (sample granularity, as used by ``__iter__``)."""
        return self.num_pairs // self.world_size

    def state(self) -> dict[str, Any]:
        """What fixes the global order; a resume state from another order must be refused."""
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_buffer": self.shuffle_buffer,
            "num_pairs": self.num_pairs,
            "languages": self.languages,
            "source_sizes": self.source_sizes.tolist(),
            "weights": [round(w, 12) for w in self.weights],
            "length_window": self.length_window,
        }
