"""`dist-optical submit`: run the trainer as a submitit job on SLURM (or on this machine).

One task per GPU (on CPU: `--tasks-per-node`); each task runs the ordinary trainer, which sets up
torch.distributed/DeepSpeed from the job's environment (no deepspeed launcher inside SLURM).
Everything that can be checked here is checked before anything is queued: the config (every
sweep point), the cluster and partition, and the checkpoint a `--resume PATH` names.

Preemption and time limits: see `dist_optical.launch.preempt`. The job always resumes from its
own run folder after a requeue; `--max-requeues` bounds submitit's timeout requeues.
"""

from __future__ import annotations

import argparse
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from dist_optical.config import Config, config_to_dict, load_config
from dist_optical.launch.cluster import CLUSTERS, SubmitError, check_slurm, resolve_cluster

# SLURM sends USR2 this long before the time limit: room for the step in flight plus a checkpoint.
SIGNAL_DELAY_S = 120


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    timeout_min: int = 240
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None


@dataclass(frozen=True)
class PlannedRun:
    """One run of a submission (a sweep has several): its validated config and its run folder. Not
    what the job runs: that is `job.TrainJob`, built from these (train/run.py's `Run` is the trainer's)."""

    cfg: Config
    out: Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Launcher flags only; the training flags (--config, overrides) come from the CLI as usual."""
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder (a sweep: one sub-folder per run)"
    )
    parser.add_argument(
        "--resume",
        default="auto",
        help="'auto' (default: this run folder's newest checkpoint, if any) or a checkpoint path",
    )
    parser.add_argument(
        "--cluster",
        default="auto",
        choices=CLUSTERS,
        help="auto: SLURM if `srun` is on PATH, else this machine (local); debug: in-process",
    )
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=0, help="one task per GPU")
    parser.add_argument("--tasks-per-node", type=int, default=0, help="default: --gpus-per-node, or 1 on CPU")
    add_job_arguments(parser)
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="key=v1,v2",
        help="one run per value (repeat for a grid); a SLURM job array",
    )


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Per-job resources, queue and waiting: shared by `submit` and `compare --cluster`."""
    parser.add_argument("--cpus-per-task", type=int)
    parser.add_argument("--mem", help="memory per node, e.g. 64G, 500M (SLURM: 0 = all of it)")
    parser.add_argument("--time", default="4:00:00", help="time limit: MIN, HH:MM:SS or D-HH:MM:SS")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--qos")
    parser.add_argument("--constraint")
    parser.add_argument("--max-requeues", type=int, default=3, help="timeout requeues before giving up")
    parser.add_argument(
        "--wait", action="store_true", help="block until the job(s) finish (always for debug)"
    )


