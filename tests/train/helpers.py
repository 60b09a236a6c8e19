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


def train_cmd(out: Path, *overrides: str, config: Path = TINY, resume: str = "") -> list[str]:
    cmd = [sys.executable, "-m", "dist_optical", "train", "--config", str(config), "--out", str(out)]
    return cmd + (["--resume", resume] if resume else []) + list(overrides)


def run_train(
    out: Path, *overrides: str, resume: str = "", timeout: int = 300
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_cmd(out, *overrides, resume=resume),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, f"train failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
