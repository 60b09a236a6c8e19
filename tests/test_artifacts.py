"""artifacts.build_once's key (a stale build replaced, only its own files deleted) and adopt (a folder
from before markers marked in place); damage, waiting and full disks: tests/faults/test_write_faults.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_optical.artifacts import MARKER, ArtifactError, build_once, ready
from dist_optical.errors import UserError


def writer(text: str, calls: list[str] | None = None):
    def build(tmp: Path) -> dict:
        if calls is not None:
            calls.append(text)
        (tmp / "data.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "more.txt").write_text(text * 2)
        return {"made_by": "writer"}

    return build


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_the_key_is_recorded_and_an_equal_one_opens_the_build(tmp_path):
    calls: list[str] = []
    folder = tmp_path / "out"
    build_once(folder, writer("a", calls), "the thing", key={"src": "a", "books": ("GEN",)})
    marker = json.loads((folder / MARKER).read_text())
    assert marker["key"] == {"src": "a", "books": ["GEN"]} and marker["made_by"] == "writer"
    build_once(folder, writer("a", calls), "the thing", key={"books": ["GEN"], "src": "a"})  # as JSON: equal
    assert calls == ["a"] and ready(folder, {"src": "a", "books": ["GEN"]}) and ready(folder)
    assert not ready(folder, {"src": "b", "books": ["GEN"]}) and not ready(tmp_path / "none")


def test_a_build_of_another_key_is_replaced_and_only_its_own_files_deleted(tmp_path, caplog):
    folder = tmp_path / "out"
    build_once(folder, writer("a"), "the thing", key={"src": "a"})
    with caplog.at_level("INFO", logger="dist_optical.artifacts"):
        build_once(folder, writer("b"), "the thing", key={"src": "b"})
    assert {k: v for k, v in files(folder).items() if k != MARKER} == {"data.txt": "b", "sub/more.txt": "bb"}
    assert json.loads((folder / MARKER).read_text())["key"] == {"src": "b"}
    assert any("changed: src" in r.getMessage() for r in caplog.records)
    assert hidden(tmp_path) == [".out.lock"]  # no old build, no temp folder left
    assert not list(tmp_path.glob("out.damaged-*"))  # stale is not damaged: nothing kept aside


def test_a_folder_without_a_key_counts_as_built_from_another(tmp_path):
    folder = tmp_path / "out"
    build_once(folder, writer("a"), "the thing")  # no key recorded (as every build before keys)
    assert ready(folder) and not ready(folder, {"src": "a"})
    build_once(folder, writer("b"), "the thing", key={"src": "a"})
    assert (folder / "data.txt").read_text() == "b"


def test_a_stale_build_holding_others_files_is_refused_untouched(tmp_path):
    folder = tmp_path / "out"
    build_once(folder, writer("a"), "the thing", key=1)
    (folder / "sub" / "notes.txt").write_text("mine")
    before = files(folder)
    with pytest.raises(ArtifactError, match=r"holds files no build of the thing wrote \(sub/notes.txt\)"):
        build_once(folder, writer("b"), "the thing", key=2)
    assert files(folder) == before and hidden(tmp_path) == [".out.lock"]
    assert build_once(folder, writer("c"), "the thing", key=1) == folder  # its own key: opened as it is
    assert isinstance(ArtifactError("x"), UserError)  # one line from the CLI


def test_a_crash_between_the_renames_puts_the_previous_build_back(tmp_path, caplog):
    folder = tmp_path / "out"
    build_once(folder, writer("a"), "the thing", key=1)
    before = files(folder)
    folder.rename(tmp_path / ".out.old-999")  # first rename of a replacement, then the process died
    (tmp_path / ".out.build-dead").mkdir()  # ... with its temp folder
    calls: list[str] = []
    with caplog.at_level("WARNING"):
        build_once(folder, writer("b", calls), "the thing", key=1)
    assert files(folder) == before and calls == []  # put back; its key matches: not rebuilt
    assert any("put back" in r.getMessage() for r in caplog.records)
    assert hidden(tmp_path) == [".out.lock"]


def test_a_crash_after_the_renames_has_the_old_builds_files_deleted(tmp_path):
    folder = tmp_path / "out"
    build_once(folder, writer("a"), "the thing", key=1)
    old = tmp_path / ".out.old-999"
    build_once(tmp_path / ".scratch", writer("old"), "the thing", key=0).rename(old)
    (old / "stray.txt").write_text("not listed in its marker")  # kept: no build wrote it
    (folder / "data.txt").write_text("XX")  # damaged (size): the next build opens the lock
    build_once(folder, writer("b"), "the thing", key=1)
    assert files(old) == {"stray.txt": "not listed in its marker"}
    assert (folder / "data.txt").read_text() == "b"


def test_a_failed_replacement_keeps_the_previous_build(tmp_path):
    folder = tmp_path / "out"
    build_once(folder, writer("a"), "the thing", key=1)
    before = files(folder)

    def fails(tmp: Path) -> dict:
        (tmp / "data.txt").write_text("half")
        raise RuntimeError("a bug in the builder")

    with pytest.raises(RuntimeError, match="a bug"):
        build_once(folder, fails, "the thing", key=2)
    assert files(folder) == before and hidden(tmp_path) == [".out.lock"]


def test_an_empty_folder_is_built_into(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    build_once(folder, writer("a"), "the thing", key=1)
    assert (folder / "data.txt").read_text() == "a" and not list(tmp_path.glob("out.damaged-*"))


def test_adopt_marks_an_older_build_in_place(tmp_path, caplog):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "data.txt").write_text("old")
    mtime = (folder / "data.txt").stat().st_mtime_ns
    seen: list[Path] = []

    def adopt(found: Path) -> dict:
        seen.append(found)
        return {"key": 1, "adopted": True}

    calls: list[str] = []
    with caplog.at_level("INFO", logger="dist_optical.artifacts"):
        build_once(folder, writer("new", calls), "the thing", key=1, adopt=adopt)
    assert seen == [folder] and calls == []
    assert (folder / "data.txt").read_text() == "old" and (folder / "data.txt").stat().st_mtime_ns == mtime
    marker = json.loads((folder / MARKER).read_text())
    assert marker["adopted"] and marker["files"]["data.txt"]["bytes"] == 3
    assert any("marked complete in place" in r.getMessage() for r in caplog.records)
    build_once(folder, writer("new", calls), "the thing", key=1, adopt=adopt)
    assert seen == [folder] and calls == []  # marked: adopt is not asked again


def test_adopt_of_another_key_marks_then_replaces(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "data.txt").write_text("old")
    build_once(folder, writer("new"), "the thing", key=2, adopt=lambda found: {"key": 1})
    assert (folder / "data.txt").read_text() == "new" and not list(tmp_path.glob("out.damaged-*"))


def test_adopt_none_is_damage_and_a_raise_refuses_the_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "data.txt").write_text("old")
    build_once(folder, writer("new"), "the thing", key=1, adopt=lambda found: None)
    assert (folder / "data.txt").read_text() == "new"
    (aside,) = tmp_path.glob("out.damaged-*")
    assert files(aside) == {"data.txt": "old"}  # kept, byte for byte

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")

    def refuse(found: Path) -> dict:
        raise UserError(f"{found} holds someone's files")

    with pytest.raises(UserError, match="someone's files"):
        build_once(theirs, writer("new"), "the thing", key=1, adopt=refuse)
    assert files(theirs) == {"notes.txt": "mine"}
