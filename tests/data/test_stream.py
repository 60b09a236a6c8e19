"""ShardStream / ShardLoader: exactly once per epoch over ranks x workers, resume (also elastic), length
grouping, workers and signals (bad shards and samples: test_samples.py)."""

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_helpers import N_PAIRS, epoch_keys, manifest_keys, take

from dist_optical.config import REPO_ROOT
from dist_optical.data import ShardLoader, ShardStream
from dist_optical.data.stream import partition
from dist_optical.errors import UserError


def test_shards_are_uneven(shard_dir):
    counts = [s["pairs"] for s in json.loads((shard_dir / "manifest.json").read_text())["shards"]]
    assert len(counts) >= 7 and len(set(counts)) > 2 and sum(counts) == N_PAIRS


@settings(max_examples=200, deadline=None)
@given(
    num=st.integers(1, 500),
    start_frac=st.floats(0, 1),
    world=st.integers(1, 8),
    batch=st.integers(1, 40),
    workers=st.integers(1, 5),
)
def test_partition_covers_whole_steps_once(num, start_frac, world, batch, workers):
    start = int(start_frac * num)
    parts = [partition(num, start, batch, world, r, workers, w) for r in range(world) for w in range(workers)]
    positions = np.concatenate([p.ravel() for p in parts])
    steps = (num - start) // (world * batch)
    assert sorted(positions.tolist()) == list(range(start, start + steps * world * batch))
    per_rank = [
        sum(len(partition(num, start, batch, world, r, workers, w)) for w in range(workers))
        for r in range(world)
    ]
    assert per_rank == [steps] * world


