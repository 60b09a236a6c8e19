"""Shared by the stream tests: the toy shards' size, reading an epoch per simulated rank."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from dist_optical.data import ShardLoader, ShardStream
from dist_optical.data.shards import read_shard

N_PAIRS = 203  # prime: never a multiple of world_size x batch_size


def manifest_keys(shard_dir: Path) -> list[str]:
    """Every key in manifest order (shard order, then tar order)."""
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    return [s["id.txt"].decode() for e in manifest["shards"] for s in read_shard(str(shard_dir / e["name"]))]


def take(loader: ShardLoader, n: int) -> list[dict]:
    return list(islice(loader, n))


def epoch_keys(world_size: int, batch_size: int, shard_dir, workers: int = 0, state=None, select=None, **kw):
    """Finish the current epoch on every (simulated) rank -> per-rank list of batches' keys (or of
    ``select(batch)``)."""
    select = select or (lambda batch: batch["key"])
    per_rank = []
    for rank in range(world_size):
        loader = ShardLoader(
            ShardStream(shard_dir, rank=rank, world_size=world_size, **kw), batch_size, num_workers=workers
        )
        if state is not None:
            loader.load_state_dict(state)
        epoch = loader.state_dict()["epoch"]
        batches = []
        for batch in loader:
            if batch["epoch"] != epoch:
                break
            batches.append(select(batch))
        per_rank.append(batches)
    return per_rank
