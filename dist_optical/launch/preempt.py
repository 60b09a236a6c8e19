"""Bridge submitit's USR2 (timeout / preemption) to the trainer's save-at-step-boundary stop.

submitit's own USR2 handler calls `checkpoint()` and requeues *inside the signal handler*: in
the middle of a step, on rank 0 only, while the other ranks keep training. Nothing would be
saved. So inside a job the USR2 handler is replaced by `PreemptBridge`, which:

1. forwards USR2 to the trainer's `StopRequest` (the same flag SIGTERM/SIGUSR1 set), so every
   rank finishes the step, saves a checkpoint and exits with PREEMPTED_EXIT_CODE;
2. then `requeue_if_asked()` agrees across ranks on *why* the trainer stopped and, if it was
   USR2 and nothing else, runs submitit's original handler on every rank: rank 0 dumps
   `checkpoint()`'s DelayedSubmission, requeues (`scontrol requeue`, or exit 144 locally) and
   exits; the other ranks return and exit 75. submitit keeps its own bookkeeping (timeout
   countdown, `slurm_max_num_timeout`, "timed-out too many times").

SIGTERM (`scontrol requeue`, preemption in REQUEUE mode, `scancel`) means SLURM itself decides
what happens next, so after the trainer's checkpoint the job just exits 75: a SLURM requeue
re-runs the same submission, which resumes from the run folder (`--resume auto`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

from dist_optical.engine.dist import any_rank
from dist_optical.engine.signals import PREEMPTED_EXIT_CODE, StopRequest

log = logging.getLogger("dist_optical.launch")

Handler = Callable[[int, FrameType | None], object]


class PreemptBridge:
    """Shares the job's `StopRequest` with the trainer (the job hands the same object to both)."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop
        self.submitit_handler: Handler | None = None

    def install(self) -> PreemptBridge:
        """Take over USR2 if submitit installed a handler for it (not in the 'debug' executor)."""
        current = signal.getsignal(signal.SIGUSR2)
        if callable(current):
            self.submitit_handler = current
            signal.signal(signal.SIGUSR2, self._on_usr2)
        return self

    def _on_usr2(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.listening:  # the trainer saves at the next step boundary, then stops
            if self.stop.signum is None:  # a SIGTERM already received keeps priority: SLURM is in charge
                self.stop.signum = signum
            log.warning("received SIGUSR2: checkpoint at the next step boundary, then requeue")
            return
        # Not training (loading, rendezvous): no step would be lost, so requeue the way submitit
        # does; non-zero ranks leave too rather than wait for a rank 0 that is gone.
        log.warning("SIGUSR2 outside the training loop: requeueing without a new checkpoint")
        self.submitit_handler(signum, frame)
        raise SystemExit(PREEMPTED_EXIT_CODE)

    def requeue_if_asked(self) -> None:
        """After the trainer's preempted stop: run submitit's requeue if USR2, and nothing else,
        stopped it on every rank that was signalled (a SIGTERM anywhere leaves it to SLURM)."""
        if self.submitit_handler is None:
            return
        signum = self.stop.signum
        usr2 = any_rank(signum == signal.SIGUSR2)
        other = any_rank(signum is not None and signum != signal.SIGUSR2)
        if usr2 and not other:
            self.submitit_handler(signal.SIGUSR2, None)  # rank 0 requeues and exits; others return
