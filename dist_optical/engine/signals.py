"""Preemption: a signal only sets a flag; the loop checks it at step boundaries, saves, and exits.

Saving inside a signal handler could interrupt a collective half-way; a flag keeps every rank's
save at the same step. The flag is agreed across ranks (max all-reduce) so they stop together.
"""

from __future__ import annotations

import logging
import signal

import torch

from dist_optical.engine.dist import device

log = logging.getLogger("dist_optical.signals")

# Exit status after a signal-triggered checkpoint: EX_TEMPFAIL, "try again" (resume with --resume auto).
PREEMPTED_EXIT_CODE = 75
# SIGINT (Ctrl-C) too: the first one checkpoints at the step boundary like SIGTERM, a second aborts.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put the handlers back (after training: Ctrl-C during evaluation interrupts at once again)."""
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

    def agreed(self) -> bool:
        """True on every rank if any rank was signalled (one tiny all-reduce per step)."""
        # On the accelerator: an NCCL-only process group cannot reduce CPU tensors.
        flag = torch.tensor([1.0 if self.signum is not None else 0.0], device=device())
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
