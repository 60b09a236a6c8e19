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


ONE_RANK = """
import torch
from dist_optical.config import TrainConfig
from dist_optical.engine import dist
from dist_optical.engine.deepspeed import build_ds_config, wrap_student
from dist_optical.models import load_encoder
dist.setup()
tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
trained = []
for reduce in (False, True):
    model = load_encoder("unused", tiny, vocab_size=100).eval()  # seeded; no dropout
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    train = TrainConfig(precision="fp32", warmup_steps=0, max_steps=5)
    engine, _ = wrap_student(model, build_ds_config(train, world_size=1))
    assert engine.zero_optimization_stage() == 0 and engine.enable_backward_allreduce is False
    engine.enable_backward_allreduce = reduce  # True: DeepSpeed's flatten, 1-rank all-reduce, copy back
    for step in range(3):
        ids = torch.arange(24).view(3, 8) * (step + 1) % 100
        engine.backward(engine(input_ids=ids).last_hidden_state.pow(2).mean())
        engine.step()
    trained.append(torch.cat([p.detach().flatten() for p in engine.module.parameters()]))
print("same", torch.equal(trained[0], trained[1]), "moved", not torch.equal(trained[0], start))
"""


def test_one_rank_skips_deepspeeds_gradient_all_reduce_and_trains_the_same():
    """At one rank and ZeRO-0 the engine skips the all-reduce (DeepSpeed would flatten and copy every
    gradient for nothing): the same parameters after 3 steps as with it."""
    env = cli_env()
    proc = subprocess.run([sys.executable, "-c", ONE_RANK], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same True moved True" in proc.stdout
