import subprocess
import sys

from helpers import cli_env

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
