"""Misuse and faults: every case names the problem, and nothing written before is changed or lost.

Each test checksums the run or shard folder before and after (``snapshot``; lock files are the
tool's own transient state and are left out).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY, cli, cli_env, read_metrics, run_train, train_cmd

from dist_optical.config import REPO_ROOT

SWAHILI = REPO_ROOT.parent / "shared" / "data" / "tatoeba" / "tatoeba.swh-eng.swh"
ENGLISH = REPO_ROOT.parent / "shared" / "data" / "tatoeba" / "tatoeba.swh-eng.eng"


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "locks" not in p.parts and not p.name.endswith(".lock")
    }


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Failed, said why in the named terms, and showed no traceback."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run with checkpoints at steps 4 and 8."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_train(out, "train.max_steps=8", "train.save_every=4", "train.keep_last=3")
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# 1. `latest` missing or unreadable + --resume auto: the newest complete tag, not a fresh start.
@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_resume_auto_without_a_readable_latest_continues_the_run(run_copy, damage):
    latest = run_copy / "checkpoints" / "latest"
    latest.unlink() if damage == "missing" else latest.write_text("no such tag\x00")
    tag8 = snapshot(run_copy / "checkpoints" / "step000008")
    before = read_metrics(run_copy)
    proc = run_train(run_copy, "train.max_steps=10", "train.save_every=4", resume="auto", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "step000008 at step 8" in proc.stderr
    assert read_metrics(run_copy)[:8] == before  # not rewritten from step 0
    assert snapshot(run_copy / "checkpoints" / "step000008") == tag8  # not overwritten


# 2. train again into a folder with checkpoints, without --resume: refused, nothing touched.
def test_a_fresh_start_on_a_runs_checkpoints_is_refused(finished):
    before = snapshot(finished)
    proc = run_train(finished, "train.max_steps=8", check=False)
    one_line_error(proc, "already holds a run's checkpoints", "--resume auto", "new --out")
    assert snapshot(finished) == before


# 3. Two processes on one --out: the second fails at once naming the holder.
def test_a_second_process_on_a_run_folder_fails_at_once(tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen(train_cmd(out, "train.max_steps=400"), env=cli_env(), cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((out / "metrics.jsonl").exists() and read_metrics(out)):
            time.sleep(0.2)
        started = time.time()
        proc = run_train(out, "train.max_steps=400", resume="auto", check=False)
        one_line_error(proc, "is in use by train rank 0", f"pid {first.pid}")
        assert time.time() - started < 120  # refused up front, not after a model load and a wait
    finally:
        first.kill()
        first.wait()
    steps = [m["step"] for m in read_metrics(out)]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no step logged twice


# 4. shard --out: never touches files it did not write; a second build waits for nobody.
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


# 5. Altered shard bytes: moved aside and rebuilt when the run opens the folder (its marker's sha256);
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


# 6. A damaged newest tag: skipped with a warning naming the file; the previous one is used.
def test_a_damaged_newest_tag_is_skipped_for_the_previous(run_copy):
    states = run_copy / "checkpoints" / "step000008" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:1000])
    tag4 = snapshot(run_copy / "checkpoints" / "step000004")
    proc = run_train(run_copy, "train.max_steps=8", "train.save_every=4", resume="auto", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step000008 is damaged" in proc.stderr and "mp_rank_00_model_states.pt" in proc.stderr
    assert "step000004 at step 4" in proc.stderr
    assert snapshot(run_copy / "checkpoints" / "step000004") == tag4


def test_no_complete_tag_is_a_clear_error(run_copy):
    for tag in ("step000004", "step000008"):
        (run_copy / "checkpoints" / tag / "dist_optical.json").unlink()
    before = snapshot(run_copy)
    proc = run_train(run_copy, "train.max_steps=8", resume="auto", check=False)
    one_line_error(proc, "no complete checkpoint to resume from", "dist_optical.json is missing")
    assert snapshot(run_copy) == before


# A full disk while saving: says so, removes the partial tag, leaves the previous one intact.
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(run_copy):
    from dist_optical.engine import checkpoint

    ckpt = run_copy / "checkpoints"
    before = snapshot(ckpt)

    class FullDisk:
        def save_checkpoint(self, save_dir, tag, client_state, save_latest):
            (Path(save_dir) / tag).mkdir()
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(save_dir) / tag / "x.pt"))

    with pytest.raises(checkpoint.CheckpointError, match="no space left on the disk"):
        checkpoint.save(FullDisk(), ckpt, 12, {"world_size": 1}, is_main=True, keep_last=2)
    assert snapshot(ckpt) == before and not (ckpt / "step000012").exists()
    assert not list(ckpt.rglob("*.tmp"))


# Ctrl-C: like SIGTERM, a checkpoint at the next step boundary and exit 75.
def test_ctrl_c_checkpoints_and_exits_75(tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(train_cmd(out, "train.max_steps=400"), env=cli_env(), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and len(read_metrics(out)) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    tag = (out / "checkpoints" / "latest").read_text()
    assert int(tag.removeprefix("step")) == len(read_metrics(out)) >= 3


# A loss that goes non-finite: its own exit status, a message, no traceback, checkpoint kept.
def test_a_non_finite_loss_stops_with_its_own_status(tmp_path):
    out = tmp_path / "nan"
    run_train(out, "train.max_steps=4")
    kept = snapshot(out / "checkpoints")
    proc = run_train(
        out, "train.max_steps=12", "train.lr=1e30", "train.warmup_steps=0", resume="auto", check=False
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert (
        "Traceback" not in proc.stderr and "non-finite" in proc.stderr and "checkpoint is kept" in proc.stderr
    )
    assert {k: v for k, v in snapshot(out / "checkpoints").items() if k in kept} == kept


# The smaller cases: each a one-line error naming the file or key, before any long work.
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("train.micro_batch_size=0",), ("command line (train.micro_batch_size=0)", "expected >= 1")),
        (("train.max_steps=-5",), ("'train.max_steps'", "expected > 0")),
        (("train.lr=-1e-4",), ("'train.lr'", "expected > 0")),
        (("ot.grad=sideways",), ("'ot.grad'", "envelope, unrolled")),
        (("loss={otto: 1.0}",), ("'loss.otto'", "expected one of ot, ot_nce")),
        (("model.pooling=max",), ("'model.pooling'", "mean, cls")),
        (("train.lr=inf",), ("command line (train.lr=inf)", "expected a finite number")),
        (("data.bitexts[0].weight=-1",), ("command line (data.bitexts[0].weight=-1)", "'data.bitexts[0]'")),
    ],
)
def test_bad_values_are_refused_up_front_naming_the_key_and_the_command_line(tmp_path, args, needles):
    proc = run_train(tmp_path / "run", *args, check=False)
    one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_usage_mistakes_are_one_line_errors(tmp_path, finished):
    folder_file = tmp_path / "out-file"
    folder_file.write_text("I am a file")
    one_line_error(run_train(folder_file, check=False), "exists and is not a folder")
    assert folder_file.read_text() == "I am a file"
    one_line_error(
        cli("train", "--config", str(REPO_ROOT / "configs"), "--out", str(tmp_path / "r")), "is a folder"
    )
    one_line_error(cli("shard", str(tmp_path), str(ENGLISH), "--out", str(tmp_path / "s")), "is a folder")
    one_line_error(cli("export", str(tmp_path / "nowhere"), str(tmp_path / "m")), "export", "no checkpoint")
    nul = tmp_path / "nul.swh"
    nul.write_bytes(b"habari\nja\x00mbo\n")
    (tmp_path / "two.eng").write_text("hello\nworld\n")
    one_line_error(
        cli("shard", str(nul), str(tmp_path / "two.eng"), "--out", str(tmp_path / "s2")), "nul.swh:2", "NUL"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    evaluate = ("eval", "--model", "all-MiniLM-L6-v2", "--queries", str(empty), "--targets", str(ENGLISH))
    one_line_error(cli(*evaluate), "empty.txt: is empty")


def test_eval_checks_the_models_before_encoding(tmp_path, finished):
    # A garbage dist_optical.json in a model folder names the file.
    model = tmp_path / "model"
    shutil.copytree(finished / "model", model)
    (model / "dist_optical.json").write_text("{not json")
    args = ("--queries", str(SWAHILI), "--targets", str(ENGLISH), "--max-pairs", "8")
    one_line_error(cli("eval", "--model", str(model), *args), "dist_optical.json: not valid JSON")
    # The tiny student (width 32) against the MiniLM teacher (width 384), in a hand-made folder (an
    # export's own dist_optical.json, edited, would be a damaged export).
    (model / "artifact.json").unlink()
    (model / "dist_optical.json").write_text(json.dumps({"teacher": "all-MiniLM-L6-v2", "max_length": 32}))
    one_line_error(cli("eval", "--model", str(model), *args), "32 dimensions", "384")
    # A tokenizer larger than the model's embedding table.
    from transformers import BertConfig, BertModel

    from dist_optical.models import load_tokenizer

    small = tmp_path / "small"
    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(small)  # fmt: skip
    load_tokenizer("all-MiniLM-L6-v2").save_pretrained(small)
    one_line_error(cli("eval", "--model", str(small), *args), "embedding table has 100")
    assert os.listdir(small)  # nothing deleted


# ---------------------------------------------------------------------------- nothing lost, round two


# Outputs never clobber: export replaces only a previous export; train/run only write run folders.
def test_export_replaces_only_a_previous_export(finished, tmp_path):
    tag = str(finished / "checkpoints" / "step000008")
    run_before = snapshot(finished)
    one_line_error(cli("export", tag, str(finished)), "is not a previous export", "checkpoints")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    one_line_error(cli("export", tag, str(mine)), "is not a previous export", "notes.txt")
    plain = tmp_path / "plain"
    plain.write_text("a file")
    one_line_error(cli("export", tag, str(plain)), "exists and is a file")
    assert snapshot(finished) == run_before
    assert (mine / "notes.txt").read_text() == "my notes" and plain.read_text() == "a file"
    previous = tmp_path / "previous"
    shutil.copytree(finished / "model", previous)
    (previous / "README.md").write_text("an older card")  # and the marker no longer matches: still an export
    proc = cli("export", tag, str(previous))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (previous / "artifact.json").is_file() and "an older card" not in (
        previous / "README.md"
    ).read_text()


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize("resume", ["", "auto"])
def test_train_and_run_refuse_a_folder_that_is_not_a_run_folder(tmp_path, command, resume):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "config.yaml").write_text("mine: true\n")
    (out / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.5}\n')
    before = snapshot(out)
    args = [command, "--config", str(TINY), "--out", str(out), *(["--resume", resume] if resume else [])]
    one_line_error(cli(*args), "holds files no run wrote", "notes.txt", "new --out")
    assert snapshot(out) == before and sorted(os.listdir(out)) == [
        "config.yaml",
        "metrics.jsonl",
        "notes.txt",
    ]


def test_a_metrics_file_of_another_shape_is_named_not_a_traceback(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.5}\n')
    one_line_error(
        run_train(out, "train.max_steps=2", resume="auto", check=False),
        "metrics.jsonl:1",
        "not a metrics line",
    )
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1, "acc": 0.5}\n'


# One way to report a failed write: one line naming the path and what was written; nothing half-done.
def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/the/disk/file")


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


def test_torchs_full_disk_error_while_saving_is_named_and_the_partial_tag_removed(run_copy):
    from dist_optical.engine import checkpoint

    ckpt = run_copy / "checkpoints"
    before = snapshot(ckpt)

    class TorchFullDisk:  # what torch.save raises on a full disk: a RuntimeError, no errno
        def save_checkpoint(self, save_dir, tag, client_state, save_latest):
            (Path(save_dir) / tag).mkdir()
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(checkpoint.CheckpointError, match="torch's file writer failed.*MB free on that disk"):
        checkpoint.save(TorchFullDisk(), ckpt, 12, {"world_size": 1}, is_main=True, keep_last=2)
    assert snapshot(ckpt) == before and not (ckpt / "step000012").exists()


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(
        run_train(blocker / "run", check=False), "could not write the run folder", "a file is in the way"
    )
    assert blocker.read_text() == "not a folder"


# Built artifacts: checked on open, a damaged one moved aside (kept) and rebuilt, dead builds removed.
@pytest.fixture
def fresh_process(monkeypatch):
    """Forget which artifacts this process already hashed: the next open is like a new job's."""
    from dist_optical import artifacts

    monkeypatch.setattr(artifacts, "_hashed", set())


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


