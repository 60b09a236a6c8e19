"""Reading shards' samples: missing, truncated, corrupt or altered shards and bad samples either raise
naming the shard and sample, or are skipped and counted (``on_error: skip``); foreign WebDataset
shards are read."""

from __future__ import annotations

import json
import logging
import multiprocessing
from itertools import islice
from pathlib import Path

import pytest
from stream_helpers import N_PAIRS, epoch_keys, take

from dist_optical.data import ShardLoader, ShardStream
from dist_optical.data.samples import ShardError
from dist_optical.data.shards import read_shard
from dist_optical.errors import UserError
from dist_optical.files import sha256_file


def test_missing_shard_fails_at_construction(shard_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in shard_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "swh-eng-000003.tar").unlink()
    with pytest.raises(UserError, match="swh-eng-000003.tar"):
        ShardStream(copy / "manifest.json")
    with pytest.raises(UserError, match="manifest"):
        ShardStream(tmp_path)


def _copy_with_bad_shard(shard_dir: Path, tmp_path: Path, index: int, samples: list[dict]) -> Path:
    """A copy of the shards whose shard ``index`` holds ``samples`` (manifest entry updated to match)."""
    copy = tmp_path / "bad"
    copy.mkdir()
    for p in shard_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["shards"][index]
    from webdataset.writer import TarWriter

    with TarWriter(str(copy / entry["name"]), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    entry["bytes"] = (copy / entry["name"]).stat().st_size
    entry["sha256"] = sha256_file(copy / entry["name"])  # consistent: the samples themselves are bad
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_bad_samples_raise_or_skip(shard_dir, tmp_path):
    original = list(read_shard(str(shard_dir / "swh-eng-000002.tar")))
    samples = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"} for s in original]
    del samples[1]["tgt.txt"]
    samples[3]["src.txt"] = b"\xff\xfe not utf-8"
    bad = _copy_with_bad_shard(shard_dir, tmp_path, 2, samples)
    with pytest.raises(
        ShardError, match=rf"swh-eng-000002.tar: sample '{original[1]['__key__']}' has no tgt.txt"
    ):
        epoch_keys(1, 4, bad, shuffle=False)
    with pytest.raises(
        ShardError, match=r"swh-eng-000002.tar: sample 'k\d+_x'.*(no tgt.txt|not valid UTF-8)"
    ):
        # Raised in a DataLoader worker, re-raised here. (Costs ~10 s: after a worker error, PyTorch's
        # DataLoader shutdown waits 5 s per worker before terminating them.)
        epoch_keys(2, 4, bad, workers=2)
    # The workers are gone, not kept alive by the traceback (they ignore SIGTERM: exit would hang).
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    per_rank = epoch_keys(2, 4, bad, on_error="skip")
    assert [len(b) for b in per_rank] == [N_PAIRS // 8] * 2
    seen = [k for batches in per_rank for b in batches for k in b]
    assert len(seen) == len(set(seen)) and {
        original[1]["id.txt"].decode(),
        original[3]["id.txt"].decode(),
    }.isdisjoint(seen)
    loader = ShardLoader(ShardStream(bad, on_error="skip", shuffle=False), 8, num_workers=2)
    take(loader, N_PAIRS // 8)
    assert loader.error_counts() == {"missing_field": 1, "bad_utf8": 1}
    assert loader.state_dict()["errors"] == {"missing_field": 1, "bad_utf8": 1}


def test_truncated_and_corrupt_tar(shard_dir, tmp_path, caplog):
    name = "swh-eng-000004.tar"
    pairs = json.loads((shard_dir / "manifest.json").read_text())["shards"][4]["pairs"]
    copy = tmp_path / "trunc"
    copy.mkdir()
    for p in shard_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=f"{name}.*manifest says"):
        ShardStream(copy)  # size check: caught before training starts
    with caplog.at_level(logging.WARNING):
        loader = ShardLoader(ShardStream(copy, on_error="skip"), 1)
        batches = iter(loader)
        keys = [k for b in islice(batches, N_PAIRS) for k in b["key"]]
        errors = loader.error_counts()
        next(batches)  # the first batch of epoch 1 closes epoch 0, which logs its skip counts
    # The shard no longer matches its manifest sha256: none of its pairs is trusted.
    assert errors == {"corrupt_shard": pairs}
    assert len(keys) == len(set(keys)) == N_PAIRS - sum(errors.values())
    assert any("skipped bad samples" in r.message for r in caplog.records)
    # Same size, garbage in the middle: only reading reveals it; raise names the shard.
    (copy / name).write_bytes(data[:5120] + b"\x07" * 2048 + data[7168:])
    with pytest.raises(ShardError, match=name):
        take(ShardLoader(ShardStream(copy), 4), N_PAIRS // 4)


def test_foreign_webdataset_shard_without_id_txt(tmp_path):
    from webdataset.writer import TarWriter

    with TarWriter(str(tmp_path / "other-000000.tar")) as writer:
        for i in range(6):
            writer.write({"__key__": f"s{i}", "src.txt": f"jambo {i}", "tgt.txt": f"hello {i}"})
    (batch,) = take(
        ShardLoader(ShardStream(str(tmp_path / "other-{000000..000000}.tar"), shuffle=False), 6), 1
    )
    assert batch["key"] == [f"s{i}" for i in range(6)] and batch["tgt"][5] == "hello 5"
