"""Runs stopped, resumed or damaged: a checkpoint at the step boundary, the newest complete tag
used, nothing written before changed or lost (each test checksums the folder before and after)."""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    ENGLISH,
    SWAHILI,
    cli_env,
    one_line_error,
    read_metrics,
    run_train,
    snapshot,
    train_cmd,
)

from dist_optical.config import REPO_ROOT


# `latest` missing or unreadable + --resume auto: the newest complete tag, not a fresh start.
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


# train again into a folder with checkpoints, without --resume: refused, nothing touched.
def test_a_fresh_start_on_a_runs_checkpoints_is_refused(finished):
    before = snapshot(finished)
    proc = run_train(finished, "train.max_steps=8", check=False)
    one_line_error(proc, "already holds a run's checkpoints", "--resume auto", "new --out")
    assert snapshot(finished) == before


# Two processes on one --out: the second fails at once naming the holder.
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


# A damaged newest tag: skipped with a warning naming the file; the previous one is used.
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
