"""Shard folders: foreign files never touched, altered bytes caught and rebuilt, a full disk or a
second build leaving the previous build intact, bad bitexts refused before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    ENGLISH,
    SWAHILI,
    TINY,
    cli,
    cli_env,
    enospc,
    one_line_error,
    run_train,
    snapshot,
    train_cmd,
)

from dist_optical.config import REPO_ROOT


# shard --out: never touches files it did not write; a second build waits for nobody.
def test_shard_refuses_a_folder_with_foreign_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "xx-eng-000000.tar").write_bytes(b"someone else's tar")
    before = snapshot(out)
    proc = cli("shard", str(SWAHILI), str(ENGLISH), "--out", str(out), "--src-lang", "xx")
    one_line_error(proc, "holds files no shard build wrote", "notes.txt", "xx-eng-000000.tar")
    assert snapshot(out) == before


def test_a_second_shard_build_on_one_folder_fails_at_once(tmp_path):
    from dist_optical.data import build_shards
    from dist_optical.files import FolderInUse, hold_lock

    out = tmp_path / "shards"
    held = hold_lock(tmp_path / ".shards.lock", "shard (another build)")
    with held, pytest.raises(FolderInUse, match=r"in use by shard \(another build\)"):
        build_shards([SWAHILI, ENGLISH], out, "swh", "eng")
    assert not out.exists()


# Altered shard bytes: moved aside and rebuilt when the run opens the folder (its marker's sha256);
# damage the open check cannot see (after it, or on a rank that reads without it) is caught by the
# manifest's sha256 as the stream reads, in raise and in skip mode.
def altered_shards(tmp_path: Path, marked: bool = True) -> Path:
    """A copy of the tiny config's Swahili shards whose first shard has altered text, same size.
    ``marked``: the marker rewritten over the altered bytes, as if the shard changed after the open
    check, so only the stream's own check can tell."""
    from dist_optical import artifacts
    from dist_optical.config import load_config
    from dist_optical.data.prepare import ensure_shards

    cfg = load_config(TINY)
    sources = [manifest.parent for manifest in ensure_shards(cfg)]  # swh, wol
    root = tmp_path / "shards"
    for source in sources:  # same config, so the same folder names under the new data.shards
        shutil.copytree(source, root / source.name)
    swahili = root / sources[0].name
    first = swahili / json.loads((swahili / "manifest.json").read_text())["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    index = data.index(b"Yesu")  # a word of the first verses' text
    data[index : index + 4] = b"Yosu"
    first.write_bytes(bytes(data))
    if marked:
        artifacts.mark_complete(swahili, {"key": artifacts.read_marker(swahili)["key"]})
    return root


def test_altered_shards_are_moved_aside_and_rebuilt_when_opened(tmp_path, fresh_process, caplog):
    from dist_optical.config import load_config
    from dist_optical.data.prepare import ensure_shards

    shards = altered_shards(tmp_path, marked=False)
    (swahili, _) = sorted(p for p in shards.iterdir() if not p.name.startswith("."))
    altered = snapshot(swahili)
    with caplog.at_level("WARNING"):
        manifests = ensure_shards(load_config(TINY, [f"data.shards={shards}"]))
    assert manifests[0].parent == swahili
    (warning,) = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert "swh-eng-000000.tar" in warning and "sha256" in warning
    (aside,) = shards.glob(f"{swahili.name}.damaged-*")
    assert snapshot(aside) == altered  # kept, byte for byte
    original = snapshot(ensure_shards(load_config(TINY))[0].parent)
    rebuilt = {k: v for k, v in snapshot(swahili).items() if k.endswith(".tar")}
    assert rebuilt == {k: v for k, v in original.items() if k.endswith(".tar")}  # byte for byte


def test_altered_shard_text_is_a_shard_error_naming_the_shard(tmp_path):
    shards = altered_shards(tmp_path)
    before = snapshot(shards)
    proc = run_train(tmp_path / "run", f"data.shards={shards}", "train.max_steps=4", check=False)
    one_line_error(proc, "swh-eng-000000.tar", "sha256")
    assert snapshot(shards) == before  # not rebuilt over, not "repaired"


def test_skipping_too_much_fails_at_the_end_without_nan(tmp_path):
    shards = altered_shards(tmp_path)
    out = tmp_path / "run"
    proc = run_train(out, f"data.shards={shards}", "data.on_error=skip", "train.max_steps=4", check=False)
    one_line_error(proc, "skipped", "data.max_skip_fraction", "rebuild them with `dist-optical shard`")
    text = (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    metrics = [json.loads(line) for line in text.splitlines()]
    assert metrics[-1]["data/skipped"] > 0
    assert (out / "checkpoints" / "step000004").is_dir() and not (out / "model").exists()


def test_a_full_disk_while_sharding_keeps_the_previous_build(tmp_path, monkeypatch):
    from dist_optical.data import build_shards, shards
    from dist_optical.files import WriteError

    out = tmp_path / "shards"
    build_shards([SWAHILI, ENGLISH], out, "swh", "eng", pairs_per_shard=500)
    before = snapshot(out)
    monkeypatch.setattr(shards, "write_shard", enospc)
    with pytest.raises(WriteError, match=r"could not write the shards .*shards: no space left on the disk"):
        build_shards([SWAHILI, ENGLISH], out, "swh", "eng", pairs_per_shard=100)
    assert snapshot(out) == before and sorted(os.listdir(tmp_path)) == [".shards.lock", "shards"]


def test_a_training_jobs_shard_build_waits_for_the_one_in_progress(tmp_path, monkeypatch):
    import threading

    from dist_optical.data import build_shards, shards

    written: list[str] = []
    write_shard = shards.write_shard

    def slow_write(path, pairs):
        written.append(path.name)
        time.sleep(0.5)
        return write_shard(path, pairs)

    monkeypatch.setattr(shards, "write_shard", slow_write)
    out, args = tmp_path / "shards", ([SWAHILI, ENGLISH], tmp_path / "shards", "swh", "eng")
    first = threading.Thread(target=build_shards, args=args, kwargs={"pairs_per_shard": 5000})
    first.start()
    while not written:
        time.sleep(0.05)
    manifest = build_shards(*args, pairs_per_shard=5000, wait=60)
    first.join()
    assert len(written) == len(manifest["shards"])  # built once, by the first job
    assert manifest == json.loads((out / "manifest.json").read_text())


# Input formats and options: checked before any long work.
def test_an_empty_bitext_is_refused_at_shard_time(tmp_path):
    (tmp_path / "a.swh").write_text("")
    (tmp_path / "a.eng").write_text("")
    out = tmp_path / "s"
    proc = cli("shard", str(tmp_path / "a.swh"), str(tmp_path / "a.eng"), "--out", str(out))
    one_line_error(proc, "a.swh", "no pair to shard")
    assert not out.exists()


def test_an_undeclared_three_column_tsv_is_refused(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("jambo\thello\t0.9\nasante\tthanks\t0.8\n")  # src, tgt, a score: not key, src, tgt
    out = tmp_path / "s"
    one_line_error(cli("shard", str(tsv), "--out", str(out)), "pairs.tsv:1", "key<TAB>src<TAB>tgt")
    assert not out.exists() and tsv.read_text().startswith("jambo")


def test_two_jobs_on_fresh_shared_shards_and_teacher_cache_both_finish_as_if_alone(tmp_path):
    """Started together on folders neither has built: one builds the shards and the teacher cache, the
    other waits for each build and uses it; both then train exactly as a job alone does."""
    from helpers import assert_same_run

    alone = tmp_path / "alone"
    run_train(alone, f"data.shards={tmp_path / 'own-shards'}", "train.max_steps=8")
    shared = f"data.shards={tmp_path / 'shared-shards'}"
    jobs = [
        subprocess.Popen(train_cmd(tmp_path / f"job{i}", shared, "train.max_steps=8"), env=cli_env(),
                         cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)
    ]  # fmt: skip
    for job in jobs:
        assert job.wait(timeout=600) == 0, job.stderr.read()[-3000:]
    for i in (0, 1):
        assert_same_run(tmp_path / f"job{i}", alone)
    assert len(list((tmp_path / "shared-shards" / "teacher-cache").glob("[!.]*"))) == 1  # built once
