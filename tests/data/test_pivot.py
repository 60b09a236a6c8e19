"""Bitexts with any pivot: the teacher encodes the pivot side (English or French), shard folders and
logs name the real pair, and several bitexts of one language share one stream exactly once."""

from collections import Counter
from pathlib import Path

import pytest
from helpers import BARE
from test_languages import epoch_pairs  # tests/data is on sys.path (no __init__.py)

from dist_optical.config import ConfigError, data_path, load_config
from dist_optical.data import ShardLoader, ShardStream, build_shards
from dist_optical.data.bitext import BitextError
from dist_optical.data.prepare import ensure_shards, shard_folder

NEWS_WOL = ["mafand/wol.train.wol", "mafand/wol.train.fr"]
BIBLE_WOL = ["bible/Wolof-NT.xml", "bible/English-KJV-NT.xml"]


def two_wolof_bitexts(shards: Path):
    bitexts = (
        f"data.bitexts=[{{lang: wol, files: {BIBLE_WOL}}}, {{lang: wol, pivot: fra, files: {NEWS_WOL}}}]"
    )
    return load_config(BARE, [bitexts, f"data.shards={shards}"])


def test_pivot_defaults_to_english_and_names_the_shard_folder(tmp_path):
    cfg = two_wolof_bitexts(tmp_path)
    bible, news = cfg.data.bitexts
    assert (bible.pivot, news.pivot) == ("eng", "fra")
    assert shard_folder(cfg, bible).name.startswith("wol-eng-")
    assert shard_folder(cfg, news).name.startswith("wol-fra-")


def test_the_pivot_side_is_what_the_teacher_encodes(tmp_path):
    """tgt (the side PairCollator tokenizes for the teacher) holds the French line of the news file."""
    cfg = two_wolof_bitexts(tmp_path)
    manifests = ensure_shards(cfg)
    assert manifests[1].parent.name.startswith("wol-fra-")
    pairs = list(ShardStream([manifests[1]], shuffle=False, max_pairs=3))
    wolof_lines = data_path(cfg, NEWS_WOL[0]).read_text(encoding="utf-8").splitlines()
    french_lines = data_path(cfg, NEWS_WOL[1]).read_text(encoding="utf-8").splitlines()
    assert [p["src"] for p in pairs] == [line.strip() for line in wolof_lines[:3]]
    assert [p["tgt"] for p in pairs] == [line.strip() for line in french_lines[:3]]
    assert {p["pair"] for p in pairs} == {"wol-fra"} and {p["lang"] for p in pairs} == {"wol"}


def test_edited_input_bytes_get_another_shard_folder(tmp_path):
    """The folder's key covers the input files' bytes: an edited bitext never rebuilds a folder that
    a run of the original may be reading."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.wol").write_text("Jamm nga am?\n", encoding="utf-8")
    (root / "a.fr").write_text("Comment vas-tu ?\n", encoding="utf-8")
    bitexts = "data.bitexts=[{lang: wol, pivot: fra, files: [a.wol, a.fr]}]"
    cfg = load_config(BARE, [bitexts, f"data.root={root}", f"data.shards={tmp_path / 'shards'}"])
    before = shard_folder(cfg, cfg.data.bitexts[0])
    (root / "a.fr").write_text("Ça va ?\n", encoding="utf-8")
    assert shard_folder(cfg, cfg.data.bitexts[0]) != before
    (root / "a.fr").unlink()
    with pytest.raises(BitextError, match="a.fr: no such file"):
        shard_folder(cfg, cfg.data.bitexts[0])


def test_empty_pivot_is_refused_at_load_time():
    with pytest.raises(ConfigError, match=r"data.bitexts\[0\].pivot"):
        load_config(BARE, ["data.bitexts=[{lang: wol, pivot: '', files: [a, b]}]"])


@pytest.fixture(scope="module")
def same_language_sources(tmp_path_factory) -> list[Path]:
    """Two bitexts of one language (different pivots), uneven sizes, keys unique per bitext."""
    tmp = tmp_path_factory.mktemp("pivots")
    folders = []
    for pivot, n in (("eng", 53), ("fra", 131)):
        rows = [f"{pivot}{i}\twol sentence {i}\t{pivot} sentence {i}" for i in range(n)]
        (tmp / f"{pivot}.tsv").write_text("\n".join(["key\tsrc\ttgt", *rows]) + "\n", encoding="utf-8")
        build_shards([tmp / f"{pivot}.tsv"], tmp / pivot, "wol", pivot, pairs_per_shard=17)
        folders.append(tmp / pivot)
    return folders


@pytest.mark.parametrize("world_size,batch_size,workers", [(1, 8, 0), (2, 5, 2), (3, 4, 1)])
def test_two_bitexts_of_one_language_once_per_epoch(same_language_sources, world_size, batch_size, workers):
    per_rank = epoch_pairs(
        same_language_sources, world_size, batch_size, workers, weights=[1.0, 3.0], length_window=12
    )
    seen = Counter(key for rank in per_rank for _, key in rank)
    assert set(seen.values()) == {1}
    step = world_size * batch_size  # an epoch is whole global steps: the tail waits for the next
    assert len(seen) == (53 + 131) // step * step
    assert {pair for rank in per_rank for pair, _ in rank} == {"wol"}


def test_mid_epoch_elastic_resume_with_two_bitexts_of_one_language(same_language_sources):
    """Stop after 7 batches on 2 ranks, resume on 3: every pair of the epoch exactly once."""
    kwargs = {"weights": [2.0, 1.0], "length_window": 12, "seed": 3}
    loaders = [
        ShardLoader(ShardStream(same_language_sources, rank=r, world_size=2, **kwargs), batch_size=4)
        for r in range(2)
    ]
    iterators = [iter(loader) for loader in loaders]
    before = [key for it in iterators for _ in range(7) for key in next(it)["key"]]
    state = loaders[0].state_dict()
    after = [key for rank in epoch_pairs(same_language_sources, 3, 4, 0, state, **kwargs) for _, key in rank]
    seen = before + after
    assert len(seen) == len(set(seen)) == 56 + (53 + 131 - 56) // 12 * 12
    assert {key[:3] for key in seen} == {"eng", "fra"}
