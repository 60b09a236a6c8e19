"""A real one-node SLURM (launchers/dev-slurm/up.sh; .ci/run starts it): submit, preempt, requeue, resume.

Skipped, with the reason, when no such cluster answers (e.g. on a laptop).
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DIST_VARS, LONG_RUN, TINY, assert_same_run, read_metrics, resumed_steps, wait_for_steps

from dist_optical.config import REPO_ROOT
from dist_optical.launch.submit import Resources, submit

pytestmark = pytest.mark.multiproc

DEV_DIR = Path(os.environ.get("DEV_SLURM_DIR", "/tmp/dist-optical-slurm"))


def slurm_unavailable(env: dict[str, str]) -> str:
    """Why the dev cluster cannot take jobs ('' if it can)."""
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return "slurm-wlm is not installed (apt-get install slurm-wlm munge)"
    try:
        proc = subprocess.run(["sinfo", "-ho", "%t"], env=env, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    if proc.returncode != 0 or not proc.stdout.strip():
        error = DEV_DIR / "up.error"
        why = error.read_text().strip() if error.exists() else proc.stderr.strip()[-300:]
        return f"no SLURM controller answers ({why}); start one with launchers/dev-slurm/up.sh"
    return ""


@pytest.fixture(scope="session")
def slurm_conf():
    """The dev cluster's SLURM_CONF (unless one is set already), or skip saying why; checked once."""
    dev_conf = DEV_DIR / "slurm.conf"
    conf = os.environ.get("SLURM_CONF") or (str(dev_conf) if dev_conf.exists() else "")
    reason = slurm_unavailable({**os.environ, "SLURM_CONF": conf} if conf else dict(os.environ))
    if reason:
        pytest.skip(reason)
    return conf


@pytest.fixture
def slurm(slurm_conf, monkeypatch):
    """Submit from a clean environment: the job inherits it."""
    if slurm_conf:
        monkeypatch.setenv("SLURM_CONF", slurm_conf)
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def squeue_state(job_id: str) -> str:
    proc = subprocess.run(["squeue", "-hj", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip()


def wait_until_gone(job_id: str, timeout: float) -> None:
    """sacct is off on the dev cluster (no slurmdbd), so job states come from squeue."""
    deadline = time.monotonic() + timeout
    while squeue_state(job_id):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], timeout=30)
            pytest.fail(f"job {job_id} still queued/running after {timeout} s")
        time.sleep(1)


def job_log(job) -> str:
    """Task 0's stdout + stderr (SLURM appends every run of a requeued job to the same files)."""
    return "".join(path.read_text() for path in (job.paths.stdout, job.paths.stderr) if path.exists())


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} after {timeout} s"
        time.sleep(0.2)


def test_preempted_twice_usr2_then_scontrol_requeue_resumes_exactly(slurm, tmp_path, long_reference):
    """USR2 (time limit / preemption warning): the bridge checkpoints, then submitit requeues.
    `scontrol requeue` (SIGTERM): the trainer checkpoints and exits 75, and SLURM requeues."""
    out = tmp_path / "run"
    resources = Resources(tasks_per_node=2, timeout_min=10)
    [(job, _)] = submit(TINY, list(LONG_RUN), out, resources, cluster="slurm", max_requeues=1)

    def running() -> bool:
        return bool(squeue_state(job.job_id))

    try:
        wait_for_steps(out, 3, timeout=180, alive=running)
        # What SLURM sends to every task before a time limit (--signal=USR2@120) or a preemption.
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)
        # The requeued job waits cred_expire (10 s on the dev cluster, 120 s by default) to restart.
        wait_for(lambda: resumed_steps(job_log(job)), timeout=180, what="no resume after USR2")
        wait_for_steps(out, resumed_steps(job_log(job))[0] + 2, timeout=180, alive=running)
        subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)
        wait_until_gone(job.job_id, timeout=240)
    finally:
        if squeue_state(job.job_id):
            subprocess.run(["scancel", job.job_id], timeout=30)
    assert [result["steps"] for result in job.results()] == [48, 48]
    log = job_log(job)
    stops = [int(step) for step in re.findall(r"checkpointed at step (\d+) after a stop signal", log)]
    assert resumed_steps(log) == stops and len(stops) == 2, log[-3000:]
    assert 3 <= stops[0] < stops[1] < 48
    assert log.count("Requeued job") == 1  # submitit requeued only the USR2 stop; SLURM did the other
    assert_same_run(out, long_reference)


def test_cli_sweep_is_one_job_array_with_a_folder_per_run(slurm, tmp_path):
    out = tmp_path / "sweep"
    launcher = ["--cluster=slurm", "--partition=debug", "--time=10", "--sweep=train.lr=0.001,0.002"]
    cmd = [sys.executable, "-m", "dist_optical", "submit", f"--config={TINY}", f"--out={out}", *launcher]
    cmd.append("train.max_steps=2")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_ids = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("job ")]
    array_id = job_ids[0].split("_")[0]
    assert job_ids == [f"{array_id}_0", f"{array_id}_1"], proc.stdout
    assert "tail -f" in proc.stdout
    wait_until_gone(array_id, timeout=180)
    for lr in ("0.001", "0.002"):
        run = out / f"train.lr={lr}"
        assert len(read_metrics(run)) == 2, run
        assert f"lr: {lr}" in (run / "config.yaml").read_text()