def test_epoch_exactly_once_two_ranks_two_workers(shard_dir):
    all_keys = manifest_keys(shard_dir)
    per_rank = epoch_keys(2, 4, shard_dir, workers=2)
    assert [len(b) for b in per_rank] == [N_PAIRS // 8] * 2  # equal step counts on every rank
    seen = [k for batches in per_rank for batch in batches for k in batch]
    assert len(seen) == len(set(seen)) == N_PAIRS - N_PAIRS % 8  # remainder < R*B dropped, no repeats
    assert set(seen) <= set(all_keys)
    # The dropped tail is the end of the epoch's global order.
    order = ShardStream(shard_dir).epoch_order(0)
    assert set(all_keys) - set(seen) == {all_keys[i] for i in order[len(seen) :]}


@pytest.mark.parametrize("window", [0, 32])
def test_order_is_deterministic_and_independent_of_workers(shard_dir, window):
    a = epoch_keys(2, 4, shard_dir, workers=0, seed=3, length_window=window)
    b = epoch_keys(2, 4, shard_dir, workers=3, seed=3, length_window=window)
    c = epoch_keys(2, 4, shard_dir, workers=0, seed=4, length_window=window)
    assert a == b and a != c
    unshuffled = epoch_keys(1, 7, shard_dir, shuffle=False)
    assert [k for batch in unshuffled[0] for k in batch] == manifest_keys(shard_dir)[: N_PAIRS // 7 * 7]


def test_epochs_reshuffle_and_stay_exactly_once(shard_dir):
    loader = ShardLoader(ShardStream(shard_dir, shuffle_buffer=50), batch_size=10)
    epochs: dict[int, list[str]] = {}
    for batch in take(loader, 3 * (N_PAIRS // 10)):
        epochs.setdefault(batch["epoch"], []).extend(batch["key"])
    assert sorted(epochs) == [0, 1, 2]
    assert all(len(keys) == len(set(keys)) == 200 for keys in epochs.values())
    assert epochs[0] != epochs[1] and set(epochs[0]) != set(epochs[1])  # a different tail dropped
    assert loader.state_dict()["epoch"] == 2 and loader.state_dict()["sample_in_epoch"] == 200


def test_a_source_listed_twice_is_read_twice_an_epoch_spread_out(shard_dir):
    """Upsampling (docs/data.md): each copy is its own shuffled pass, merged over the whole epoch."""
    keys = [sample["key"] for sample in ShardStream([shard_dir, shard_dir], seed=1)]
    assert len(keys) == 2 * N_PAIRS and set(Counter(keys).values()) == {2}
    first: dict[str, int] = {}
    gaps = [i - first[k] for i, k in enumerate(keys) if first.setdefault(k, i) != i]
    assert np.median(gaps) > N_PAIRS / 4  # not back to back: the copies are spread over the epoch


def test_plain_iteration_splits_across_workers(shard_dir):
    from torch.utils.data import DataLoader

    keys = []
    for rank in range(2):
        stream = ShardStream(shard_dir, rank=rank, world_size=2)
        stream.set_epoch(1)
        for batch in DataLoader(stream, batch_size=5, num_workers=2):
            keys.extend(batch["key"])
    assert len(keys) == len(set(keys)) == N_PAIRS - 1


@pytest.mark.parametrize(("world", "workers", "batch"), [(2, 2, 4), (3, 1, 4), (1, 3, 4), (2, 0, 6)])
def test_resume_elastic_finishes_epoch_exactly_once(shard_dir, world, workers, batch):
    # Run A: 2 ranks x 2 workers, batch 4, stops after 5 steps; rank 0's state is the checkpoint.
    loaders = [
        ShardLoader(ShardStream(shard_dir, rank=r, world_size=2, seed=1), 4, num_workers=2) for r in range(2)
    ]
    before = [k for loader in loaders for batch in take(loader, 5) for k in batch["key"]]
    state = json.loads(json.dumps(loaders[0].state_dict()))
    assert state["sample_in_epoch"] == 5 * 2 * 4 and state["world_size"] == 2
    after = [
        k
        for batches in epoch_keys(world, batch, shard_dir, workers, state, seed=1)
        for b in batches
        for k in b
    ]
    union = before + after
    assert len(union) == len(set(union))  # no repeats
    order = ShardStream(shard_dir, seed=1).epoch_order(0)
    all_keys = manifest_keys(shard_dir)
    assert set(union) == {all_keys[i] for i in order[: len(union)]}  # no skips: a prefix of the order
    assert N_PAIRS - len(union) < world * batch


def test_resume_matches_uninterrupted_run(shard_dir):
    straight = ShardLoader(ShardStream(shard_dir, rank=1, world_size=2), 4, num_workers=2)
    reference = [b["key"] for b in take(straight, 40)]  # crosses the epoch boundary (25 steps/epoch)
    first = ShardLoader(ShardStream(shard_dir, rank=1, world_size=2), 4, num_workers=2)
    head = [b["key"] for b in take(first, 17)]
    resumed = ShardLoader(ShardStream(shard_dir, rank=1, world_size=2), 4, num_workers=2)
    resumed.load_state_dict(first.state_dict())
    assert head + [b["key"] for b in take(resumed, 23)] == reference


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stop=st.integers(0, 30),
    world=st.integers(1, 4),
    batch=st.integers(1, 9),
    new_world=st.integers(1, 4),
    new_batch=st.integers(1, 9),
    window=st.sampled_from([0, 8, 64]),
)
def test_resume_anywhere_property(shard_dir, stop, world, batch, new_world, new_batch, window):
    """Stop after any number of steps, resume with any R and B: the epoch is a prefix of the order
    (with or without length grouping)."""
    kw = {"seed": 2, "length_window": window}
    loaders = [
        ShardLoader(ShardStream(shard_dir, rank=r, world_size=world, **kw), batch) for r in range(world)
    ]
    stop = min(stop, loaders[0].steps_per_epoch)
    before = [k for loader in loaders for b in take(loader, stop) for k in b["key"]]
    after = [
        k
        for bs in epoch_keys(new_world, new_batch, shard_dir, 0, loaders[0].state_dict(), **kw)
        for b in bs
        for k in b
    ]
    union = before + after
    all_keys = manifest_keys(shard_dir)
    order = ShardStream(shard_dir, **kw).epoch_order(0)
    assert len(union) == len(set(union)) and set(union) == {all_keys[i] for i in order[: len(union)]}
    assert N_PAIRS - len(union) < new_world * new_batch


def test_state_from_another_order_is_refused(shard_dir):
    state = ShardLoader(ShardStream(shard_dir, seed=0), 4).state_dict()
    for kwargs in ({"seed": 1}, {"max_pairs": 100}, {"shuffle_buffer": 10}, {"length_window": 16}):
        with pytest.raises(UserError, match="does not match"):
            ShardLoader(ShardStream(shard_dir, **kwargs), 4).load_state_dict(state)


def test_stale_iterator_raises(shard_dir):
    loader = ShardLoader(ShardStream(shard_dir), 4)
    it = iter(loader)
    next(it)
    loader.load_state_dict(loader.state_dict())
    with pytest.raises(RuntimeError, match="stale iterator"):
        next(it)


def test_max_pairs_uses_first_pairs_of_manifest(shard_dir):
    per_rank = epoch_keys(2, 5, shard_dir, max_pairs=60)
    seen = {k for batches in per_rank for b in batches for k in b}
    assert len(seen) == 60 and seen == set(manifest_keys(shard_dir)[:60])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardLoader(ShardStream(shard_dir, world_size=4, max_pairs=30), batch_size=8)


def test_url_pattern_and_pipe_without_manifest(shard_dir):
    names = sorted(p.name for p in shard_dir.glob("*.tar"))
    pattern = str(shard_dir / f"swh-eng-{{000000..{len(names) - 1:06d}}}.tar")
    assert epoch_keys(2, 4, shard_dir, seed=5) == epoch_keys(2, 4, pattern, seed=5)
    pipe = "::".join(f"pipe:cat {shard_dir / n}" for n in names)
    assert epoch_keys(1, 4, pipe, workers=2) == epoch_keys(1, 4, shard_dir)


def _rank_main(shard_dir: str, rank: int, out: str) -> None:
    loader = ShardLoader(ShardStream(shard_dir, rank=rank, world_size=2), 4, num_workers=2)
    keys = [b["key"] for b in take(loader, loader.steps_per_epoch)]
    Path(out).write_text(json.dumps(keys))


@pytest.mark.multiproc
def test_two_real_processes(shard_dir, tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_rank_main, args=(str(shard_dir), r, str(tmp_path / f"{r}.json"))) for r in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    per_rank = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert per_rank == epoch_keys(2, 4, shard_dir)
    seen = Counter(k for batches in per_rank for b in batches for k in b)
    assert len(seen) == N_PAIRS - N_PAIRS % 8 and max(seen.values()) == 1


ABANDON = """
import sys
from dist_optical.data import ShardLoader, ShardStream
batches = iter(ShardLoader(ShardStream(sys.argv[1]), 4, num_workers=1))
next(batches)  # still open at exit, its worker alive and ignoring SIGTERM
print("exiting", flush=True)
"""


def test_an_iterator_left_open_does_not_hang_interpreter_exit(shard_dir):
    """Workers ignore SIGTERM, the signal multiprocessing's exit handler stops them with: pytest once
    hung after its summary on an iterator a test left open."""
    proc = subprocess.run([sys.executable, "-c", ABANDON, str(shard_dir)], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)  # fmt: skip
    assert proc.returncode == 0 and "exiting" in proc.stdout, proc.stderr[-2000:]


SIGNALLED = """
import signal, sys
from itertools import islice
from dist_optical.data import ShardLoader, ShardStream
signal.signal(signal.SIGTERM, lambda *_: None)  # the trainer's stop flag (engine/signals.py)
print("ready", flush=True)
loader = ShardLoader(ShardStream(sys.argv[1]), 50, num_workers=1)  # 4 batches an epoch: a fork each 4
batches = list(islice(loader, 120))
print("took", len(batches), "in", batches[-1]["epoch"] + 1, "epochs", flush=True)
"""


def test_workers_survive_stop_signals_sent_to_the_whole_job(shard_dir):
    """`scancel` signals every process of the job: a worker hit while it starts (torch's worker loop
    installs an exiting SIGTERM handler before any init function runs) once crashed the trainer
    before its checkpoint. SIGTERM the process group without pause across 30 epochs' worker starts."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED, str(shard_dir)],
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        stopped = threading.Event()
        storm = threading.Thread(target=_signal_group_until, args=(proc.pid, stopped))
        storm.start()
        took = proc.stdout.readline()  # blocks until the child has all its batches (or died)
        stopped.set()
        storm.join()
        assert took.split()[:4] == ["took", "120", "in", "30"], proc.stderr.read()[-2000:]
    finally:
        proc.kill()
        proc.wait()


def _signal_group_until(pgid: int, stopped: threading.Event) -> None:
    while not stopped.wait(0.002):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)


def test_length_grouping_keeps_each_pair_once_and_cuts_padding(shard_dir):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    lengths = dict(
        zip(manifest_keys(shard_dir), [n for e in manifest["shards"] for n in e["lengths"]], strict=True)
    )

    def padding(per_rank) -> int:  # characters a batch pads up to its longest pair, summed
        return sum(
            max(lengths[k] for k in b) * len(b) - sum(lengths[k] for k in b) for bs in per_rank for b in bs
        )

    plain = epoch_keys(2, 4, shard_dir, workers=2, seed=5)
    grouped = epoch_keys(2, 4, shard_dir, workers=2, seed=5, length_window=64)
    seen = [k for bs in grouped for b in bs for k in b]
    assert len(seen) == len(set(seen)) == N_PAIRS - N_PAIRS % 8  # exactly once, as without grouping
    assert padding(grouped) < 0.5 * padding(plain)
    assert (
        ShardStream(shard_dir, seed=5, length_window=64).epoch_order(1).tolist()
        != ShardStream(shard_dir, seed=5, length_window=64).epoch_order(0).tolist()
    )  # still reshuffled every epoch


def test_pattern_sources_measure_the_same_lengths_as_the_manifest(shard_dir):
    names = sorted(p.name for p in shard_dir.glob("*.tar"))
    pattern = str(shard_dir / f"swh-eng-{{000000..{len(names) - 1:06d}}}.tar")
    assert ShardStream(pattern).lengths.tolist() == ShardStream(shard_dir).lengths.tolist()
    grouped = {"seed": 5, "length_window": 16}
    assert epoch_keys(2, 4, shard_dir, **grouped) == epoch_keys(2, 4, pattern, **grouped)
