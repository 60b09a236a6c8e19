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
    pack,
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


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_packed_encoding_equals_one_padded_batch(padding_side):
    """The batch's sequences packed end to end, each attending only to itself at its own positions:
    the same states, pooled vectors and gradients as one padded batch, in the batch's order."""
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    tokenizer.padding_side = padding_side
    texts = ["Ndio.", "A long sentence of many words that pads every other one " * 2, "Paka ameketi.",
             "Mid-length text, friend.", "Hi", "Another long sentence, with commas, and more"]  # fmt: skip
    batch = tokenize(tokenizer, texts, max_length=40)
    special = special_ids(tokenizer)
    results = []
    for packed in (False, True):
        model = load_encoder("unused", TINY, vocab_size=len(tokenizer)).eval()  # seeded; no dropout
        out = encode(model, batch["input_ids"], batch["attention_mask"], special, packed=packed)
        out.pooled.pow(2).sum().backward()
        grads = [model.encoder.layer[0].attention.self.query.weight.grad.clone(),
                 model.embeddings.position_embeddings.weight.grad.clone()]  # fmt: skip
        results.append((out, grads))
    (whole, whole_grads), (packed, packed_grads) = results
    assert packed.tokens.shape == whole.tokens.shape and torch.equal(packed.mask, whole.mask)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(packed.tokens[real], whole.tokens[real], rtol=1e-4, atol=1e-5)
    assert not packed.tokens[~real].any()  # padding holds zeros
    torch.testing.assert_close(packed.pooled, whole.pooled, rtol=1e-4, atol=1e-5)
    for packed_grad, whole_grad in zip(packed_grads, whole_grads, strict=True):
        torch.testing.assert_close(packed_grad, whole_grad, rtol=1e-3, atol=1e-5)


def test_packing_fills_rows_without_padding():
    lengths = [40, 10, 25, 30, 5, 12]
    mask = torch.zeros(len(lengths), 40, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    plan = pack(mask)
    assert plan.width == 40 and plan.rows == 4  # longest first, first fit: 40 | 30+10 | 25+12 | 5
    # every real token placed once, in its own row's segment
    assert sorted(plan.source.tolist()) == sorted(mask.flatten().nonzero().flatten().tolist())
    assert len(set(plan.target.tolist())) == sum(lengths)
    segment = plan.segment.flatten()
    assert torch.equal(segment[plan.target], plan.source // 40)
    assert (segment >= 0).sum() == sum(lengths)
    # with an encoder's cost (span = 2 * hidden + ffn), wider rows where they pack tighter
    wide = pack(mask, span=2304)
    assert wide.rows * wide.width < plan.rows * plan.width and wide.width >= 40
    assert sorted(wide.source.tolist()) == sorted(plan.source.tolist())
