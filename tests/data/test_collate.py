"""PairCollator: student tokenizer on src, teacher tokenizer on tgt; picklable; works in workers."""

import pickle

import pytest
import torch

from dist_optical.data import PairCollator, ShardLoader, ShardStream, build_shards
from dist_optical.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("all-MiniLM-L6-v2")


SAMPLES = [
    {"key": "a:1", "src": "Habari ya asubuhi", "tgt": "Good morning", "lang": "swh", "pair": "swh-eng"},
    {
        "key": "a:2",
        "src": "Asante",
        "tgt": "Thank you very much, my friend " * 20,
        "lang": "swh",
        "pair": "swh-eng",
    },
]


def test_tokenizes_each_side_with_its_tokenizer(tokenizer):
    class Upper:
        """A teacher tokenizer that differs from the student's, to show which side uses which."""

        def __call__(self, texts, **kw):
            return tokenizer([t.upper() for t in texts], **kw)

    batch = PairCollator(tokenizer, Upper(), max_length=16)(SAMPLES)
    assert batch["key"] == ["a:1", "a:2"] and batch["src"][0] == "Habari ya asubuhi"
    assert batch["src_input_ids"].shape[0] == 2 and batch["tgt_input_ids"].shape == (2, 16)  # truncated
    expected = tokenizer(["Habari ya asubuhi", "Asante"], padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(batch["src_input_ids"], expected)
    assert batch["tgt_attention_mask"].sum(1).tolist()[1] == 16


def test_picklable_and_empty_batch(tokenizer):
    collator = pickle.loads(pickle.dumps(PairCollator(tokenizer, tokenizer, 8)))
    assert collator(SAMPLES)["src_input_ids"].shape[1] <= 8
    empty = collator([])
    assert empty["key"] == [] and empty["tgt_input_ids"].shape == (0, 0)


def test_collates_inside_loader_workers(tokenizer, tmp_path):
    (tmp_path / "b.tsv").write_text("".join(f"jambo {i}\thello {i}\n" for i in range(40)), encoding="utf-8")
    build_shards([tmp_path / "b.tsv"], tmp_path / "s", "swh", "eng", pairs_per_shard=10)
    loader = ShardLoader(
        ShardStream(tmp_path / "s"), 8, PairCollator(tokenizer, tokenizer, 32), num_workers=2
    )
    batch = next(iter(loader))
    assert batch["epoch"] == 0 and batch["src_input_ids"].shape[0] == 8 == len(batch["tgt"])
    assert batch["src_attention_mask"].dtype == torch.long
