"""Which cluster to submit to, and whether it can take the job: checked before anything is queued."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dist_optical.errors import UserError

CLUSTERS = ("auto", "slurm", "local", "debug")


class SubmitError(UserError):
    """A submission that cannot work: reported before anything is queued."""


def resolve_cluster(name: str) -> str:
    """'auto' -> 'slurm' when `srun` is on PATH, else 'local' (submitit's own rule)."""
    if name not in CLUSTERS:
        raise SubmitError(f"--cluster {name!r}: expected one of {', '.join(CLUSTERS)}")
    if name == "auto":
        return "slurm" if shutil.which("srun") else "local"
    return name


def slurm_partitions() -> list[str]:
    """Partition names from `sinfo` (default one marked by SLURM with '*', stripped here)."""
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        raise SubmitError(
            "no SLURM found: `srun`/`sinfo` are not on PATH "
            "(use --cluster local to run on this machine, or launchers/dev-slurm/up.sh for a test cluster)"
        )
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # sinfo would retry for a minute before saying so
        raise SubmitError(f"SLURM_CONF={conf} does not exist")
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as err:
        raise SubmitError("SLURM controller not answering: `sinfo` timed out after 30 s") from err
    if proc.returncode != 0:
        raise SubmitError(f"SLURM controller not reachable: `sinfo` failed: {proc.stderr.strip()}")
    return [line.strip().rstrip("*") for line in proc.stdout.splitlines() if line.strip()]


def check_slurm(partition: str | None) -> None:
    partitions = slurm_partitions()
    if partition is not None and partition not in partitions:
        raise SubmitError(
            f"--partition {partition!r} does not exist; available: {', '.join(partitions) or 'none'}"
        )
