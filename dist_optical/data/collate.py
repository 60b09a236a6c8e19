"""Turn a list of samples ``{key, src, tgt}`` into a batch dict; runs inside DataLoader workers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, prefix: str = ""
) -> dict[str, Tensor]:
    """Every text a model encodes goes through here: ``prefix`` (model.prefix) is prepended once."""
    texts = [prefix + text for text in texts] if prefix else texts
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def collate_text(samples: list[dict[str, str]]) -> dict[str, list[str]]:
    """The default collation: columns of strings (key, src, tgt, lang, pair), no tokenization."""
    return {name: [s[name] for s in samples] for name in ("key", "src", "tgt", "lang", "pair")}


class PairCollator:
    """Text columns plus student-tokenized ``src`` and teacher-tokenized ``tgt`` (each prefixed).

    A plain class (not a closure) so that it pickles into DataLoader worker processes.
    """

    def __init__(
        self,
        student_tokenizer: PreTrainedTokenizerBase,
        teacher_tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        prefix: str = "",
    ) -> None:
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.max_length = max_length
        self.prefix = prefix

    def __call__(self, samples: list[dict[str, str]]) -> dict[str, Any]:
        batch: dict[str, Any] = collate_text(samples)
        for side, tokenizer in (("src", self.student_tokenizer), ("tgt", self.teacher_tokenizer)):
            if samples:
                encoded = tokenize(tokenizer, batch[side], self.max_length, self.prefix)
            else:  # on_error="skip" can empty a batch; the step must still happen on every rank
                empty = torch.zeros(0, 0, dtype=torch.long)
                encoded = {"input_ids": empty, "attention_mask": empty}
            batch[f"{side}_input_ids"] = encoded["input_ids"]
            batch[f"{side}_attention_mask"] = encoded["attention_mask"]
        return batch
