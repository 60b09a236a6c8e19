import pytest
import torch

from dist_optical.data.collate import tokenize
from dist_optical.errors import UserError
from dist_optical.models import (
    check_tokenizer_fits,
    encode,
    freeze,
    load_encoder,
    load_tokenizer,
    pool,
    resolve_model_path,
    special_ids,
)

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def test_packaged_teacher_resolves_offline():
    path = resolve_model_path("all-MiniLM-L6-v2")
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a packaged model.*config.json"):
        resolve_model_path(str(tmp_path / "nope"))


def test_tokenizer_model_mismatch_is_named():
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    small = load_encoder("unused", TINY, vocab_size=100)
    with pytest.raises(UserError, match=r"student: tokenizer has 30522 tokens.*100"):
        check_tokenizer_fits(tokenizer, small, "student")
    check_tokenizer_fits(tokenizer, load_encoder("unused", TINY, vocab_size=len(tokenizer)), "student")


def test_freeze_and_encode_masks_special_tokens():
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    teacher = freeze(load_encoder("unused", TINY, vocab_size=len(tokenizer)))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    batch = tokenize(tokenizer, ["Paka ameketi.", "Hello there, friend of mine."], max_length=16)
    out = encode(teacher, batch["input_ids"], batch["attention_mask"], special_ids(tokenizer))
    assert out.tokens.shape[:2] == out.mask.shape == batch["input_ids"].shape
    # [CLS], [SEP] and padding carry no mass
    assert not out.mask[:, 0].any()
    assert out.mask.sum().item() == batch["attention_mask"].sum().item() - 4
    assert out.pooled.shape == (2, 32)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 2.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 1.0]]
