import subprocess
import sys

import pytest
from helpers import LONG_RUN, RUN, TINY, cli_env, read_metrics

from dist_optical.config import REPO_ROOT
from dist_optical.engine.dist import free_port


def torchrun_reference(out, run: tuple[str, ...]):
    """An uninterrupted 2-rank run under plain torchrun on one node: what every launcher must reproduce."""
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
    ]
    cmd = [*torchrun, "-m", "dist_optical", "train", f"--config={TINY}", f"--out={out}", *run]
    proc = subprocess.run(cmd, env=cli_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    out = torchrun_reference(tmp_path_factory.mktemp("reference"), RUN)
    assert len(read_metrics(out)) == 12
    return out


@pytest.fixture(scope="session")
def long_reference(tmp_path_factory):
    out = torchrun_reference(tmp_path_factory.mktemp("long_reference"), LONG_RUN)
    assert len(read_metrics(out)) == 48
    return out
