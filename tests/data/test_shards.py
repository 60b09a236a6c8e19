"""Shard writer: round trip, manifest, crash safety, readiness check, damaged and older folders."""

import hashlib
import json
from pathlib import Path

import pytest

from dist_optical.data import build_shards, shards_ready
from dist_optical.data import shards as shards_mod
from dist_optical.data.shards import load_manifest, plan_shards, read_shard
from dist_optical.errors import UserError


def bitext(tmp_path: Path, n: int, extra: list[tuple[str, str]] = ()) -> list[Path]:
    lines = [(f"sentensi {i} ü 😀", f"sentence {i}") for i in range(n)] + list(extra)
    src, tgt = tmp_path / "toy.swh", tmp_path / "toy.eng"
    src.write_text("".join(s + "\n" for s, _ in lines), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in lines), encoding="utf-8")
    return [src, tgt]


def test_round_trip_and_manifest(tmp_path, capsys):
    inputs = bitext(tmp_path, 95, extra=[("", "empty src"), ("x" * 51, "too long")])
    out = tmp_path / "shards"
    manifest = build_shards(inputs, out, "swh", "eng", pairs_per_shard=20, max_chars=50)
    assert "dropped empty=1 too_long=1" in capsys.readouterr().out
    assert manifest["dropped"] == {"empty": 1, "too_long": 1}
    assert manifest["total_pairs"] == 95 == sum(s["pairs"] for s in manifest["shards"])
    assert [s["name"] for s in manifest["shards"]] == [f"swh-eng-{i:06d}.tar" for i in range(5)]
    assert manifest == load_manifest(out / "manifest.json")
    for entry in manifest["shards"]:
        data = (out / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert [s["sha256"] for s in manifest["sources"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs
    ]
    read = [s for e in manifest["shards"] for s in read_shard(str(out / e["name"]))]
    assert [s["id.txt"].decode() for s in read] == [f"toy:{i + 1}" for i in range(95)]
    assert [s["src.txt"] for s in read] == [f"sentensi {i} ü 😀".encode() for i in range(95)]
    assert [s["tgt.txt"] for s in read] == [f"sentence {i}".encode() for i in range(95)]
    assert all("." not in s["__key__"] and ":" not in s["__key__"] for s in read)


def test_rebuild_is_byte_identical_and_replaces_the_previous_build(tmp_path):
    inputs = bitext(tmp_path, 60)
    out = tmp_path / "shards"
    first = build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    second = build_shards(inputs, out, "swh", "eng", pairs_per_shard=30)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".shards")) == [".shards.lock"]
    assert sorted(p.name for p in out.iterdir()) == [
        "artifact.json",
        "manifest.json",
        "swh-eng-000000.tar",
        "swh-eng-000001.tar",
    ]
    third = build_shards(inputs, tmp_path / "other", "swh", "eng", pairs_per_shard=30, workers=2)
    assert [s["sha256"] for s in third["shards"]] == [s["sha256"] for s in second["shards"]]
    assert len(first["shards"]) == 6


def test_the_same_inputs_and_arguments_open_the_build_as_it_is(tmp_path, capsys):
    inputs = bitext(tmp_path, 30)
    out = tmp_path / "shards"
    first = build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    again = build_shards(inputs, out, "swh", "eng", pairs_per_shard=10, workers=2)  # workers: same shards
    assert again == first and capsys.readouterr().out == ""  # nothing written
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_byte_target(tmp_path):
    inputs = bitext(tmp_path, 200)
    manifest = build_shards(inputs, tmp_path / "s", "swh", "eng", pairs_per_shard=0, max_shard_bytes=20_000)
    sizes = [s["bytes"] for s in manifest["shards"]]
    # a sample is 3 files x (512 header + 512 data) bytes, a tar ends with 1 KiB and pads to 10 KiB:
    # 4 samples make 12 KiB + 1 KiB -> 20 KiB (20480 > 20000), so 3 per shard fit under the limit
    assert sizes == [10_240] * 66 + [10_240] and max(sizes) <= 20_000
    manifest = build_shards(inputs, tmp_path / "s", "swh", "eng", pairs_per_shard=0, max_shard_bytes=20_480)
    assert {s["pairs"] for s in manifest["shards"]} == {6, 200 % 6} and len(manifest["shards"]) == 34
    with pytest.raises(UserError, match="pairs_per_shard or max_shard_bytes"):
        plan_shards([], 0, 0)


