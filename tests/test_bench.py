"""Bench scripts stay runnable: each has a seconds-long smoke mode, run here, so that a renamed
field breaks a test rather than a benchmark nobody runs."""

import json
import sys

from helpers import cli_env

from dist_optical.config import REPO_ROOT


def test_anatomy_times_one_step_of_the_tiny_config():
    import subprocess

    cmd = [sys.executable, "bench/anatomy.py", "--config", "configs/tiny.yaml", "--steps", "3", "--skip", "1"]
    proc = subprocess.run(cmd, env=cli_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps_timed"] == 2 and result["step_s"] > 0
    assert abs(sum(result["phase_share"].values()) - 1) < 0.05
    assert result["teacher_cache"]["texts"] > 0  # tiny.yaml reads the teacher from its cache
