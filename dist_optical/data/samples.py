"""One worker's samples, read from whole shards: each shard loaded on first use, checked against its
manifest (sha256, pair count), decoded, and freed after the last sample the worker needs from it.
The order the samples are asked for is the stream's (`stream.ShardStream`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dist_optical.errors import UserError

from .shards import ShardReadError, read_shard

if TYPE_CHECKING:
    from .stream import ShardStream

Sample = dict[str, str]


class ShardError(UserError):
    """A bad sample or shard; ``kind`` (corrupt_shard, missing_field, bad_utf8) keys the skip counts."""

    def __init__(self, message: str, kind: str = "corrupt_shard") -> None:
        super().__init__(message)  # one argument: DataLoader re-raises worker errors as type(err)(msg)
        self.kind = kind


class ShardCache:
    """Loads whole shards on first use and frees each after the last sample this worker needs from it;
    with the block shuffle that keeps about 2 * shuffle_buffer / pairs_per_shard + 2 shards in memory."""

    def __init__(self, stream: ShardStream, ids: np.ndarray) -> None:
        self.stream = stream
        self.shard_of = np.searchsorted(stream.offsets, ids, side="right") - 1
        self.last_use = {int(s): i for i, s in enumerate(self.shard_of)}
        self.loaded: dict[int, tuple[list[dict[str, Any]], str | None]] = {}
        self.position = 0

    def get(self, sample_id: int) -> Sample:
        shard = int(self.shard_of[self.position])
        if shard not in self.loaded:
            self.loaded[shard] = self._load(shard)
        samples, failure = self.loaded[shard]
        if self.last_use[shard] == self.position:
            del self.loaded[shard]
        self.position += 1
        local = sample_id - int(self.stream.offsets[shard])
        url = self.stream.urls[shard]
        if local >= len(samples):
            raise ShardError(f"shard {url}: pair {local} unreadable: {failure}", "corrupt_shard")
        source = self.stream.source_of_shard[shard]
        return _decode(samples[local], url, self.stream.languages[source], self.stream.pairs[source])

    def _load(self, shard: int) -> tuple[list[dict[str, Any]], str | None]:
        url, expected = self.stream.urls[shard], int(self.stream.full_counts[shard])
        samples: list[dict[str, Any]] = []
        failure = None
        data = None
        sha256 = self.stream.sha256s[shard]
        if sha256 is not None:  # a manifest shard: whole-file bytes, checked before any sample is used
            data = Path(url).read_bytes()
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                return [], f"sha256 {actual[:12]}... differs from the manifest's {sha256[:12]}... (altered?)"
        try:
            for sample in read_shard(url, data):
                samples.append(sample)
        except ShardReadError as err:
            failure = err.detail
        if failure is None and len(samples) != expected:
            last = samples[-1]["__key__"] if samples else None
            failure = f"holds {len(samples)} pairs, manifest says {expected}; last key {last!r}"
            if len(samples) > expected:  # more than listed: the shard was replaced, trust none of it
                samples = []
        return samples, failure


def _decode(sample: dict[str, Any], url: str, lang: str, pair: str) -> Sample:
    # id.txt holds the original key (dots and all); shards written elsewhere may only have __key__.
    key = _text(sample, "id.txt", url) if "id.txt" in sample else sample["__key__"]
    return {
        "key": key,
        "src": _text(sample, "src.txt", url),
        "tgt": _text(sample, "tgt.txt", url),
        "lang": lang,
        "pair": pair,
    }


def _text(sample: dict[str, Any], field: str, url: str) -> str:
    key = sample["__key__"]
    if field not in sample:
        raise ShardError(f"shard {url}: sample {key!r} has no {field}", "missing_field")
    try:
        return sample[field].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ShardError(
            f"shard {url}: sample {key!r}: {field} is not valid UTF-8 ({err.reason})", "bad_utf8"
        ) from err
