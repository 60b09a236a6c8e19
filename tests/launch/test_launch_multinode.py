"""Two "nodes" on one machine: torchrun's static rendezvous and the deepspeed launcher's no-ssh mode.

Each node is its own launcher process with one rank (node_rank 0/1), so each reads its own share of
the shards; matching the one-node 2-rank reference bit for bit shows they form one 2-rank job.
"""

import signal
import subprocess
from subprocess import PIPE, STDOUT

import pytest
from helpers import LONG_RUN, RUN, TINY, assert_same_run, cli_env, read_metrics, resumed_steps, wait_for_steps

from dist_optical.config import REPO_ROOT
from dist_optical.engine.dist import free_port

pytestmark = pytest.mark.multiproc

TRAIN_ARGS = ["--config", str(TINY), "--resume", "auto"]
TORCHRUN, TWO_NODES = "launchers/torchrun/train.sh", {"NNODES": "2", "NPROC_PER_NODE": "1"}


def start_nodes(
    script: str, out, port: int, extra_env: dict[str, str], run: tuple[str, ...] = RUN
) -> list[subprocess.Popen]:
    nodes = []
    for rank in (0, 1):
        env = {
            **cli_env(),
            **extra_env,
            "NODE_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        cmd = [str(REPO_ROOT / script), "--out", str(out), *TRAIN_ARGS, *run]
        nodes.append(subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=PIPE, stderr=STDOUT, text=True))
    return nodes


def finish(nodes: list[subprocess.Popen], timeout: int = 240) -> list[tuple[int, str]]:
    try:
        return [(node.wait(timeout), node.stdout.read()) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()


def test_torchrun_two_nodes_train_stop_and_resume_together(tmp_path, long_reference):
    out = tmp_path / "run"
    nodes = start_nodes(TORCHRUN, out, free_port(), TWO_NODES, LONG_RUN)
    try:  # 45 steps of margin: the stop cannot arrive after the run's end
        wait_for_steps(out, 3, timeout=180, alive=lambda: all(node.poll() is None for node in nodes))
    finally:
        for node in nodes:  # what a cluster does to every node: torchrun forwards SIGTERM to its rank
            node.send_signal(signal.SIGTERM)
    stopped = finish(nodes)
    assert all(code != 0 for code, _ in stopped), "a stopped node reported success"
    saved = (out / "checkpoints" / "latest").read_text()
    assert 3 <= int(saved.removeprefix("step")) == len(read_metrics(out)) < 48  # saved at the stop

    resumed = finish(start_nodes(TORCHRUN, out, free_port(), TWO_NODES, LONG_RUN))
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:]
    assert [f"step{step:06d}" for step in resumed_steps(resumed[0][1])] == [saved]
    assert_same_run(out, long_reference)


def test_deepspeed_launcher_two_entry_hostfile_without_ssh(tmp_path, reference):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")  # names are only labels without ssh
    out = tmp_path / "run"
    done = finish(start_nodes("launchers/deepspeed/train.sh", out, free_port(), {"HOSTFILE": str(hostfile)}))
    assert [code for code, _ in done] == [0, 0], done[0][1][-3000:]
    assert_same_run(out, reference)
