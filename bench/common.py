"""What every bench script shares, written once: the environment a figure was measured in, timing,
Markdown tables, where results go and how they are written, and the tiny models of a `--quick` run.

- `environment()` at the start and `finish(env)` at the end give one layout for every result's
  "env": command, dates, git commit, CPU model, cores, torch threads, device, package versions, the
  load average before and after (the dev box is shared: a figure means little without its load).
- `Stopwatch` times the phases of a step (a device sync before every reading on a GPU);
  `interleaved_medians` times several functions in rounds, so a change of load hits all alike.
- `markdown_table` renders every table the scripts print or write into RESULTS.md.
- `result_path` + `write_result`: a run writes bench/results/NAME.json, a `--quick` run a fresh temp
  folder (never the committed figures), `--out` anywhere; written atomically by files.write_json.
- `child_env` is the environment of every subprocess a bench starts (never a torch.distributed rank).
"""

from __future__ import annotations

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

# ------------------------------------------------------------------------------------ environment


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def load1() -> float:
    """The 1-minute load average: what a figure measured on a shared machine should be read with."""
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
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout

    try:
        commit, dirty = git("rev-parse", "HEAD").strip(), git("status", "--porcelain", "-uno").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"{commit} (uncommitted changes)" if dirty else commit


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


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
        "versions": versions(),
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


# ----------------------------------------------------------------------------------------- timing


def no_sync() -> None:
    """CPU work is done when the call returns."""


def device_sync(device) -> Callable[[], None]:
    """What makes a timed call's device work finish before the clock is read (a no-op on CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return no_sync


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
    """Median wall seconds of each function over ``repeats`` rounds after a warm-up round.

    Each round runs every function once, so a change of load on the shared machine hits all
    of them alike instead of whichever happened to be running. ``sync`` runs before the clock
    starts and before it stops (a CUDA synchronize on the GPU).
    """
    times: dict[Any, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            watch = Stopwatch(sync)
            fn()
            seconds = watch.lap("call")
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ----------------------------------------------------------------------------------------- tables


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A Markdown table; cells as ``str()`` gives them. ``align``: one letter a column, "r" for a
    right-aligned one (``---:``), anything else (or none) plain ``---``."""
    rule = [("---:" if a == "r" else "---") for a in align.ljust(len(header))[: len(header)]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- results


def result_path(out: Path | None, name: str, quick: bool) -> Path:
    """``out`` when given; else bench/results/NAME for a real run, or NAME in a fresh temp folder
    for a ``--quick`` one (a smoke run never replaces the committed figures)."""
    if out is not None:
        return Path(out)
    if quick:
        return Path(tempfile.mkdtemp(prefix="bench-quick-")) / name
    return RESULTS / name


def _json_safe(obj: Any) -> Any:
    """NaN and infinities (a broken solve's marginal error) as null: JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """``result`` as JSON at ``path`` (its folder made), atomically; says where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, _json_safe(result), "the bench result")
    print(f"wrote {path}", flush=True)
    return path


# -------------------------------------------------------------------------------- --quick models


def tiny_shape() -> dict[str, int]:
    """configs/tiny.yaml's random tiny BERT (hidden 32, 2 layers): the real model's stand-in in --quick."""
    return dict(load_config(TINY).model.tiny)


def bench_encoder(name: str, tokenizer, quick: bool):
    """``name``'s encoder, or with ``quick`` the seeded random tiny BERT over its tokenizer's vocabulary."""
    from dist_optical.models import load_encoder

    return load_encoder(name, tiny_shape() if quick else None, vocab_size=len(tokenizer))
