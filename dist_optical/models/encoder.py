"""A frozen model + tokenizer that turns texts into L2-normalised sentence embeddings (retrieval)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from dist_optical.config import Config
from dist_optical.data.collate import tokenize
from dist_optical.models import (
    check_tokenizer_fits,
    encode,
    load_encoder,
    load_tokenizer,
    special_ids,
)


@dataclass
class Encoder:
    """A frozen model + tokenizer that turns texts into L2-normalised sentence embeddings."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    max_length: int = 0  # tokens per text; 0 = the model's own maximum
    pooling: str = "mean"
    prefix: str = ""

    def __post_init__(self) -> None:
        self.max_length = self.max_length or max_positions(self.model, self.tokenizer)

    @classmethod
    def load(
        cls,
        name_or_path: str,
        max_length: int = 0,
        pooling: str = "mean",
        tiny: dict[str, int] | None = None,
        prefix: str = "",
    ) -> Encoder:
        """``tiny`` rebuilds the seeded random tiny BERT of a test config (the same one training used)."""
        tokenizer = load_tokenizer(name_or_path)
        model = load_encoder(name_or_path, tiny, vocab_size=len(tokenizer)).eval()
        check_tokenizer_fits(tokenizer, model, f"model {name_or_path!r}")
        return cls(name_or_path, model, tokenizer, max_length, pooling, prefix)

    @classmethod
    def for_eval(cls, name_or_path: str, cfg: Config) -> Encoder:
        """Encode as the run evaluates (eval.max_length, model.pooling and prefix). The config's own
        teacher or student (``model.teacher``/``model.student``) is built as training built it: with
        ``model.tiny`` set, its seeded random tiny weights; any other model (an exported student)
        loads its own weights."""
        model = cfg.model
        configured = name_or_path in (model.teacher, model.student)
        return cls.load(
            name_or_path, cfg.eval.max_length, model.pooling, model.tiny if configured else None, model.prefix
        )

    @torch.no_grad()  # not inference_mode: a ZeRO-3 student gathers its parameters in hooks
    def embed(self, texts: list[str], batch_size: int = 64, desc: str = "embed") -> Tensor:
        special = special_ids(self.tokenizer)
        device = next(self.model.parameters()).device
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.config.hidden_size)
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, disable=len(texts) < 512):
            idx = order[start : start + batch_size]
            batch = tokenize(self.tokenizer, [texts[i] for i in idx], self.max_length, self.prefix)
            pooled = encode(
                self.model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                special,
                self.pooling,
            ).pooled
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
        return out


def max_positions(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the model takes, in tokens with the special ones: its tokenizer's
    ``model_max_length`` when set, else its position table (less RoBERTa's padding offset)."""
    config = model.config
    positions = config.max_position_embeddings
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= config.pad_token_id + 1  # position ids start after the padding index
    declared = tokenizer.model_max_length
    return min(positions, declared) if declared and declared < 1_000_000 else positions
