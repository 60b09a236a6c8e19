"""`dist-optical submit` without a cluster: argument parsing, checks before submission, sbatch mapping."""

import argparse
import os
import signal
import stat

import pytest
from helpers import TINY

from dist_optical.cli import main
from dist_optical.config import ConfigError
from dist_optical.engine.signals import PREEMPTED_EXIT_CODE, StopRequest
from dist_optical.errors import UserError
from dist_optical.launch.cluster import SubmitError
from dist_optical.launch.job import TrainJob
from dist_optical.launch.preempt import PreemptBridge
from dist_optical.launch.submit import (
    Resources,
    add_arguments,
    make_executor,
    parse_mem,
    parse_time,
    plan_runs,
    resources_from_args,
    submit,
    sweep_points,
)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("90", 90),
        ("4:00:00", 240),
        ("1-00", 1440),
        ("2-03:30", 3090),
        ("0:30", 1),
        ("10:30", 11),
        ("1:00:01", 61),
    ],
)
def test_parse_time_accepts_slurm_formats(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "4h", "0", "1:2:3:4"])
def test_parse_time_rejects_others(text):
    with pytest.raises(SubmitError, match="--time"):
        parse_time(text)


def test_parse_mem():
    assert [parse_mem(t) for t in ("64G", "512M", "1T", "8", "0", "1.5GB")] == [64, 0.5, 1024, 8, 0, 1.5]
    with pytest.raises(SubmitError, match="--mem"):
        parse_mem("lots")


def test_sweep_is_a_grid_and_keeps_yaml_lists_whole():
    assert sweep_points([]) == [[]]
    assert sweep_points(["train.lr=1e-3,2e-3", "train.seed=0,1"]) == [
        ["train.lr=1e-3", "train.seed=0"],
        ["train.lr=1e-3", "train.seed=1"],
        ["train.lr=2e-3", "train.seed=0"],
        ["train.lr=2e-3", "train.seed=1"],
    ]
    assert sweep_points(["data.exclude_books=[REV,MAT],[]"]) == [
        ["data.exclude_books=[REV,MAT]"],
        ["data.exclude_books=[]"],
    ]
    with pytest.raises(SubmitError, match="--sweep"):
        sweep_points(["train.lr"])


def test_every_sweep_point_gets_its_own_folder_and_config(tmp_path):
    runs = plan_runs(TINY, ["train.max_steps=3"], tmp_path, ["train.lr=0.001,0.002"])
    assert [run.out.name for run in runs] == ["train.lr=0.001", "train.lr=0.002"]
    assert [run.cfg.train.lr for run in runs] == [0.001, 0.002]
    assert {run.cfg.train.max_steps for run in runs} == {3}


def resources(*argv: str) -> Resources:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return resources_from_args(parser.parse_args(["--out", "x", *argv]))


