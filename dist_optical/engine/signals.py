"""Preemption: a signal only sets a flag; the loop checks it at step boundaries, saves, and stops.

Saving inside a signal handler could interrupt a collective half-way; a flag keeps every rank's
save at the same step. The loop agrees on it across ranks (`dist.any_rank`) so they stop together,
then raises `Preempted`, which the CLI and the submitit job turn into exit 75.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("dist_optical.signals")

# Exit status after a signal-triggered checkpoint: EX_TEMPFAIL, "try again" (resume with --resume auto).
PREEMPTED_EXIT_CODE = 75
# SIGINT (Ctrl-C) too: the first one checkpoints at the step boundary like SIGTERM, a second aborts.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def follow_launcher() -> None:
    """SIGTERM this rank when its launcher (torchrun, the deepspeed launcher) dies, even by kill -9 or
    the OOM killer: the rank then checkpoints at the step boundary and exits 75, instead of training
    on as an orphan in the run folder (the launcher starts each rank in a session of its own)."""
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("cannot ask for a signal when the launcher dies (prctl: errno %d)", ctypes.get_errno())
        return
    if os.getppid() != launcher:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


class Preempted(Exception):  # noqa: N818 (a stop, not an error: the run resumes from it)
    """Training stopped on a signal after checkpointing ``step``: resume with ``--resume auto``."""

    def __init__(self, step: int, signum: int | None) -> None:
        name = signal.Signals(signum).name if signum is not None else "a signal on another rank"
        super().__init__(f"stopped by {name}: checkpointed at step {step}")
        self.step = step


class StopRequest:
    """The flag the stop signals set. Created by whoever runs the trainer (the CLI, a submitit job,
    which also hands it to its requeue bridge); its handlers are installed while the loop runs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def listening(self) -> bool:
        """Whether the loop is running with this flag's handlers installed."""
        return bool(self._previous)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handlers in place for the block; the previous ones back afterwards, however it ends (so
        Ctrl-C during evaluation interrupts at once again)."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt("second interrupt: aborting without waiting for the checkpoint")
        self.signum = signum
        log.warning(
            "received %s: will checkpoint and exit at the next step boundary", signal.Signals(signum).name
        )
