"""ShardLoader: batches of a ShardStream across epochs, with an exact, JSON-able resume state.

DataLoader workers run in other processes, so consumption is counted here, in the consumer, as the
caller takes each batch (as mosaicml/streaming's StreamingDataLoader does). Every rank consumes the
same number of batches per step, so "samples consumed globally" is ``steps * world_size * batch_size``
and any rank's state (rank 0's, by convention) resumes all of them.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_optical.compat import shutdown_loader_workers
from dist_optical.errors import UserError

from .collate import collate_text
from .stream import ShardStream

logger = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: several sources (languages), their sizes and weights


class DataStateError(UserError):
    """A checkpoint's data state that does not fit this run's stream (other data, order or seed)."""


class _EpochBatches(IterableDataset):
    """One epoch of this rank's batches from global position ``start``, collated in the worker."""

    def __init__(
        self, stream: ShardStream, epoch: int, start: int, batch_size: int, collate_fn: Callable
    ) -> None:
        super().__init__()
        self.stream, self.epoch, self.start, self.batch_size = stream, epoch, start, batch_size
        self.collate_fn = collate_fn

    def __iter__(self) -> Iterator[tuple[Any, dict[str, int]]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        for samples, errors in self.stream.iter_batches(
            self.epoch, self.start, self.batch_size, worker, num_workers
        ):
            yield self.collate_fn(samples), dict(errors)


def _passthrough(item: Any) -> Any:
    return item


# Iterators still open at interpreter exit, closed then (which shuts their workers down through the
# DataLoader's own queues). Otherwise multiprocessing's exit handler, registered earlier and so run
# later, would SIGTERM the workers, which ignore it (below), and wait for them forever.
_OPEN_ITERATORS: weakref.WeakSet = weakref.WeakSet()
atexit.register(lambda: [batches.close() for batches in list(_OPEN_ITERATORS)])


# SLURM, `scancel` and `pkill` signal every process of a job, workers included; a worker that died
# of one would crash the trainer before its step-boundary checkpoint. The main process handles the
# stop (engine/signals.py) and shuts the workers down itself, so workers ignore these.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT}


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold the stop signals while workers fork: they are born with them blocked, so one that arrives
    before `_ignore_stop_signals` runs (torch's worker loop first installs a SIGTERM handler that
    exits) stays pending and is then discarded. Here, held signals are delivered on leaving."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _ignore_stop_signals(worker_id: int) -> None:
    """Worker init: ignore the stop signals (a pending one is discarded), then let them through."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


class ShardLoader:
    """Endless iterator of batches over epochs; ``state_dict()`` covers exactly the batches taken.

    Each batch is ``collate_fn(samples)`` (default: ``{key, src, tgt}`` lists) plus ``epoch``.
    Call ``load_state_dict(state)`` before iterating to resume; R, W and batch_size may differ from the
    saved run (see stream.py for the order and the remainder policy).
    """

    def __init__(
        self,
        stream: ShardStream,
        batch_size: int,
        collate_fn: Callable[[list[dict[str, str]]], Any] | None = None,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        global_batch = stream.world_size * batch_size
        if stream.num_pairs < global_batch:
            raise ValueError(
                f"{stream.num_pairs} pairs are fewer than one global batch "
                f"(world_size {stream.world_size} x batch_size {batch_size}): no step could be formed"
            )
        self.stream, self.batch_size = stream, batch_size
        self.collate_fn = collate_fn or collate_text
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory
        if num_workers > 0:
            # Fast tokenizers' thread pool does not survive fork; without this each worker warns.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._epoch = 0
        self._sample_in_epoch = 0
        self._errors: Counter = Counter()
        self._epoch_errors: Counter = Counter()
        self._generation = 0  # bumped by iter()/load_state_dict(): an older iterator must not count

    @property
    def steps_per_epoch(self) -> int:
        """Batches per rank in a full epoch (the remainder < world_size * batch_size is dropped)."""
        return self.stream.num_pairs // (self.stream.world_size * self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        batches = self._batches()
        _OPEN_ITERATORS.add(batches)
        return batches

    def _batches(self) -> Iterator[Any]:
        self._generation += 1
        generation = self._generation
        step = self.stream.world_size * self.batch_size
        while True:
            epoch = self._epoch
            dataset = _EpochBatches(
                self.stream, epoch, self._sample_in_epoch, self.batch_size, self.collate_fn
            )
            loader = DataLoader(
                dataset,
                batch_size=None,  # workers produce whole batches: the round-robin fixes their order
                collate_fn=_passthrough,
                num_workers=self.num_workers,
                prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
                pin_memory=self.pin_memory,
                worker_init_fn=_ignore_stop_signals,
            )
            with _stop_signals_held():
                epoch_batches = iter(loader)  # forks the workers
            try:
                for batch, errors in epoch_batches:
                    self._check_current(generation)
                    self._sample_in_epoch += step
                    self._errors.update(errors)
                    self._epoch_errors.update(errors)
                    batch["epoch"] = epoch
                    yield batch
            finally:
                # Shut the workers down now, also when an error ends the epoch: its traceback holds
                # the iterator, and the workers (which ignore SIGTERM) would outlive it until exit.
                shutdown_loader_workers(epoch_batches)
            self._check_current(generation)
            self._end_epoch()

    def _check_current(self, generation: int) -> None:
        if generation != self._generation:
            raise RuntimeError("ShardLoader: stale iterator (iter() or load_state_dict() was called since)")

    def _end_epoch(self) -> None:
        dropped = self.stream.num_pairs - self._sample_in_epoch
        if dropped and self.stream.rank == 0:  # the same tail on every rank: say it once
            logger.warning(
                "epoch %d: dropped the last %d of %d pairs of the epoch order (< one global batch)",
                self._epoch,
                dropped,
                self.stream.num_pairs,
            )
        if self._epoch_errors:
            logger.warning(
                "epoch %d: rank %d skipped bad samples %s",
                self._epoch,
                self.stream.rank,
                dict(self._epoch_errors),
            )
        self._epoch += 1
        self._sample_in_epoch = 0
        self._epoch_errors = Counter()

    def error_counts(self) -> dict[str, int]:
        """Bad samples skipped so far by this rank (on_error="skip"), by kind; cumulative over epochs."""
        return dict(self._errors)

    def state_dict(self) -> dict[str, Any]:
        """Small JSON-able resume state; ``sample_in_epoch`` counts consumed pairs over all ranks."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "sample_in_epoch": self._sample_in_epoch,
            "world_size": self.stream.world_size,
            "batch_size": self.batch_size,
            **self.stream.state(),
            "errors": self.error_counts(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()`` of a run over the same data, order and seed (any R, W, B)."""
        if state.get("version") != STATE_VERSION:
            raise DataStateError(f"data state version {state.get('version')!r}, expected {STATE_VERSION}")
        state = {"length_window": 0, **state}  # saved before length grouping existed: it was off
        mismatched = {k: (state.get(k), v) for k, v in self.stream.state().items() if state.get(k) != v}
        if mismatched:
            # A different order would silently repeat and skip pairs: refuse (saved, current).
            raise DataStateError(f"data state does not match this stream (saved, current): {mismatched}")
        if not 0 <= state["sample_in_epoch"] <= self.stream.num_pairs:
            raise DataStateError(
                f"sample_in_epoch {state['sample_in_epoch']} outside [0, {self.stream.num_pairs}]"
            )
        self._generation += 1
        self._epoch = int(state["epoch"])
        self._sample_in_epoch = int(state["sample_in_epoch"])
        self._errors = Counter(state.get("errors", {}))
        self._epoch_errors = Counter()