def test_one_task_per_gpu():
    assert (resources("--gpus-per-node", "4").tasks_per_node, resources().tasks_per_node) == (4, 1)
    assert resources("--tasks-per-node", "2").tasks_per_node == 2
    with pytest.raises(SubmitError, match="one task per GPU"):
        resources("--gpus-per-node", "4", "--tasks-per-node", "2")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun`/`sinfo` stand-ins on PATH: a cluster with partitions 'gpu' (default) and 'cpu'."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"sinfo": "printf 'gpu*\\ncpu\\n'", "srun": "exit 1", "sbatch": "echo 'Submitted batch job 4242'"}
    for name, body in fakes.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    return bin_dir


def test_sbatch_file_gets_one_task_per_gpu_and_an_early_usr2(fake_slurm, tmp_path):
    res = Resources(
        nodes=2,
        gpus_per_node=4,
        tasks_per_node=4,
        timeout_min=240,
        cpus_per_task=10,
        mem_gb=0,
        partition="gpu",
        account="acct",
        qos="high",
        constraint="a100",
    )
    sbatch = submitted_script(
        make_executor(tmp_path / "a" / "%j", "slurm", res, max_requeues=7, name="dist-optical-x")
    )
    for flag in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=10",
        "--mem=0GB",
        "--time=240",
        "--partition=gpu",
        "--account=acct",
        "--qos=high",
        "--constraint=a100",
        "--signal=USR2@120",
        "--job-name=dist-optical-x",
    ):
        assert f"#SBATCH {flag}" in sbatch
    cpu_only = make_executor(tmp_path / "b" / "%j", "slurm", Resources(), max_requeues=1, name="x")
    assert "gpus" not in submitted_script(cpu_only)


def submitted_script(executor) -> str:
    """What submitit hands to (the fake) sbatch, through its public submit()."""
    job = executor.submit(print, "never runs")
    return job.paths.submission_file.read_text()


def test_missing_partition_is_reported_before_submitting(fake_slurm, tmp_path):
    with pytest.raises(SubmitError, match="'a100' does not exist; available: gpu, cpu"):
        submit(TINY, [], tmp_path / "run", Resources(partition="a100"), cluster="slurm")
    assert not (tmp_path / "run").exists()


def test_no_slurm_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun/sinfo anywhere
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--config", str(TINY), "--out", str(tmp_path / "run"), "--cluster", "slurm"])
    assert "dist-optical submit: error: no SLURM found" in str(exit_info.value)


def test_bad_config_fails_before_anything_is_queued(tmp_path):
    with pytest.raises(ConfigError, match="no_such_key"):
        submit(TINY, ["train.no_such_key=1"], tmp_path / "run", Resources(), cluster="local")
    with pytest.raises(ConfigError, match="no_such_key"):  # every sweep point is checked
        submit(
            TINY,
            [],
            tmp_path / "run",
            Resources(),
            cluster="local",
            sweep=["train.lr=1e-3", "train.no_such_key=1"],
        )
    assert not (tmp_path / "run").exists()


def test_resume_path_without_checkpoint_fails_before_submitting(tmp_path):
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="no checkpoint there"):
        submit(
            TINY,
            [],
            tmp_path / "run",
            Resources(),
            cluster="local",
            resume=str(tmp_path / "old" / "checkpoints"),
        )
    assert not (tmp_path / "run").exists()


def complete_tag(tag_dir):
    """A checkpoint tag that resume accepts: one file and the marker listing it."""
    from dist_optical.engine import checkpoint

    tag_dir.mkdir(parents=True)
    (tag_dir / "mp_rank_00_model_states.pt").write_bytes(b"states")
    checkpoint.mark_complete(tag_dir, {"step": int(tag_dir.name.removeprefix("step")), "world_size": 1})
    (tag_dir.parent / "latest").write_text(tag_dir.name)


def test_resuming_a_run_with_another_model_fails_before_submitting(tmp_path):
    out = tmp_path / "run"
    complete_tag(out / "checkpoints" / "step000004")
    from dist_optical.config import load_config, save_config

    save_config(load_config(TINY, ["model.max_length=16"]), out / "config.yaml")  # the run's, but one field
    with pytest.raises(UserError, match="cannot resume: config field 'model' changed"):
        submit(TINY, [], out, Resources(), cluster="local")
    assert not (out / "submitit").exists()


@pytest.mark.parametrize(
    ("cluster", "res", "message"),
    [
        ("local", Resources(nodes=2), "runs on this machine: --nodes must be 1"),
        ("debug", Resources(tasks_per_node=2), "use --cluster local for several"),
    ],
)
def test_local_clusters_refuse_what_they_cannot_run(tmp_path, cluster, res, message):
    with pytest.raises(SubmitError, match=message):
        submit(TINY, [], tmp_path / "run", res, cluster=cluster)


@pytest.mark.parametrize("first", ["", "seed"])
def test_restarts_resume_from_the_run_folder(tmp_path, first):
    cfg = plan_runs(TINY, [], tmp_path, [])[0].cfg
    seed = str(tmp_path / first / "checkpoints") if first else ""
    job = TrainJob(cfg, tmp_path, resume=seed)
    assert job._resume_mode() == seed  # first start: fresh, or the given checkpoint
    complete_tag(tmp_path / "checkpoints" / "step000004")
    assert job._resume_mode() == "auto"  # a restart continues this run, whatever the first start was
    requeued = job.checkpoint()
    assert (requeued.function.out, requeued.function.resume) == (tmp_path, "auto")


@pytest.fixture
def signal_handlers():
    """Restore the process's handlers: these tests install the trainer's and a fake submitit one."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    calls = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # stands in for submitit's
    yield calls
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_usr2_becomes_a_step_boundary_stop_and_then_submitits_requeue(signal_handlers):
    stop = StopRequest()  # what the job makes, and hands to both the bridge and the trainer
    bridge = PreemptBridge(stop).install()
    with stop.installed():  # the training loop
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.signum == signal.SIGUSR2 and signal_handlers == []  # nothing requeued mid-step
    bridge.requeue_if_asked()  # after the trainer's checkpoint and Preempted
    assert signal_handlers == [signal.SIGUSR2]


@pytest.mark.parametrize("order", [(signal.SIGUSR2, signal.SIGTERM), (signal.SIGTERM, signal.SIGUSR2)])
def test_sigterm_leaves_the_requeue_to_slurm(signal_handlers, order):
    stop = StopRequest()
    bridge = PreemptBridge(stop).install()
    with stop.installed():
        for signum in order:  # SIGTERM: scontrol requeue, preemption, scancel
            os.kill(os.getpid(), signum)
    bridge.requeue_if_asked()
    assert stop.signum == signal.SIGTERM and signal_handlers == []


def test_usr2_outside_the_training_loop_requeues_at_once(signal_handlers):
    PreemptBridge(StopRequest()).install()  # the loop has not started: its handlers are not installed
    with pytest.raises(SystemExit) as exit_info:
        os.kill(os.getpid(), signal.SIGUSR2)
    assert exit_info.value.code == PREEMPTED_EXIT_CODE
    assert signal_handlers == [signal.SIGUSR2]


def test_the_stop_handlers_are_restored_however_the_loop_ends(signal_handlers):
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    with pytest.raises(RuntimeError), stop.installed():
        assert signal.getsignal(signal.SIGTERM) != before
        raise RuntimeError("a bug mid-training")
    assert signal.getsignal(signal.SIGTERM) == before and not stop.listening
