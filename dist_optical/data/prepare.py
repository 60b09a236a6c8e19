"""Build the run's shards once (on the main rank) and open the one stream over all its languages."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from dist_optical.config import BitextConfig, Config, data_path, repo_path
from dist_optical.data.bitext import BitextError
from dist_optical.data.shards import MANIFEST, build_shards
from dist_optical.data.stream import ShardStream
from dist_optical.files import input_sha256

log = logging.getLogger("dist_optical.data")


def shard_folder(cfg: Config, bitext: BitextConfig) -> Path:
    """``{data.shards}/{lang}-{pivot}-{digest}``: the digest covers everything that decides the shards'
    content, the input files' bytes included, so two configs that shard differently (another
    held-out book, an edited bitext under another data.root) never rebuild each other's folder,
    which a run of the other may be reading."""
    content = {
        "files": bitext.files,
        "sha256": [input_sha256(_bitext_file(cfg, bitext, p)) for p in bitext.files],
        "exclude_books": sorted(cfg.data.exclude_books),
        "pairs_per_shard": cfg.data.pairs_per_shard,
        "max_chars": cfg.data.max_chars,
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    return repo_path(cfg.data.shards) / f"{bitext.pair}-{digest}"


def _bitext_file(cfg: Config, bitext: BitextConfig, rel: str) -> Path:
    path = data_path(cfg, rel)
    if not path.is_file():
        raise BitextError(
            f"data.bitexts ({bitext.pair}): {path}: no such file "
            f"(files are relative to data.root {cfg.data.root})"
        )
    return path


def input_sha256s(cfg: Config) -> dict[str, str]:
    """Each bitext file (as configured, relative to data.root) -> the sha256 of its bytes: what a
    checkpoint records, so that a resume on edited text is refused."""
    return {rel: input_sha256(_bitext_file(cfg, b, rel)) for b in cfg.data.bitexts for rel in b.files}


def ensure_shards(cfg: Config, build: bool = True) -> list[Path]:
    """One manifest per bitext of ``data.bitexts``; when ``build`` (the main rank; the others wait at
    a barrier, then read), each folder is checked and built where missing or damaged (build_shards:
    artifacts.build_once; another job's build in progress is waited for, up to train.build_wait).
    Shards live on a filesystem all ranks share (the run's repo or a cluster scratch path)."""
    manifests = []
    for bitext in cfg.data.bitexts:
        out = shard_folder(cfg, bitext)
        inputs = [data_path(cfg, p) for p in bitext.files]
        args = dict(
            src_lang=bitext.lang,
            tgt_lang=bitext.pivot,
            pairs_per_shard=cfg.data.pairs_per_shard,
            max_chars=cfg.data.max_chars,
            exclude_books=tuple(cfg.data.exclude_books),
        )
        if build:
            build_shards(inputs, out, **args, wait=cfg.train.build_wait)
        manifests.append(out / MANIFEST)
    return manifests


def student_lengths(
    cfg: Config, pairs: Iterable[dict[str, str]], tokenizer: PreTrainedTokenizerBase
) -> list[int] | None:
    """Each training pair's foreign side in the student's tokens (truncated as in training): what
    length grouping sorts by, since the student's forward and backward are most of a step and
    characters per token vary by language. Logs the share that model.max_length keeps whole (warns
    under 99%). None with data.on_error=skip (a skipped pair has no length; grouping then falls back
    to the manifest's character counts). ``pairs``: the training pairs in sample-id order, as
    train/prepare.py reads them."""
    if cfg.data.on_error == "skip":
        return None
    texts = [cfg.model.prefix + pair["src"] for pair in pairs]
    whole = [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]
    limit = cfg.model.max_length
    kept = sum(n <= limit for n in whole) / max(1, len(whole))
    report = log.info if kept >= 0.99 else log.warning
    report("model.max_length %d keeps %.1f%% of the %d training pairs' foreign sides whole", limit,
           100 * kept, len(whole))  # fmt: skip
    return [min(n, limit) for n in whole]


def training_stream(
    cfg: Config, manifests: list[Path], rank: int = 0, world_size: int = 1, lengths: list[int] | None = None
) -> ShardStream:
    """The run's stream: every language's shards, mixed by their ``weight`` if set, else by temperature;
    length-grouped by ``lengths`` (or the manifest's) when data.length_window is set."""
    explicit = [b.weight for b in cfg.data.bitexts]
    return ShardStream(
        manifests,
        rank=rank,
        world_size=world_size,
        seed=cfg.train.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        on_error=cfg.data.on_error,
        max_pairs=cfg.data.max_pairs,
        weights=explicit if all(explicit) else None,
        temperature=cfg.data.temperature,
        length_window=cfg.data.length_window,
        lengths=lengths,
    )
