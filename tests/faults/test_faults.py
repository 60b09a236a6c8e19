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
from helpers import TINY, cli_env, read_metrics, run_train, train_cmd

from dist_optical.config import REPO_ROOT

SWAHILI = REPO_ROOT.parent / "shared" / "data" / "tatoeba" / "tatoeba.swh-eng.swh"
ENGLISH = REPO_ROOT.parent / "shared" / "data" / "tatoeba" / "tatoeba.swh-eng.eng"


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "locks" not in p.parts and not p.name.endswith(".lock")
    }


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dist_optical", *args], env=cli_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def train_args(out: Path, *overrides: str, resume: str = "") -> list[str]:
    return [
        "train",
        "--config",
        str(TINY),
        "--out",
        str(out),
        *(["--resume", resume] if resume else []),
        *overrides,
    ]


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
    proc = cli(*train_args(run_copy, "train.max_steps=10", "train.save_every=4", resume="auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "step000008 at step 8" in proc.stderr
    assert read_metrics(run_copy)[:8] == before  # not rewritten from step 0
    assert snapshot(run_copy / "checkpoints" / "step000008") == tag8  # not overwritten


# 2. train again into a folder with checkpoints, without --resume: refused, nothing touched.
def test_a_fresh_start_on_a_runs_checkpoints_is_refused(finished):
    before = snapshot(finished)
    proc = cli(*train_args(finished, "train.max_steps=8"))
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
        proc = cli(*train_args(out, "train.max_steps=400", resume="auto"))
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


# 5. Altered shard bytes: caught by the manifest's sha256, in raise and in skip mode.
def altered_shards(tmp_path: Path) -> Path:
    """A copy of the tiny config's Swahili shards whose first shard has altered text, same size."""
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
    return root


def test_altered_shard_text_is_a_shard_error_naming_the_shard(tmp_path):
    shards = altered_shards(tmp_path)
    before = snapshot(shards)
    proc = cli(*train_args(tmp_path / "run", f"data.shards={shards}", "train.max_steps=4"))
    one_line_error(proc, "swh-eng-000000.tar", "sha256")
    assert snapshot(shards) == before  # not rebuilt over, not "repaired"


def test_skipping_too_much_fails_at_the_end_without_nan(tmp_path):
    shards = altered_shards(tmp_path)
    out = tmp_path / "run"
    proc = cli(*train_args(out, f"data.shards={shards}", "data.on_error=skip", "train.max_steps=4"))
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
    proc = cli(*train_args(run_copy, "train.max_steps=8", "train.save_every=4", resume="auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step000008 is damaged" in proc.stderr and "mp_rank_00_model_states.pt" in proc.stderr
    assert "step000004 at step 4" in proc.stderr
    assert snapshot(run_copy / "checkpoints" / "step000004") == tag4


def test_no_complete_tag_is_a_clear_error(run_copy):
    for tag in ("step000004", "step000008"):
        (run_copy / "checkpoints" / tag / "dist_optical.json").unlink()
    before = snapshot(run_copy)
    proc = cli(*train_args(run_copy, "train.max_steps=8", resume="auto"))
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
    proc = cli(*train_args(out, "train.max_steps=12", "train.lr=1e30", "train.warmup_steps=0", resume="auto"))
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
    ],
)
def test_bad_values_are_refused_up_front_naming_the_key_and_the_command_line(tmp_path, args, needles):
    proc = cli(*train_args(tmp_path / "run", *args))
    one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_usage_mistakes_are_one_line_errors(tmp_path, finished):
    folder_file = tmp_path / "out-file"
    folder_file.write_text("I am a file")
    one_line_error(cli(*train_args(folder_file)), "exists and is not a folder")
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
    # The tiny student (width 32) against the MiniLM teacher (width 384).
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
