"""`dist-optical compare --cluster slurm|local|debug`: the spec's unfinished runs as one submitit
job array, one single-process task per run (on SLURM: one GPU each with `--gpus-per-node 1`).

A task trains and evaluates its run into the same `runs/...` folder an in-process compare uses, and
resumes from its checkpoints when requeued. The report is written once every task has finished:
with `--wait` right here, or later by `dist-optical compare` without `--cluster`, which reuses the
finished runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import submitit

from dist_optical.compare.runner import (
    check_split,
    checked_plan,
    import_records,
    run_compare,
    run_folder,
    unfinished,
)
from dist_optical.engine.signals import StopRequest
from dist_optical.launch.cluster import resolve_cluster
from dist_optical.launch.job import Job
from dist_optical.launch.submit import Resources, check_resources, job_resources, make_executor


class CompareRunJob(Job):
    """One run of a `compare` spec (train unless zero-shot, then evaluate), named by its folder.

    A requeued task calls it again: the run resumes from its own checkpoints (or is skipped if its
    result.json was written), so submitit's default `checkpoint()` is right.
    """

    def __init__(self, spec: Path, out: Path, folder: str) -> None:
        self.spec = Path(spec)
        self.out = Path(out)
        self.folder = folder

    def run(self, stop: StopRequest) -> dict[str, Any]:
        return run_folder(self.spec, self.out, self.folder, stop)


def submit_runs(
    spec_path: Path,
    out: Path,
    cluster: str,
    resources: Resources,
    max_requeues: int = 3,
    reuse: Path | None = None,
) -> list[tuple[submitit.Job, str]]:
    """Validate the spec and the cluster, then submit the unfinished runs -> (job, run folder) pairs.
    ``reuse``: a published results.json whose unchanged runs count as finished (not submitted)."""
    out = out.resolve()
    spec, keys, configs = checked_plan(spec_path)
    if reuse is not None:
        import_records(reuse, out, keys, configs)
    todo = unfinished(out, keys, configs)
    check_resources(cluster, resources)
    if not todo:
        return []
    for language in dict.fromkeys(key.language for key in todo):  # a leak found before the jobs run
        check_split(language, spec.language_config(language))
    executor = make_executor(
        out / "submitit" / "%j", cluster, resources, max_requeues, f"dist-optical-compare-{out.name}"
    )
    with executor.batch():  # one submission, a job array on SLURM
        jobs = [executor.submit(CompareRunJob(spec.path.resolve(), out, key.folder())) for key in todo]
    return [(job, key.folder()) for job, key in zip(jobs, todo, strict=True)]


def main(args: argparse.Namespace) -> None:
    """`compare --cluster ...`: submit, say where the logs are, and (with --wait) write the report."""
    cluster = resolve_cluster(args.cluster)
    resources = job_resources(args, gpus_per_node=args.gpus_per_node)
    submitted = submit_runs(args.config, args.out, cluster, resources, args.max_requeues, args.reuse)
    if not submitted:
        print("every run is finished; writing the report")
    else:
        first = submitted[0][0]
        print(
            f"submitted {len(submitted)} unfinished run(s) as {cluster} job(s) "
            f"{first.job_id}..{submitted[-1][0].job_id}; logs: {first.paths.stdout.parent.parent}/JOBID/"
        )
        for job, folder in submitted:
            print(f"  {job.job_id}  runs/{folder}")
        if not (args.wait or cluster == "debug"):  # a debug job only runs when its result is asked for
            print(f"when they have finished: dist-optical compare --config {args.config} --out {args.out}")
            return
        for job, folder in submitted:
            job.results()  # raises with the task's error if it failed
            print(f"finished runs/{folder}", flush=True)
    run_compare(args.config, args.out, args.publish)