def parse_time(text: str) -> int:
    """SLURM time formats -> whole minutes: MIN, MIN:SEC, H:MM:SS, D-H, D-H:MM, D-H:MM:SS."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None:
        raise SubmitError(f"--time {text!r}: expected MIN, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(x) if x else 0 for x in match.groups())
    if match.group(1):  # D-H[:M[:S]]
        seconds = ((days * 24 + a) * 60 + b) * 60 + c
    elif match.group(4):  # H:M:S
        seconds = (a * 60 + b) * 60 + c
    else:  # MIN[:SEC]
        seconds = a * 60 + b
    if seconds <= 0:
        raise SubmitError(f"--time {text!r}: must be positive")
    return -(-seconds // 60)


def parse_mem(text: str) -> float:
    """'64G', '500M', '1T' or a bare number of GB -> GB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([MGT]?)B?", text.strip(), re.IGNORECASE)
    if match is None:
        raise SubmitError(f"--mem {text!r}: expected e.g. 64G or 500M")
    scale = {"": 1.0, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[match.group(2).upper()]
    return float(match.group(1)) * scale


def sweep_points(specs: list[str]) -> list[list[str]]:
    """['a=1,2', 'b=x,y'] -> the grid [['a=1', 'b=x'], ['a=1', 'b=y'], ...]; [] -> [[]]."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        # Commas inside [...] or {...} belong to a YAML value, e.g. data.exclude_books=[REV,MAT],[REV]
        parts = [v for v in re.split(r",(?![^\[{]*[\]}])", values) if v]
        if not sep or not key or not parts:
            raise SubmitError(f"--sweep {spec!r}: expected key=v1,v2,...")
        axes.append([f"{key}={value}" for value in parts])
    return [list(point) for point in itertools.product(*axes)]


def run_name(point: list[str]) -> str:
    """A sweep point's folder name: ['train.lr=0.001', 'train.seed=1'] -> 'train.lr=0.001_train.seed=1'."""
    return "_".join(point).replace("/", "-") or "run"


def resources_from_args(args: argparse.Namespace) -> Resources:
    if args.gpus_per_node and args.tasks_per_node not in (0, args.gpus_per_node):
        raise SubmitError("one task per GPU: leave --tasks-per-node out or set it to --gpus-per-node")
    return job_resources(
        args,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node or max(1, args.gpus_per_node),
    )


def job_resources(args: argparse.Namespace, **layout: int) -> Resources:
    """The `add_job_arguments` flags -> Resources, with the task layout (nodes, GPUs, tasks) given."""
    return Resources(
        **layout,
        timeout_min=parse_time(args.time),
        cpus_per_task=args.cpus_per_task,
        mem_gb=parse_mem(args.mem) if args.mem else None,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
    )


def plan_runs(config: Path, overrides: list[str], out: Path, sweep: list[str]) -> list[PlannedRun]:
    """Load (and so validate) every run's config before anything is submitted."""
    if not sweep:
        return [PlannedRun(load_config(config, overrides), out)]
    return [
        PlannedRun(load_config(config, [*overrides, *point]), out / run_name(point))
        for point in sweep_points(sweep)
    ]


def check_resume(resume: str, run: PlannedRun) -> None:
    """Fail now, not after the queue wait: a missing checkpoint, or one from a different setup."""
    # Imported here (and TrainJob in submit()): they pull in torch, and every CLI call imports this module.
    from dist_optical.engine.checkpoint import check_compatible, resolve_resume

    found = resolve_resume(resume, run.out)  # raises FileNotFoundError for a PATH without a checkpoint
    saved = run.out / "config.yaml"
    if found is not None and resume == "auto" and saved.is_file():
        check_compatible(config_to_dict(load_config(saved)), config_to_dict(run.cfg))


def check_resources(cluster: str, res: Resources) -> None:
    if min(res.nodes, res.tasks_per_node) < 1 or res.gpus_per_node < 0:
        raise SubmitError("--nodes and --tasks-per-node must be >= 1, --gpus-per-node >= 0")
    if cluster in ("local", "debug") and res.nodes != 1:
        raise SubmitError(f"--cluster {cluster} runs on this machine: --nodes must be 1")
    if cluster == "debug" and res.tasks_per_node != 1:
        raise SubmitError("--cluster debug runs one task in this process: use --cluster local for several")
    if cluster == "slurm":
        check_slurm(res.partition)


def make_executor(
    folder: Path, cluster: str, res: Resources, max_requeues: int, name: str
) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(
        folder=folder, cluster=cluster, slurm_max_num_timeout=max_requeues, local_max_num_timeout=max_requeues
    )
    params: dict[str, Any] = {
        "name": name,
        "nodes": res.nodes,
        "tasks_per_node": res.tasks_per_node,
        "timeout_min": res.timeout_min,
        "gpus_per_node": res.gpus_per_node or None,  # no --gpus-per-node=0 on clusters without GRES
        "cpus_per_task": res.cpus_per_task,
        "mem_gb": res.mem_gb,
        "slurm_partition": res.partition,
        "slurm_account": res.account,
        "slurm_qos": res.qos,
        "slurm_constraint": res.constraint,
        "slurm_signal_delay_s": SIGNAL_DELAY_S,
    }
    executor.update_parameters(**{key: value for key, value in params.items() if value is not None})
    return executor


def submit(
    config: Path,
    overrides: list[str],
    out: Path,
    resources: Resources,
    cluster: str = "auto",
    resume: str = "auto",
    sweep: list[str] | None = None,
    max_requeues: int = 3,
) -> list[tuple[submitit.Job, Path]]:
    """Validate, then submit one job (or a job array for a sweep). Returns (job, run folder) pairs."""
    from dist_optical.launch.job import TrainJob

    cluster = resolve_cluster(cluster)
    out = out.resolve()
    if sweep and resume not in ("", "auto"):
        raise SubmitError("--resume PATH names one checkpoint: it cannot seed a --sweep")
    runs = plan_runs(config, overrides, out, sweep or [])
    for run in runs:
        check_resume(resume, run)
    check_resources(cluster, resources)
    executor = make_executor(
        out / "submitit" / "%j", cluster, resources, max_requeues, f"dist-optical-{out.name}"
    )
    with executor.batch():  # one submission, a job array on SLURM
        jobs = [executor.submit(TrainJob(run.cfg, run.out, resume)) for run in runs]
    return [(job, run.out) for job, run in zip(jobs, runs, strict=True)]


def describe(job: submitit.Job, run_out: Path, cluster: str) -> str:
    stdout, stderr = job.paths.stdout, job.paths.stderr
    lines = [
        f"job {job.job_id} ({cluster}, {job.num_tasks} task(s)) -> {run_out}",
        f"  logs:   {stdout}  {stderr}  (task k: {stdout.name.replace('_0_', '_k_')})",
        f"  follow: tail -f {stdout} {stderr}",
    ]
    if cluster == "slurm":
        lines.append(
            f"  stop:   scancel {job.job_id}   checkpoint+requeue: scancel --signal=USR2 {job.job_id}"
        )
    elif cluster == "local":
        lines.append(f"  stop:   kill -TERM {job.job_id}    (checkpoint and exit; resubmit to resume)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """The `submit` subcommand."""
    resources = resources_from_args(args)
    cluster = resolve_cluster(args.cluster)
    submitted = submit(
        args.config, args.overrides, args.out, resources, cluster, args.resume, args.sweep, args.max_requeues
    )
    for job, run_out in submitted:
        print(describe(job, run_out, cluster), flush=True)
    if args.wait or cluster == "debug":  # a debug job only runs when its result is asked for
        for job, _ in submitted:
            print(f"job {job.job_id} finished: {job.results()[0]}")
