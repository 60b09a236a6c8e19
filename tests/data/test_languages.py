"""One stream over several languages' shards: exactly once per epoch, mixture by weight, resume."""

from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from test_stream import epoch_keys  # tests/data is on sys.path (no __init__.py)

from dist_optical.data import ShardLoader, ShardStream, build_shards
from dist_optical.data.stream import language_weights
from dist_optical.errors import UserError

SIZES = {"wol": 61, "ewe": 149, "zul": 293}  # uneven, none a multiple of R x B


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """One shard folder per language; the same keys in every language (as verse ids are)."""
    tmp = tmp_path_factory.mktemp("langs")
    folders = []
    for lang, n in SIZES.items():
        rows = [f"v{i}\t{lang} sentence {i}\tenglish {i}" for i in range(n)]
        (tmp / f"{lang}.tsv").write_text("\n".join(["key\tsrc\ttgt", *rows]) + "\n", encoding="utf-8")
        build_shards([tmp / f"{lang}.tsv"], tmp / lang, lang, "eng", pairs_per_shard=23)
        folders.append(tmp / lang)
    return folders


def epoch_pairs(sources, world_size, batch_size, workers=0, state=None, **kw) -> list[list[tuple[str, str]]]:
    """Finish the current epoch on every (simulated) rank -> per-rank (lang, key) in step order."""

    def lang_and_key(batch):
        return list(zip(batch["lang"], batch["key"], strict=True))

    per_rank = epoch_keys(world_size, batch_size, sources, workers, state, select=lang_and_key, **kw)
    return [[pair for batch in batches for pair in batch] for batches in per_rank]


def languages_of(stream: ShardStream, ids: np.ndarray) -> np.ndarray:
    shard = np.searchsorted(stream.offsets, ids, side="right") - 1
    return np.array(stream.languages)[stream.source_of_shard[shard]]


@pytest.mark.parametrize("window", [0, 40])
def test_every_pair_of_every_language_once_across_ranks_and_workers(sources, window):
    total = sum(SIZES.values())
    per_rank = epoch_pairs(sources, 2, 4, workers=2, length_window=window)
    seen = [p for pairs in per_rank for p in pairs]
    assert len(per_rank[0]) == len(per_rank[1]) == total // 8 * 4
    assert len(seen) == len(set(seen)) == total - total % 8
    everything = {(lang, f"v{i}") for lang, n in SIZES.items() for i in range(n)}
    assert set(seen) <= everything and len(everything - set(seen)) == total % 8
    # Samples carry their language, and each language's text is its own.
    loader = ShardLoader(ShardStream(sources), batch_size=5)
    batch = next(iter(loader))
    assert all(src.startswith(lang) for lang, src in zip(batch["lang"], batch["src"], strict=True))


def test_weights_set_the_mixture_while_every_language_has_pairs(sources):
    equal = ShardStream(sources, weights=[1, 1, 1])
    langs = languages_of(equal, equal.epoch_order(0))
    head = Counter(langs[: 3 * SIZES["wol"] - 30].tolist())  # before the smallest language runs out
    assert all(abs(head[lang] / sum(head.values()) - 1 / 3) < 0.05 for lang in SIZES)
    assert set(langs[-50:].tolist()) == {"zul"}  # the largest language fills the tail
    natural = ShardStream(sources)  # temperature 1: proportional to size all through the epoch
    assert np.allclose(natural.weights, np.array(list(SIZES.values())) / sum(SIZES.values()))
    order = natural.epoch_order(0)
    assert sorted(order.tolist()) == list(range(natural.num_pairs))
    assert not np.array_equal(order, natural.epoch_order(1))
    assert np.array_equal(order, ShardStream(sources).epoch_order(0))


def test_language_weights_temperature():
    assert np.allclose(language_weights([100, 400], 1.0), [0.2, 0.8])
    assert np.allclose(language_weights([100, 400], 2.0), [1 / 3, 2 / 3])
    assert np.allclose(language_weights([100, 400], 1e9), [0.5, 0.5])
    with pytest.raises(ValueError, match="temperature"):
        language_weights([1, 2], 0.0)


def test_max_pairs_is_per_language(sources):
    stream = ShardStream(sources, max_pairs=50)
    assert stream.source_sizes.tolist() == [50, 50, 50] and stream.num_pairs == 150
    pairs = epoch_pairs(sources, 1, 10, max_pairs=50)[0]
    assert Counter(lang for lang, _ in pairs) == {"wol": 50, "ewe": 50, "zul": 50}
    assert {key for _, key in pairs} == {f"v{i}" for i in range(50)}  # the first 50 of each manifest


@pytest.mark.parametrize("resume_world, resume_batch", [(2, 4), (3, 5), (1, 7)])
def test_mid_epoch_resume_elastic_sees_the_rest_exactly_once(sources, resume_world, resume_batch):
    weights = [3.0, 1.0, 1.0]
    straight = epoch_pairs(sources, 2, 4, weights=weights)
    loaders = [ShardLoader(ShardStream(sources, rank=r, world_size=2, weights=weights), 4) for r in range(2)]
    first = [
        p for loader in loaders for b in islice(loader, 20) for p in zip(b["lang"], b["key"], strict=True)
    ]
    state = loaders[0].state_dict()
    assert state["languages"] == ["wol", "ewe", "zul"] and state["sample_in_epoch"] == 160
    rest = epoch_pairs(sources, resume_world, resume_batch, state=state, weights=weights)
    seen = first + [p for pairs in rest for p in pairs]
    assert len(seen) == len(set(seen))
    total = sum(SIZES.values())
    assert len(seen) == 160 + (total - 160) // (resume_world * resume_batch) * resume_world * resume_batch
    if (resume_world, resume_batch) == (2, 4):  # same shape: the very same pairs as a straight run
        assert sorted(seen) == sorted(p for pairs in straight for p in pairs)


def test_resume_with_other_weights_or_languages_is_refused(sources):
    loader = ShardLoader(ShardStream(sources, weights=[3, 1, 1]), 4)
    next(iter(loader))
    state = loader.state_dict()
    with pytest.raises(UserError, match="weights"):
        ShardLoader(ShardStream(sources, weights=[1, 1, 1]), 4).load_state_dict(state)
    with pytest.raises(UserError, match="languages"):
        ShardLoader(ShardStream(sources[:2], weights=[3, 1]), 4).load_state_dict(state)


def test_bad_weights_are_named(sources):
    with pytest.raises(ValueError, match="one per source"):
        ShardStream(sources, weights=[1, 1])
    with pytest.raises(ValueError, match="positive"):
        ShardStream(sources, weights=[1, 0, 1])
