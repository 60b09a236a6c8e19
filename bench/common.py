"""What every bench script shares: the arguments (`--quick`, `--out`), the environment a figure was
measured in, timing, subprocesses, Markdown tables and the result JSON.

A result's "env" (`environment()` at the start, `finish(env)` at the end) has one layout everywhere:
command, dates, git commit, CPU, threads, device, package versions and the load average before and
after (the dev box is shared: a figure means little without its load). A real run writes
bench/results/NAME.json; `--quick` (seconds: tiny sizes, configs/tiny.yaml's random BERT) a temp folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the scripts run from a checkout, installed or not
    sys.path.insert(0, str(REPO))

from dist_optical.config import load_config  # noqa: E402
from dist_optical.engine.dist import DIST_VARS  # noqa: E402
from dist_optical.files import write_json  # noqa: E402

RESULTS = REPO / "bench" / "results"
TINY = REPO / "configs" / "tiny.yaml"  # --quick: its random tiny BERT stands in for the real models
PACKAGES = ("torch", "transformers", "deepspeed", "sentence-transformers", "pot", "datasets", "accelerate")


class Parser(argparse.ArgumentParser):
    """A script's arguments: its docstring as help, ``--quick`` and ``--out``; ``parse(**quick)``."""

    def __init__(self, doc: str) -> None:
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        self.add_argument("--quick", action="store_true", help="seconds: tiny sizes and model, temp JSON")
        self.add_argument("--out", type=Path, help="results JSON (default: bench/results/)")

    def parse(self, **quick: Any) -> argparse.Namespace:
        """The arguments; with ``--quick``, ``quick`` replaces the defaults (flags given still win)."""
        args = self.parse_args()
        if args.quick:
            self.set_defaults(**quick)
            args = self.parse_args()
        return args


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def load1() -> float:
    return load_average()[0]


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """HEAD, marked when tracked files differ from it (what ran is then not exactly that commit)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
        ).stdout.strip()

    try:
        commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "-uno")
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return "unknown" if not commit else f"{commit} (uncommitted changes)" if dirty else commit


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment(device: str = "cpu") -> dict[str, Any]:
    """Where and with what a bench runs, and the load before it (`finish` adds the load after)."""
    import torch

    env = {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "date": now(),
        "git_commit": git_commit(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": f"{cpu_model()} ({torch.get_num_threads()} threads)",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "load_before": load_average(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env.update(device_name=torch.cuda.get_device_name(torch.device(device)), cuda=torch.version.cuda)
    return env


def finish(env: dict[str, Any]) -> dict[str, Any]:
    """``env`` with the time and load average at the end of the measurements."""
    env.update(finished=now(), load_after=load_average())
    return env


def child_env(threads: int | str | None = None) -> dict[str, str]:
    """This process's environment for a subprocess: no torch.distributed variables (a bench process
    is never a rank of its parent), offline, quiet tokenizers, ``threads`` intra-op threads."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")  # fmt: skip
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def run_child(cmd: list[str], threads: int | str | None, what: str) -> str:
    """Run ``cmd`` in the repo with ``child_env(threads)``: its stdout, or a RuntimeError naming
    ``what`` failed with the end of its stderr."""
    proc = subprocess.run(cmd, env=child_env(threads), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def no_sync() -> None:
    """CPU work is done when the call returns."""


def device_sync(device) -> Callable[[], None]:
    """What makes a timed call's device work finish before the clock is read (a no-op on CPU)."""
    import torch

    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else no_sync


class Stopwatch:
    """Lap times of consecutive phases: ``lap(name)`` adds the seconds since the previous lap (or the
    start) to ``laps[name]`` and returns them. ``sync`` runs before every reading of the clock."""

    def __init__(self, sync: Callable[[], None] = no_sync) -> None:
        self.sync = sync
        self.laps: dict[str, float] = {}
        sync()
        self.last = time.perf_counter()

    def lap(self, name: str) -> float:
        self.sync()
        now_ = time.perf_counter()
        seconds, self.last = now_ - self.last, now_
        self.laps[name] = self.laps.get(name, 0.0) + seconds
        return seconds

    @property
    def total(self) -> float:
        return sum(self.laps.values())


def interleaved_medians(
    fns: dict[Any, Callable[[], object]], repeats: int, sync: Callable[[], None] = no_sync
) -> dict[Any, float]:
    """Median wall seconds of each function over ``repeats`` rounds after a warm-up round. Each round
    runs every function once, so a change of load on the shared machine hits all of them alike."""
    times: dict[Any, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            watch = Stopwatch(sync)
            fn()
            seconds = watch.lap("call")
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(ts) for name, ts in times.items()}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A Markdown table; cells as ``str()`` gives them. ``align``: a letter a column, "r" right-aligned."""
    rule = [("---:" if a == "r" else "---") for a in align.ljust(len(header))[: len(header)]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    """NaN and infinities (a broken solve's marginal error) as null: JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_result(args: argparse.Namespace, name: str, result: dict[str, Any]) -> Path:
    """``result`` as JSON, atomically, at ``--out``; else at bench/results/NAME, or for ``--quick`` in a
    fresh temp folder (a smoke run never replaces the committed figures). Says where."""
    if args.out is not None:
        path = Path(args.out)
    else:
        path = Path(tempfile.mkdtemp(prefix="bench-quick-")) / name if args.quick else RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, _json_safe(result), "the bench result")
    print(f"wrote {path}", flush=True)
    return path


def bench_encoder(name: str, tokenizer, quick: bool):
    """``name``'s encoder, or with ``quick`` configs/tiny.yaml's seeded random tiny BERT (same vocabulary)."""
    from dist_optical.models import load_encoder

    tiny = dict(load_config(TINY).model.tiny) if quick else None
    return load_encoder(name, tiny, vocab_size=len(tokenizer))