def test_a_crash_mid_rebuild_leaves_the_previous_build_intact(tmp_path, monkeypatch):
    inputs = bitext(tmp_path, 50)
    out = tmp_path / "shards"
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write = shards_mod.TarWriter.write
    calls = {"n": 0}

    def crash_on_25th(self, obj):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt("simulated crash mid-shard")
        return real_write(self, obj)

    monkeypatch.setattr(shards_mod.TarWriter, "write", crash_on_25th)
    with pytest.raises(KeyboardInterrupt):
        build_shards(inputs, out, "swh", "eng", pairs_per_shard=10, max_chars=500)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # byte for byte
    assert shards_ready(out, inputs, "swh", "eng", pairs_per_shard=10)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".shards.lock"]
    monkeypatch.undo()
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=10, max_chars=500)
    assert shards_ready(out, inputs, "swh", "eng", pairs_per_shard=10, max_chars=500)


def test_a_crash_between_the_renames_of_a_replacement_is_undone_by_the_next_build(tmp_path):
    inputs = bitext(tmp_path, 50)
    out = tmp_path / "shards"
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    out.rename(tmp_path / ".shards.old-12345")  # the replacement's first rename, then the crash
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=10, wait=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # put back, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".shards.lock"]


def test_shards_ready_checks_sources_args_and_files(tmp_path):
    inputs = bitext(tmp_path, 30)
    out = tmp_path / "shards"
    assert not shards_ready(out, inputs, "swh", "eng")
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    assert shards_ready(out, inputs, "swh", "eng", pairs_per_shard=10)
    assert not shards_ready(out, inputs, "swh", "eng", pairs_per_shard=20)
    assert not shards_ready(out, inputs, "swh", "eng", pairs_per_shard=10, exclude_books=["REV"])
    inputs[0].write_text(inputs[0].read_text() + "", encoding="utf-8")
    assert shards_ready(out, inputs, "swh", "eng", pairs_per_shard=10)  # same bytes, same hash
    with inputs[1].open("a") as f:
        f.write("changed\n")
    assert not shards_ready(out, inputs, "swh", "eng", pairs_per_shard=10)
    inputs = bitext(tmp_path, 30)
    shard = out / json.loads((out / "manifest.json").read_text())["shards"][1]["name"]
    shard.write_bytes(shard.read_bytes()[:-700])
    assert not shards_ready(out, inputs, "swh", "eng", pairs_per_shard=10)


def test_a_damaged_shard_folder_is_moved_aside_and_rebuilt(tmp_path, monkeypatch):
    from dist_optical import artifacts

    inputs = bitext(tmp_path, 30)
    out = tmp_path / "shards"
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    good = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "artifact.json"}
    shard = out / "swh-eng-000001.tar"
    data = bytearray(shard.read_bytes())
    data[data.index(b"sentence 1")] = ord("S")  # same size: only the sha256 tells
    shard.write_bytes(bytes(data))
    damaged = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(artifacts, "_hashed", set())  # a later job: hashes checked again
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "artifact.json"} == good
    (aside,) = tmp_path.glob("shards.damaged-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == damaged  # kept, byte for byte


def test_a_folder_from_before_markers_is_marked_in_place_not_rebuilt(tmp_path, capsys):
    inputs = bitext(tmp_path, 30)
    out = tmp_path / "shards"
    manifest = build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    (out / "artifact.json").unlink()  # what builds wrote before shard folders had markers
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    assert build_shards(inputs, out, "swh", "eng", pairs_per_shard=10) == manifest
    assert capsys.readouterr().out == ""  # not rebuilt
    assert {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.name != "artifact.json"
    } == before
    assert shards_ready(out, inputs, "swh", "eng", pairs_per_shard=10)
    assert not list(tmp_path.glob("shards.damaged-*"))
    (out / "artifact.json").unlink()  # an earlier build of other arguments: marked, then replaced
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=20)
    assert shards_ready(out, inputs, "swh", "eng", pairs_per_shard=20)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tar") == [
        "swh-eng-000000.tar",
        "swh-eng-000001.tar",
    ]


def test_a_previous_build_with_files_someone_added_is_not_replaced(tmp_path):
    inputs = bitext(tmp_path, 30)
    out = tmp_path / "shards"
    build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="holds files no build of the shards wrote.*notes.txt"):
        build_shards(inputs, out, "swh", "eng", pairs_per_shard=20)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert build_shards(inputs, out, "swh", "eng", pairs_per_shard=10)["total_pairs"] == 30  # same: opened


def test_key_collision_is_an_error(tmp_path):
    tsv = tmp_path / "k.tsv"
    tsv.write_text("key\tsrc\ttgt\na.b\tx\ty\na_b\tz\tw\n", encoding="utf-8")
    with pytest.raises(UserError, match="collide"):
        build_shards([tsv], tmp_path / "s", "swh", "eng")
