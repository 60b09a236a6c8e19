"""`accelerate launch` with the DeepSpeed plugin config reaches the same trainer code path."""

import subprocess
import sys

import pytest
import torch
from helpers import RUN, TINY, assert_same_run, cli_env

from dist_optical.config import REPO_ROOT
from dist_optical.engine.dist import free_port

pytestmark = pytest.mark.multiproc


def test_accelerate_launch_zero2_two_processes(tmp_path, reference):
    out = tmp_path / "run"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", f"--main_process_port={free_port()}"]
    # The plugin yaml names configs/ds/zero2.json; the run config must name the same (the yaml's header).
    train = ["-m", "dist_optical", "train", f"--config={TINY}", f"--out={out}", *RUN]
    cmd = [
        *accelerate,
        "--config_file=launchers/accelerate/zero2.yaml",
        *train,
        "train.deepspeed=configs/ds/zero2.json",
    ]
    proc = subprocess.run(cmd, env=cli_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The engine really ran ZeRO-2 on 2 ranks (the reference is ZeRO-1: identical numbers in fp32).
    states = torch.load(out / "checkpoints" / "step000012" / "mp_rank_00_model_states.pt", weights_only=False)
    assert states["ds_config"]["zero_optimization"]["stage"] == 2
    assert states["world_size"] == 2
    assert_same_run(out, reference)
