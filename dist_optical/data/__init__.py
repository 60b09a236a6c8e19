"""Bitext -> WebDataset shards -> deterministic, resumable, partitioned batches."""

from .bitext import Pair, read_bible_verses, read_bitext
from .collate import PairCollator
from .loader import ShardLoader
from .shards import build_shards, shards_ready
from .stream import ShardStream

__all__ = [
    "Pair",
    "PairCollator",
    "ShardLoader",
    "ShardStream",
    "build_shards",
    "read_bible_verses",
    "read_bitext",
    "shards_ready",
]
