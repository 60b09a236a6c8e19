"""Shared by every test that runs the real CLI in a subprocess (training initialises
torch.distributed, which must not leak into the pytest process); the launcher tests run the same
tiny 2-rank job under each launcher and compare it bit for bit."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from dist_optical.config import REPO_ROOT
from dist_optical.engine.dist import DIST_VARS, free_port  # noqa: F401  (re-exported for tests)

TINY = REPO_ROOT / "configs" / "tiny.yaml"
# The base of tests that build a config from overrides (one Swahili bitext, MiniLM, no eval sets).
BARE = REPO_ROOT / "tests" / "bare.yaml"
# 12 steps (3 epochs of 4 steps on 2 ranks), periodic checkpoints at 4 and 8.
RUN = ("train.max_steps=12", "train.save_every=4")
# For two stops in one run: after a resume the tiny model does ~12 steps/s, so 12 steps could end
# before a second signal lands (seen once in CI); 48 leave it ~3 s.
LONG_RUN = ("train.max_steps=48", "train.save_every=16")


def cli_env() -> dict[str, str]:
    """The pytest environment minus any torch.distributed variables, one thread per rank.

    OMP_NUM_THREADS=1 everywhere: torchrun sets it for several local ranks but not for one, and a
    different thread count changes float reduction order (the last digits of the loss).
    """
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def train_args(out: Path, *overrides: str, config: Path = TINY, resume: str = "") -> list[str]:
    """Arguments after `python -m` (or a launcher's `-m`) for one training run."""
    args = ["dist_optical", "train", "--config", str(config), "--out", str(out)]
    return args + (["--resume", resume] if resume else []) + list(overrides)


def train_cmd(out: Path, *overrides: str, resume: str = "") -> list[str]:
    return [sys.executable, "-m", *train_args(out, *overrides, resume=resume)]


def run_python(*args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`python ARGS` (`-m MODULE ...`, `-c CODE`) from the repo root in the test environment.

    check: a failure fails the test with the tail of its stderr; check=False hands back the result
    whatever its exit status, for a test of a failure.
    """
    proc = subprocess.run([sys.executable, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)  # fmt: skip
    if check:
        assert proc.returncode == 0, (
            f"python {' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc


def run_module(*args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m ARGS` (see `run_python`)."""
    return run_python("-m", *args, timeout=timeout, check=check)


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m dist_optical ARGS`, whatever its exit status: for the tests of a failure."""
    return run_module("dist_optical", *args, timeout=timeout, check=False)


def run_train(
    out: Path, *overrides: str, resume: str = "", timeout: int = 900, check: bool = True
) -> subprocess.CompletedProcess:
    """`dist-optical train` of configs/tiny.yaml into ``out`` (see `run_python` for ``check``)."""
    return run_module(*train_args(out, *overrides, resume=resume), timeout=timeout, check=check)


def read_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_steps(out: Path, steps: int, timeout: float, alive=lambda: True) -> None:
    """Block until metrics.jsonl has `steps` lines (the run is mid-training), or fail."""
    deadline = time.monotonic() + timeout
    while len(read_metrics(out)) < steps:
        assert alive(), f"the run ended before step {steps}"
        assert time.monotonic() < deadline, f"no step {steps} in {out}/metrics.jsonl after {timeout} s"
        time.sleep(0.2)


def resumed_steps(log: str) -> list[int]:
    """The steps the trainer logged resuming at ('resumed from DIR/TAG at step N'), in order."""
    return [int(step) for step in re.findall(r"resumed from \S+ at step (\d+)", log)]


def assert_same_run(out: Path, reference: Path) -> None:
    """Every optimizer step once, in order, with exactly the reference's losses (CPU fp32: deterministic)."""
    got, want = read_metrics(out), read_metrics(reference)
    assert [m["step"] for m in got] == list(range(1, len(want) + 1))
    assert [m["loss"] for m in got] == [m["loss"] for m in want]


SWAHILI = REPO_ROOT.parent / "shared" / "data" / "tatoeba" / "tatoeba.swh-eng.swh"
ENGLISH = REPO_ROOT.parent / "shared" / "data" / "tatoeba" / "tatoeba.swh-eng.eng"


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (lock files, the tool's transient state, left out)."""
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


def enospc(*args, **kwargs):
    """Stands in for a write on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device", "/the/disk/file")