# Builds others wait for (a run folder still refuses at once: test 3 above).
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


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (("--max-length", "0"), "command line (--max-length 0): expected >= 2"),
        (("--max-pairs", "-1"), "command line (--max-pairs -1): expected >= 0"),
        (("--json", "."), "command line (--json .): is a folder"),
    ],
)
def test_eval_options_are_range_checked(option, needle):
    args = ("eval", "--model", "all-MiniLM-L6-v2", "--queries", str(SWAHILI), "--targets", str(ENGLISH))
    one_line_error(cli(*args, *option), needle)


# --resume PATH into a new run folder carries the source run's trimmed vocabulary.
def test_resume_from_another_runs_checkpoint_carries_its_vocabulary(finished, tmp_path):
    before = snapshot(finished)
    out = tmp_path / "continued"
    proc = run_train(out, "train.max_steps=10", resume=str(finished / "checkpoints"), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "vocab.json").read_bytes() == (finished / "vocab.json").read_bytes()
    assert read_metrics(out)[-1]["step"] == 10 and snapshot(finished) == before
    source = tmp_path / "source"
    shutil.copytree(finished, source)
    (source / "vocab.json").unlink()
    proc = run_train(
        tmp_path / "other", "train.max_steps=10", resume=str(source / "checkpoints"), check=False
    )
    one_line_error(proc, "vocab.json is missing", "model.trim_vocab")


