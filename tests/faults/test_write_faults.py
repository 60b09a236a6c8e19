"""Failed writes and built artifacts: a full disk names the path and leaves the previous file, export
or folder intact; a damaged artifact is moved aside (kept) and rebuilt; jobs wait for a build in
progress."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import (
    ENGLISH,
    SWAHILI,
    TINY,
    cli,
    enospc,
    one_line_error,
    run_train,
    snapshot,
)

# One way to report a failed write: one line naming the path and what was written; nothing half-done.


def test_a_full_disk_while_writing_a_file_keeps_the_previous_one(tmp_path, monkeypatch):
    from dist_optical.files import WriteError, atomic_write

    target = tmp_path / "results.json"
    target.write_text("previous")
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(
        WriteError, match=r"could not write the metrics .*results.json: no space left on the disk"
    ):
        atomic_write(target, "new", "the metrics")
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["results.json"]


def test_a_lock_file_that_cannot_be_written_is_one_line(tmp_path):
    from dist_optical.files import WriteError, hold_lock

    (tmp_path / "run.lock").mkdir()  # a folder in the way: EISDIR, even for root
    failure = r"could not write the lock file .*run.lock: a folder is in the way"
    with pytest.raises(WriteError, match=failure), hold_lock(tmp_path / "run.lock", "run"):
        pass


def test_a_full_disk_while_exporting_keeps_the_previous_export(finished, tmp_path, monkeypatch):
    from dist_optical.files import WriteError
    from dist_optical.models import package
    from dist_optical.train.export import export_checkpoint

    previous = tmp_path / "model"
    shutil.copytree(finished / "model", previous)
    before = snapshot(previous)
    monkeypatch.setattr(package.artifacts, "mark_complete", enospc)
    with pytest.raises(WriteError, match=r"could not write the exported model .*model: no space left"):
        export_checkpoint(finished / "checkpoints" / "step000004", previous)  # step 8's is `previous`
    assert snapshot(previous) == before
    assert [n for n in os.listdir(tmp_path) if not n.endswith(".lock")] == ["model"]  # no scratch folder left


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(
        run_train(blocker / "run", check=False), "could not write the run folder", "a file is in the way"
    )
    assert blocker.read_text() == "not a folder"


# Built artifacts: checked on open, a damaged one moved aside (kept) and rebuilt, dead builds removed.


def counting_builder(calls: list[int]):
    def build(tmp: Path) -> dict:
        calls.append(1)
        (tmp / "weights.bin").write_bytes(bytes(range(256)) * 4)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "names.txt").write_text("a\nb\n")
        return {"version": 1}

    return build


@pytest.mark.parametrize("damage", ["altered", "truncated", "missing", "no marker"])
def test_a_damaged_artifact_is_moved_aside_and_rebuilt(tmp_path, fresh_process, caplog, damage):
    from dist_optical.artifacts import MARKER, build_once

    calls: list[int] = []
    folder = build_once(tmp_path / "thing", counting_builder(calls), "the thing")
    good = snapshot(folder)
    weights = folder / "weights.bin"
    if damage == "altered":
        weights.write_bytes(bytes(1024))  # same size: only the sha256 tells
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (folder / ("weights.bin" if damage == "missing" else MARKER)).unlink()
    damaged = snapshot(folder)
    (tmp_path / ".thing.build-dead").mkdir()  # a build killed before it finished
    with caplog.at_level("WARNING"):
        assert build_once(tmp_path / "thing", counting_builder(calls), "the thing") == folder
    assert len(calls) == 2 and snapshot(folder) == {**good, MARKER: snapshot(folder)[MARKER]}
    assert any("the thing" in r.getMessage() and "is damaged" in r.getMessage() for r in caplog.records)
    (aside,) = tmp_path.glob("thing.damaged-*")
    assert snapshot(aside) == damaged  # kept, byte for byte
    assert not list(tmp_path.glob(".thing.build-*"))


def test_a_failed_build_leaves_nothing_and_says_what_it_was_writing(tmp_path):
    from dist_optical.artifacts import build_once
    from dist_optical.files import WriteError

    def build(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"half")
        enospc()

    with pytest.raises(WriteError, match=r"could not write the thing .*thing: no space left on the disk"):
        build_once(tmp_path / "thing", build, "the thing")
    assert os.listdir(tmp_path) == [".thing.lock"]


def test_a_damaged_teacher_cache_is_rebuilt_not_served(tmp_path, fresh_process, caplog):
    import numpy as np

    from dist_optical.config import load_config
    from dist_optical.data.prepare import ensure_shards
    from dist_optical.models import special_ids
    from dist_optical.train.run import build_models
    from dist_optical.train.teacher_cache import open_cache

    cfg = load_config(TINY, [f"data.shards={tmp_path / 'shards'}"])
    manifests = ensure_shards(cfg)
    teacher, tokenizer, _, _ = build_models(cfg)
    cache = open_cache(cfg, manifests, teacher, tokenizer, special_ids(tokenizer))
    tokens = np.array(cache.tokens)
    np.save(cache.folder / "tokens.npy", np.zeros_like(tokens))  # same size, wrong numbers
    with caplog.at_level("WARNING"):
        again = open_cache(cfg, manifests, teacher, tokenizer, special_ids(tokenizer))
    assert again.folder == cache.folder and np.array_equal(np.array(again.tokens), tokens)
    assert any("tokens.npy does not match its sha256" in r.getMessage() for r in caplog.records)


def test_a_damaged_e5_folder_is_rebuilt(tmp_path, monkeypatch):
    from dist_optical import artifacts
    from dist_optical.models import e5

    monkeypatch.setenv("DIST_OPTICAL_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []

    def convert(bin_path, out_dir):
        calls.append(1)
        (Path(out_dir) / "model.safetensors").write_bytes(b"\x01" * 64)

    monkeypatch.setattr(e5, "convert", convert)
    folder = e5.e5_folder()
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)  # one zeroed tensor, same size
    monkeypatch.setattr(artifacts, "_hashed", set())  # a later job: hashes checked again
    assert e5.e5_folder() == folder and (folder / "model.safetensors").read_bytes() == b"\x01" * 64
    assert len(calls) == 2 and len(list(folder.parent.glob("*.damaged-*"))) == 1


def test_a_damaged_export_is_refused_by_eval_naming_the_file(finished, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(finished / "model", model)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)
    weights.write_bytes(bytes(data))
    args = ("--queries", str(SWAHILI), "--targets", str(ENGLISH), "--max-pairs", "8")
    one_line_error(cli("eval", "--model", str(model), *args), "damaged export", "model.safetensors", "sha256")


# Builds others wait for (a run folder still refuses at once: test_runs.py).
def test_a_job_waits_for_a_build_in_progress_then_uses_it(tmp_path, caplog, monkeypatch):
    import threading

    from dist_optical import files
    from dist_optical.artifacts import build_once

    monkeypatch.setattr(files, "WAIT_REPORT_S", 0.2)
    calls: list[int] = []
    started = threading.Event()

    def slow(tmp: Path) -> dict:
        started.set()
        time.sleep(1.5)
        return counting_builder(calls)(tmp)

    first = threading.Thread(target=build_once, args=(tmp_path / "thing", slow, "the thing"))
    first.start()
    started.wait(10)
    with caplog.at_level("WARNING"):
        assert (
            build_once(tmp_path / "thing", counting_builder(calls), "the thing", wait=60)
            == tmp_path / "thing"
        )
    first.join()
    assert len(calls) == 1
    assert any(
        "waiting for" in r.getMessage() and f"pid {os.getpid()}" in r.getMessage() for r in caplog.records
    )


def test_a_job_gives_up_waiting_after_its_timeout_naming_the_builder(tmp_path):
    from dist_optical.artifacts import build_once
    from dist_optical.files import FolderInUse, hold_lock

    held = hold_lock(tmp_path / ".thing.lock", "the build of the thing (elsewhere)")
    with held, pytest.raises(FolderInUse, match=r"in use by the build of the thing \(elsewhere\).* gave up"):
        build_once(tmp_path / "thing", counting_builder([]), "the thing", wait=1)
    assert not (tmp_path / "thing").exists()
