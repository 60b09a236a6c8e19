"""The frozen teacher's outputs, computed once per shard set and read back instead of recomputed.

The teacher never changes during training and sees only the English side, which the shipped
Bibles share across languages: the token states of every distinct English text
the run's stream draws from (the first data.max_pairs of each language) are stored once
(`train.teacher_cache`: fp32, or fp16 to halve the size) beside the shards, in
`{data.shards}/teacher-cache/{key}/`, memory-mapped at run time. The key hashes everything that
determines them: the teacher's weights, its tokenizer, model.prefix, model.max_length,
model.pooling, the teacher's precision, the cache dtype, data.max_pairs and every shard's sha256;
a change of any one is another folder, built on first use and checked on every open
(artifacts.build_once: sizes and sha256s in the marker written last; a damaged one is moved aside
and rebuilt).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from dist_optical.artifacts import build_once
from dist_optical.config import Config, repo_path
from dist_optical.data.collate import tokenize
from dist_optical.files import write_json
from dist_optical.models import Encoded, encode, pool, tokenizer_digest, weights_digest
from dist_optical.train.prepare import pivot_texts, read_pairs

BUILD_BATCH = 64


def cache_key(
    cfg: Config, teacher: nn.Module, tokenizer: PreTrainedTokenizerBase, manifests: list[Path]
) -> dict[str, Any]:
    """Everything the cached outputs depend on (its sha256 names the folder)."""
    shards = [
        s["sha256"] for m in manifests for s in json.loads(Path(m).read_text(encoding="utf-8"))["shards"]
    ]
    return {
        "teacher": cfg.model.teacher,
        "weights_sha256": weights_digest(teacher),
        "tokenizer_sha256": tokenizer_digest(tokenizer),
        "prefix": cfg.model.prefix,
        "max_length": cfg.model.max_length,
        "pooling": cfg.model.pooling,
        "precision": cfg.train.precision,
        "dtype": cfg.train.teacher_cache,
        "shards_sha256": hashlib.sha256("".join(shards).encode()).hexdigest(),
        "max_pairs": cfg.data.max_pairs,  # the pairs the run's stream draws from
    }


class TeacherCache:
    """English text -> the teacher's `Encoded`, read from the memory-mapped arrays of one folder."""

    def __init__(self, folder: Path, pad_id: int, pooling: str) -> None:
        self.folder = folder
        self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")  # (all tokens, d)
        self.input_ids = np.load(folder / "input_ids.npy", mmap_mode="r")
        self.real = np.load(folder / "real.npy", mmap_mode="r")  # not padding, not special
        self.offsets = np.load(folder / "offsets.npy")  # (texts + 1,)
        texts = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
        self.row = {text: i for i, text in enumerate(texts)}
        self.pad_id, self.pooling = pad_id, pooling

    def lookup(self, texts: list[str]) -> Encoded:
        """The batch as the live teacher would return it, padded to its longest text; the padded
        positions are zeros (every consumer masks them out)."""
        rows = [self.row[text] for text in texts]
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]
        length = max(hi - lo for lo, hi in spans)
        tokens = torch.zeros(len(rows), length, self.tokens.shape[1])
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, (lo, hi) in enumerate(spans):
            tokens[i, : hi - lo] = torch.from_numpy(np.array(self.tokens[lo:hi], dtype=np.float32))
            input_ids[i, : hi - lo] = torch.from_numpy(np.array(self.input_ids[lo:hi], dtype=np.int64))
            mask[i, : hi - lo] = torch.from_numpy(np.array(self.real[lo:hi]))
        # Pooled here, over the batch's own padding, exactly as the live teacher pools.
        attention = torch.arange(length)[None, :] < torch.tensor([hi - lo for lo, hi in spans])[:, None]
        pooled = pool(tokens, attention.long(), self.pooling)
        return Encoded(tokens=tokens, mask=mask, input_ids=input_ids, pooled=pooled)


def open_cache(
    cfg: Config,
    manifests: list[Path],
    teacher: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    special: Tensor,
    pivots: set[str] | None = None,
) -> TeacherCache:
    """The cache for this run's teacher and shards: opened if built and intact, else built first (a
    damaged one is moved aside; a build in progress elsewhere is waited for, train.build_wait).
    A build encodes ``pivots``, the distinct pivot texts of the training pairs (train/prepare.py),
    or, when not given, reads them from the shards."""
    key = cache_key(cfg, teacher, tokenizer, manifests)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = repo_path(cfg.data.shards) / "teacher-cache" / digest

    def build(tmp: Path) -> dict[str, Any]:
        texts = pivots if pivots is not None else pivot_texts(read_pairs(cfg, manifests))
        return {**key, "texts": _build(tmp, cfg, texts, teacher, tokenizer, special)}

    build_once(folder, build, "the teacher cache", wait=cfg.train.build_wait)
    return TeacherCache(folder, tokenizer.pad_token_id or 0, cfg.model.pooling)


def _build(
    folder: Path,
    cfg: Config,
    pivots: set[str],
    teacher: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    special: Tensor,
) -> int:
    """Write the cache's arrays for the texts ``pivots`` into ``folder``; returns their number."""
    texts = sorted(pivots, key=lambda text: (len(text), text))  # by length: batches pad little
    dtype = np.float16 if cfg.train.teacher_cache == "fp16" else np.float32
    device = next(teacher.parameters()).device
    tokens, input_ids, real, offsets = [], [], [], [0]
    with torch.no_grad():
        for lo in tqdm(range(0, len(texts), BUILD_BATCH), desc="teacher cache", leave=False):
            batch = tokenize(tokenizer, texts[lo : lo + BUILD_BATCH], cfg.model.max_length, cfg.model.prefix)
            out = encode(
                teacher,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                special,
                cfg.model.pooling,
                cfg.train.pack,
            ).float()
            for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
                tokens.append(out.tokens[i, :n].cpu().numpy().astype(dtype))
                input_ids.append(batch["input_ids"][i, :n].numpy().astype(np.int32))
                real.append(out.mask[i, :n].cpu().numpy())
                offsets.append(offsets[-1] + n)
    for name, array in (
        ("tokens", np.concatenate(tokens)),
        ("input_ids", np.concatenate(input_ids)),
        ("real", np.concatenate(real)),
        ("offsets", np.asarray(offsets, dtype=np.int64)),
    ):
        np.save(folder / f"{name}.npy", array)
    write_json(folder / "texts.json", texts, "the teacher cache's texts", indent=None)
    return len(texts)
