"""Trimmed student vocabulary, prefixes and the sentence-transformers export, on a tiny model."""

import json

import pytest
import torch
from helpers import BARE
from sentence_transformers import SentenceTransformer

from dist_optical.config import load_config
from dist_optical.data import PairCollator
from dist_optical.data.collate import tokenize
from dist_optical.errors import UserError
from dist_optical.models import load_encoder, load_tokenizer
from dist_optical.models.encoder import Encoder
from dist_optical.models.package import save_student
from dist_optical.models.vocab import (
    TrimmedEmbedding,
    load_kept_ids,
    save_kept_ids,
    trim_vocab,
    untrim_vocab,
    used_ids,
)

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
SEEN = ["Habari ya asubuhi, rafiki.", "Good morning, my friend."]
UNSEEN = ["Zebras quietly juggle xylophones."]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("all-MiniLM-L6-v2")


def tiny_model(tokenizer):
    return load_encoder("all-MiniLM-L6-v2", TINY, vocab_size=len(tokenizer)).eval()


def hidden(model, tokenizer, texts, prefix=""):
    batch = tokenize(tokenizer, texts, 32, prefix)
    return model(**batch).last_hidden_state


def test_kept_ids_cover_the_texts_and_every_special_token(tokenizer):
    kept = used_ids(tokenizer, SEEN, batch=1)
    ids = {i for text in SEEN for i in tokenizer(text)["input_ids"]}
    assert set(kept.tolist()) == ids | set(tokenizer.all_special_ids)
    assert kept.tolist() == sorted(kept.tolist())


@torch.no_grad()
def test_trimmed_model_embeds_seen_text_exactly_as_the_full_one(tokenizer):
    model = tiny_model(tokenizer)
    before = hidden(model, tokenizer, SEEN)
    trim_vocab(model, used_ids(tokenizer, SEEN), tokenizer.unk_token_id)
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, TrimmedEmbedding) and embedding.weight.shape[0] < len(tokenizer) / 100
    torch.testing.assert_close(hidden(model, tokenizer, SEEN), before, rtol=0, atol=0)


@torch.no_grad()
def test_untrim_writes_trained_rows_back_and_keeps_unseen_rows(tokenizer):
    model = tiny_model(tokenizer)
    original = model.get_input_embeddings().weight.detach().clone()
    kept = used_ids(tokenizer, SEEN)
    trim_vocab(model, kept, tokenizer.unk_token_id)
    model.get_input_embeddings().weight.add_(1.0)  # stands in for training
    untrim_vocab(model, original)
    weight = model.get_input_embeddings().weight
    assert weight.shape == original.shape
    torch.testing.assert_close(weight[kept], original[kept] + 1.0)
    unseen = torch.ones(len(original), dtype=torch.bool)
    unseen[kept] = False
    assert torch.equal(weight[unseen], original[unseen])


def test_kept_ids_file_round_trip_and_tamper_check(tokenizer, tmp_path):
    kept = used_ids(tokenizer, SEEN)
    save_kept_ids(tmp_path / "vocab.json", kept, "all-MiniLM-L6-v2")
    assert torch.equal(load_kept_ids(tmp_path / "vocab.json"), kept)
    record = json.loads((tmp_path / "vocab.json").read_text())
    record["kept_ids"][0] += 1
    (tmp_path / "vocab.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="vocab.json: kept ids do not match"):
        load_kept_ids(tmp_path / "vocab.json")
    assert not list(tmp_path.glob("*.tmp"))


def test_fallback_must_be_kept(tokenizer):
    model = tiny_model(tokenizer)
    with pytest.raises(ValueError, match="fallback id"):
        trim_vocab(model, torch.tensor([101, 102]), tokenizer.unk_token_id)


@pytest.mark.parametrize("prefix", ["", "query: "])
def test_exported_folder_is_a_sentence_transformer_with_the_runs_encoding(tokenizer, tmp_path, prefix):
    """SentenceTransformer(DIR) must give what `dist-optical eval` computes: same prefix (a default
    prompt), truncation, mean pooling and normalisation."""
    model = tiny_model(tokenizer)
    meta = {"max_length": 16, "pooling": "mean", "prefix": prefix, "teacher": "all-MiniLM-L6-v2"}
    save_student(model, tokenizer, tmp_path / "model", meta, "# card\n")
    texts = SEEN + UNSEEN + ["word " * 40]  # the last one is truncated to 16 tokens
    ours = Encoder(str(tmp_path / "model"), model, tokenizer, max_length=16, prefix=prefix).embed(texts)
    theirs = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    if prefix:  # and the prefix does matter, so the check above could fail
        plain = Encoder("x", model, tokenizer, max_length=16).embed(texts)
        assert not torch.allclose(plain, ours, atol=1e-3)
    assert (tmp_path / "model" / "README.md").read_text() == "# card\n"
    assert json.loads((tmp_path / "model" / "dist_optical.json").read_text()) == meta


def test_export_replaces_an_old_folder_only_when_complete(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    meta = {"max_length": 16, "pooling": "mean", "prefix": ""}
    save_student(model, tokenizer, tmp_path / "model", meta, "old\n")
    save_student(model, tokenizer, tmp_path / "model", meta, "new\n")
    assert (tmp_path / "model" / "README.md").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["model"]  # no scratch left


def test_prefix_reaches_collator_and_encoder(tokenizer):
    """Training batches (both sides) and eval embeddings see the same prefixed text."""
    cfg = load_config(BARE, ["model.prefix='query: '", f"model.tiny={json.dumps(TINY)}"])
    sample = [{"key": "k", "src": SEEN[0], "tgt": SEEN[1], "lang": "swh", "pair": "swh-eng"}]
    batch = PairCollator(tokenizer, tokenizer, 32, cfg.model.prefix)(sample)
    for side, text in (("src", SEEN[0]), ("tgt", SEEN[1])):
        expected = tokenizer("query: " + text, truncation=True, max_length=32)["input_ids"]
        assert batch[f"{side}_input_ids"][0].tolist() == expected
    encoder = Encoder.for_eval(cfg.model.teacher, cfg)
    assert encoder.model.config.hidden_size == TINY["hidden_size"]  # the config's teacher: built tiny
    manual = Encoder("x", encoder.model, tokenizer, max_length=32).embed(["query: " + t for t in SEEN])
    torch.testing.assert_close(encoder.embed(SEEN), manual)
    assert not torch.allclose(Encoder("x", encoder.model, tokenizer, max_length=32).embed(SEEN), manual)
