"""A student vocabulary the run can afford: train only the embedding rows its texts use.

multilingual-e5-small spends 96 M of its 117 M parameters on a 250k-row word embedding, while the
shipped Bibles and eval sets use ~13k rows. ``trim_vocab`` swaps the student's input embedding for
a ``TrimmedEmbedding`` holding just the kept rows (input ids stay in the tokenizer's id space, so
tokenizers, masks and idf tables are unchanged); ``untrim_vocab`` writes the trained rows back into
the full table, so the exported student tokenizes and embeds any text exactly as the original does
(unseen rows keep their original values).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from dist_optical.errors import UserError
from dist_optical.files import write_json

VOCAB_FILE = "vocab.json"  # in the run folder: the kept rows, so resume and export rebuild the same model


class VocabError(UserError):
    """A run folder's vocab.json that is missing or altered."""


class TrimmedEmbedding(nn.Module):
    """nn.Embedding over the rows ``kept_ids`` of a ``vocab_size``-row table; other ids map to
    ``fallback_id``'s row (the unknown token: they never occur in the run's own texts)."""

    def __init__(self, weight: Tensor, kept_ids: Tensor, vocab_size: int, fallback_id: int) -> None:
        super().__init__()
        if fallback_id not in set(kept_ids.tolist()):
            raise ValueError(f"trim_vocab: the fallback id {fallback_id} must be among the kept ids")
        self.weight = nn.Parameter(weight)
        self.vocab_size = vocab_size
        self.register_buffer("kept_ids", kept_ids.clone(), persistent=False)  # RUN/vocab.json has them
        index = torch.full((vocab_size,), int((kept_ids == fallback_id).nonzero()[0, 0]), dtype=torch.long)
        index[kept_ids] = torch.arange(len(kept_ids))
        self.register_buffer("row_of_id", index, persistent=False)

    @property
    def num_embeddings(self) -> int:  # as nn.Embedding: the id space it accepts
        return self.vocab_size

    def forward(self, input_ids: Tensor) -> Tensor:
        return nn.functional.embedding(self.row_of_id[input_ids], self.weight)


def trim_vocab(model: nn.Module, kept_ids: Tensor, fallback_id: int) -> None:
    """Replace ``model``'s input embedding (in place) by its rows ``kept_ids`` (sorted, unique)."""
    full = model.get_input_embeddings()
    kept_ids = torch.as_tensor(kept_ids, dtype=torch.long)
    if len(kept_ids) and int(kept_ids.max()) >= full.num_embeddings:
        raise ValueError(
            f"trim_vocab: id {int(kept_ids.max())} outside the embedding table ({full.num_embeddings} rows)"
        )
    weight = full.weight.detach()[kept_ids].clone()
    model.set_input_embeddings(TrimmedEmbedding(weight, kept_ids, full.num_embeddings, fallback_id))


def untrim_vocab(model: nn.Module, full_weight: Tensor) -> None:
    """Back to a full nn.Embedding: ``full_weight`` (the original table) with the trained rows written in."""
    trimmed = model.get_input_embeddings()
    if not isinstance(trimmed, TrimmedEmbedding):
        raise TypeError("untrim_vocab: the model's input embedding is not trimmed")
    weight = full_weight.detach().clone()
    weight[trimmed.kept_ids] = trimmed.weight.detach().to(weight.dtype)
    model.set_input_embeddings(nn.Embedding.from_pretrained(weight, freeze=False))


def used_ids(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], batch: int = 4096) -> Tensor:
    """Sorted unique token ids of ``texts`` (untruncated: a superset of any truncation) plus every
    special id of the tokenizer."""
    seen = set(tokenizer.all_special_ids)
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == batch:
            seen.update(i for ids in tokenizer(chunk, add_special_tokens=True)["input_ids"] for i in ids)
            chunk = []
    if chunk:
        seen.update(i for ids in tokenizer(chunk, add_special_tokens=True)["input_ids"] for i in ids)
    return torch.tensor(sorted(seen), dtype=torch.long)


def save_kept_ids(path: Path, kept_ids: Tensor, tokenizer_name: str) -> None:
    """Temp name, then rename: a half-written vocabulary is never read."""
    ids = [int(i) for i in kept_ids]
    record = {"tokenizer": tokenizer_name, "rows": len(ids), "sha256": ids_digest(ids), "kept_ids": ids}
    write_json(path, record, "the kept vocabulary", indent=None)


def load_kept_ids(path: Path) -> Tensor:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        ids = [int(i) for i in record["kept_ids"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise VocabError(f"{path}: not a readable kept-vocabulary file ({err})") from err
    if ids_digest(ids) != record.get("sha256"):
        raise VocabError(f"{path}: kept ids do not match their recorded sha256 (file altered?)")
    return torch.tensor(ids, dtype=torch.long)


def ids_digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def run_kept_ids(trim_vocab: bool, run_dir: Path) -> Tensor | None:
    """The trimmed vocabulary a run trained (RUN/vocab.json), or None when it trained the full one."""
    if not trim_vocab:
        return None
    path = run_dir / VOCAB_FILE
    if not path.is_file():
        raise VocabError(
            f"{path}: missing; the run trained a trimmed vocabulary, and this file lists its rows"
        )
    return load_kept_ids(path)