# A rank whose launcher dies takes the SIGTERM path: a checkpoint at the step boundary, exit 75.
def test_a_rank_whose_launcher_is_killed_checkpoints_and_stops(tmp_path):
    from helpers import free_port

    out, log = tmp_path / "orphan", tmp_path / "rank0.log"
    env = {**cli_env(), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}  # fmt: skip
    # A stand-in launcher: starts the rank as torchrun does (a session of its own) and waits for it.
    launcher_code = (
        "import subprocess, sys\n"
        f"rank = subprocess.Popen({train_cmd(out, 'train.max_steps=400')!r}, start_new_session=True,\n"
        f"                        stderr=open({str(log)!r}, 'w'), stdout=subprocess.DEVNULL)\n"
        "print(rank.pid, flush=True)\n"
        "sys.exit(rank.wait())\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], env=env, cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    rank = int(launcher.stdout.readline())
    deadline = time.time() + 240
    while time.time() < deadline and len(read_metrics(out)) < 3:
        time.sleep(0.2)
    launcher.kill()  # kill -9: no chance to pass anything on
    launcher.wait()
    while time.time() < deadline and Path(f"/proc/{rank}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{rank}").exists(), "the orphaned rank is still running"
    text = log.read_text()
    assert "stopped by SIGTERM" in text and "Traceback" not in text, text[-2000:]
    tag = (out / "checkpoints" / "latest").read_text()
    assert int(tag.removeprefix("step")) == len(read_metrics(out)) >= 3


def test_a_resume_on_an_edited_bitext_is_refused_naming_the_file(tmp_path):
    """The shards of an edited bitext are another folder, so nothing is rebuilt under the run; and the
    run itself, resumed, refuses to go on training on other text than it started with."""
    root = tmp_path / "data"
    root.mkdir()
    sw = SWAHILI.read_text(encoding="utf-8").splitlines()[:40]
    en = ENGLISH.read_text(encoding="utf-8").splitlines()[:40]
    (root / "a.swh").write_text("\n".join(sw) + "\n", encoding="utf-8")
    (root / "a.eng").write_text("\n".join(en) + "\n", encoding="utf-8")
    data = (f"data.root={root}", f"data.shards={tmp_path / 'shards'}",
            "data.bitexts=[{lang: swh, files: [a.swh, a.eng]}]", "eval.sets=[]")  # fmt: skip
    out = tmp_path / "run"
    run_train(out, *data, "train.max_steps=4", "train.save_every=2")
    before = snapshot(out)
    (root / "a.eng").write_text("\n".join(en[::-1]) + "\n", encoding="utf-8")  # same lines, other pairs
    proc = run_train(out, *data, "train.max_steps=8", resume="auto", check=False)
    one_line_error(proc, "cannot resume", "a.eng changed since the checkpoint")
    assert snapshot(out) == before


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
