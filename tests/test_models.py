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


@pytest.mark.parametrize("chunks", [2, 3])
def test_encoding_in_length_sorted_chunks_equals_one_padded_batch(chunks):
    """The pivot side runs as groups of similar length, each cut to its own width: the same states,
    pooled vectors and gradients as one padded batch, in the batch's order."""
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    texts = ["Ndio.", "A long sentence of many words that pads every other one " * 2, "Paka ameketi.",
             "Mid-length text, friend.", "Hi", "Another long sentence, with commas, and more"]  # fmt: skip
    batch = tokenize(tokenizer, texts, max_length=40)
    special = special_ids(tokenizer)
    results = []
    for n in (1, chunks):
        model = load_encoder("unused", TINY, vocab_size=len(tokenizer)).eval()  # seeded; no dropout
        out = encode(model, batch["input_ids"], batch["attention_mask"], special, chunks=n)
        out.pooled.pow(2).sum().backward()
        grad = model.encoder.layer[0].attention.self.query.weight.grad.clone()
        results.append((out, grad))
    (whole, whole_grad), (chunked, chunked_grad) = results
    assert chunked.tokens.shape == whole.tokens.shape and torch.equal(chunked.mask, whole.mask)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(chunked.tokens[real], whole.tokens[real], rtol=1e-4, atol=1e-5)
    lengths = batch["attention_mask"].sum(1)
    shortest = torch.argsort(lengths).tensor_split(chunks)[0]  # its group is cut to its own width
    assert not chunked.tokens[shortest, lengths[shortest].max() :].any()
    torch.testing.assert_close(chunked.pooled, whole.pooled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=1e-3, atol=1e-5)
