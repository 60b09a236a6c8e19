"""The frozen teacher's embeddings of the eval sets, computed once and reused by every run.

Every run (`run`, `compare`, a dev curve) scores its students against the same teacher on the same
sets: the zero-shot row and the teacher's index are identical each time. They are stored under
`{data.shards}/eval-cache/{key}/`, the key hashing the model's weights, its tokenizer, the
truncation, pooling and prefix, and the texts themselves; built and checked through
`artifacts.build_once` (a damaged folder is moved aside and rebuilt).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dist_optical.artifacts import build_once
from dist_optical.models import tokenizer_digest, weights_digest
from dist_optical.models.encoder import Encoder


class EmbeddingCache:
    """``embed(texts)`` of one frozen encoder, read from disk when this exact work was done before."""

    def __init__(self, encoder: Encoder, root: Path) -> None:
        self.encoder, self.root = encoder, root
        self.model_key = {
            "weights_sha256": weights_digest(encoder.model),
            "tokenizer_sha256": tokenizer_digest(encoder.tokenizer),
            "max_length": encoder.max_length,
            "pooling": encoder.pooling,
            "prefix": encoder.prefix,
        }

    def embed(self, texts: list[str], batch_size: int, desc: str) -> Tensor:
        texts_sha256 = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
        key = {**self.model_key, "texts_sha256": texts_sha256, "texts": len(texts)}
        folder = self.root / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

        def build(tmp: Path) -> dict:
            np.save(tmp / "embeddings.npy", self.encoder.embed(texts, batch_size, desc).numpy())
            return {"model": self.encoder.name, **key}

        build_once(folder, build, f"the eval embeddings by {self.encoder.name}")
        return torch.from_numpy(np.load(folder / "embeddings.npy"))
