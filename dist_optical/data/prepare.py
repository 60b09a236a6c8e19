"""Build the run's shards once (on the main rank) and hand every rank the manifest path."""

from __future__ import annotations

from pathlib import Path

from dist_optical.config import Config, data_path, repo_path
from dist_optical.data.shards import build_shards, shards_ready
from dist_optical.engine.dist import barrier


def ensure_shards(cfg: Config, is_main: bool) -> Path:
    """Shards live on a filesystem all ranks share (the run's repo or a cluster scratch path)."""
    out = repo_path(cfg.data.shards)
    inputs = [data_path(cfg, p) for p in cfg.data.bitext]
    args = dict(
        src_lang=cfg.data.src_lang,
        tgt_lang=cfg.data.tgt_lang,
        pairs_per_shard=cfg.data.pairs_per_shard,
        max_chars=cfg.data.max_chars,
        exclude_books=tuple(cfg.data.exclude_books),
    )
    if is_main and not shards_ready(out, inputs, **args):
        build_shards(inputs, out, **args)
    barrier()
    return out / "manifest.json"
