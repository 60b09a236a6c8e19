"""submitit's local executor, 2 tasks: USR2 -> checkpoint at the step boundary -> requeue -> resume."""

import os
import signal
import time

import psutil
import pytest
from helpers import DIST_VARS, LONG_RUN, TINY, assert_same_run, read_metrics, resumed_steps, wait_for_steps

from dist_optical.launch.submit import Resources, submit

pytestmark = pytest.mark.multiproc


def workers_by_rank(controller_pid: int) -> list[psutil.Process]:
    """The local controller's task processes, ordered by their global rank."""
    tasks = psutil.Process(controller_pid).children()
    return sorted(tasks, key=lambda task: int(task.environ()["SUBMITIT_LOCAL_GLOBALID"]))


def test_usr2_to_one_rank_checkpoints_requeues_and_resumes_exactly(tmp_path, long_reference, monkeypatch):
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job inherits this environment
    out = tmp_path / "run"
    [(job, _)] = submit(
        TINY,
        list(LONG_RUN),
        out,
        Resources(tasks_per_node=2, timeout_min=10),
        cluster="local",
        max_requeues=1,
    )
    try:
        wait_for_steps(out, 3, timeout=240, alive=lambda: not job.done())  # 45 steps of margin
        # Only rank 1 is signalled: its flag is agreed across ranks, and rank 0 still does the requeue.
        workers = workers_by_rank(int(job.job_id))
        assert len(workers) == 2
        os.kill(workers[1].pid, signal.SIGUSR2)
        deadline = time.monotonic() + 240
        while not job.done():
            assert time.monotonic() < deadline, "the requeued job did not finish in 240 s"
            time.sleep(1)
    finally:
        if not job.done():
            job.cancel()
    assert [result["steps"] for result in job.results()] == [48, 48]

    log = job.paths.stdout.read_text() + job.paths.stderr.read_text()
    assert "Requeued job" in log  # submitit's own requeue path ran (rank 0's log)
    [stopped_at] = resumed_steps(log)
    assert 3 <= stopped_at < 48  # saved at the stop (the log line below), then resumed from there
    assert f"checkpointed at step {stopped_at} after a stop signal" in log
    assert len(read_metrics(out)) == 48
    assert_same_run(out, long_reference)
