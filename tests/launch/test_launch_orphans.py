"""kill -9 of the launcher (or the OOM killer taking it) leaves no orphaned ranks: each rank follows
its launcher through the parent-death signal, checkpoints at the step boundary and exits, so that
`--resume auto` continues the run exactly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import LONG_RUN, TINY, assert_same_run, cli_env, wait_for_steps

from dist_optical.config import REPO_ROOT
from dist_optical.engine.dist import free_port

pytestmark = pytest.mark.multiproc


def torchrun(out: Path, resume: str = "") -> subprocess.Popen:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
    ]
    train = ["-m", "dist_optical", "train", f"--config={TINY}", f"--out={out}", *LONG_RUN]
    resumed = ["--resume", resume] if resume else []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.Popen([*launcher, *train, *resumed], env=cli_env(), cwd=REPO_ROOT, **quiet)


def processes_writing(out: Path) -> list[int]:
    """Live processes whose command line names the run folder (the ranks, wherever they were moved)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_kill_9_of_torchrun_leaves_no_rank_and_resumes_exactly(tmp_path, long_reference):
    out = tmp_path / "run"
    launcher = torchrun(out)
    wait_for_steps(out, 5, timeout=240, alive=lambda: launcher.poll() is None)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 120
    while processes_writing(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_writing(out) == [], "ranks outlived their killed launcher"
    assert (out / "checkpoints" / "latest").is_file()  # they checkpointed on the way out
    assert torchrun(out, resume="auto").wait(timeout=300) == 0
    assert_same_run(out, long_reference)
