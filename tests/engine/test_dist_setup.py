import subprocess
import sys

import pytest
from helpers import cli_env, free_port

from dist_optical.config import REPO_ROOT

SETUP = "from dist_optical.engine import dist; env = dist.setup(); print('world', env.world_size)"


def test_setup_ignores_a_stale_torch_extension_lock(tmp_path):
    """A build lock left by a killed process once hung every CI run: setup() must not wait on it."""
    extensions = tmp_path / "torch_extensions"
    (extensions / "deepspeed_shm_comm").mkdir(parents=True)
    (extensions / "deepspeed_shm_comm" / "lock").touch()
    env = {**cli_env(), "TORCH_EXTENSIONS_DIR": str(extensions)}
    proc = subprocess.run([sys.executable, "-c", SETUP], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 1" in proc.stdout


ORDER = """
import os, sys, time
import torch.distributed
from dist_optical.engine import dist
torch.distributed.init_process_group("gloo")
rank, log = int(os.environ["RANK"]), sys.argv[1]
with dist.main_rank_first(rank == 0):
    if rank == 0:
        time.sleep(1)  # a build: the other rank must not enter before it is done
    with open(log, "a") as handle:
        handle.write(f"{rank}\\n")
torch.distributed.destroy_process_group()
"""


@pytest.mark.multiproc
def test_main_rank_first_runs_the_block_on_the_main_rank_before_the_others(tmp_path):
    (tmp_path / "order.py").write_text(ORDER)
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    cmd = [sys.executable, *launcher, str(tmp_path / "order.py"), str(tmp_path / "log")]
    proc = subprocess.run(cmd, env=cli_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "log").read_text().split() == ["0", "1"]
