"""The toy shards the stream tests read (built once per module)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from stream_helpers import N_PAIRS

from dist_optical.data import build_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """>= 7 shards of uneven size (byte target over sentences of random length)."""
    tmp = tmp_path_factory.mktemp("bitext")
    rng = random.Random(0)
    rows = [f"k{i}.x\t{'s' * rng.choice([1, 1, 1, 1, 900, 4000])} {i}\tt {i}" for i in range(N_PAIRS)]
    (tmp / "toy.tsv").write_text("\n".join(["key\tsrc\ttgt", *rows]) + "\n", encoding="utf-8")
    build_shards(
        [tmp / "toy.tsv"],
        tmp / "shards",
        "swh",
        "eng",
        pairs_per_shard=0,
        max_shard_bytes=40_960,
        max_chars=5000,
    )
    return tmp / "shards"
