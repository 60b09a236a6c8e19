"""Run the real CLI in a subprocess: training initialises torch.distributed, which must not leak
into the pytest process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dist_optical.config import REPO_ROOT
from dist_optical.engine.dist import free_port  # noqa: F401  (re-exported for tests)

TINY = REPO_ROOT / "configs" / "tiny.yaml"


def cli_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
            "LOCAL_SIZE",
            "LOCAL_WORLD_SIZE",
        )
    }
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def train_args(out: Path, *overrides: str, config: Path = TINY, resume: str = "") -> list[str]:
    """Arguments after `python -m` (or a launcher's `-m`) for one training run."""
    args = ["dist_optical", "train", "--config", str(config), "--out", str(out)]
    return args + (["--resume", resume] if resume else []) + list(overrides)


def train_cmd(out: Path, *overrides: str, resume: str = "") -> list[str]:
    return [sys.executable, "-m", *train_args(out, *overrides, resume=resume)]


def run_module(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m ARGS` in the test environment; a failure shows the tail of its stderr."""
    proc = subprocess.run([sys.executable, "-m", *args], env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)  # fmt: skip
    assert proc.returncode == 0, (
        f"python -m {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    return proc


def run_train(
    out: Path, *overrides: str, resume: str = "", timeout: int = 900
) -> subprocess.CompletedProcess:
    return run_module(*train_args(out, *overrides, resume=resume), timeout=timeout)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
