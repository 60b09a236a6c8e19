"""Checkpoint tags and their universal conversions through the artifacts layer (a fake converter
stands in for DeepSpeed's ds_to_universal; the real one runs in tests/train/test_multirank.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dist_optical import artifacts
from dist_optical.engine import checkpoint


def saved_tag(ckpt_dir: Path, step: int, weights: bytes = b"w" * 64) -> str:
    tag = checkpoint.tag_for(step)
    (ckpt_dir / tag).mkdir(parents=True)
    (ckpt_dir / tag / "mp_rank_00_model_states.pt").write_bytes(weights)
    checkpoint.mark_complete(ckpt_dir / tag, {"step": step, "world_size": 2, "zero_stage": 2})
    return tag


@pytest.fixture
def conversions(monkeypatch) -> list[str]:
    calls: list[str] = []

    def fake_run(cmd, **kwargs):
        source, out = Path(cmd[cmd.index("--input_folder") + 1]), Path(cmd[cmd.index("--output_folder") + 1])
        calls.append(source.name)
        (out / "zero").mkdir(parents=True)
        (out / "zero" / "optimizer_state.pt").write_bytes(
            (source / "mp_rank_00_model_states.pt").read_bytes()
        )
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(checkpoint.subprocess, "run", fake_run)
    return calls


def test_a_universal_conversion_is_built_once_marked_and_keyed_by_its_tag(tmp_path, conversions):
    ckpt = tmp_path / "checkpoints"
    tag = saved_tag(ckpt, 8)
    assert checkpoint.prepare_elastic(ckpt, tag, 1, is_main=True) == (ckpt / "universal", tag, True)
    universal = ckpt / "universal" / tag
    assert artifacts.damage(universal) is None and conversions == [tag]
    checkpoint.prepare_elastic(ckpt, tag, 1, is_main=True)
    assert conversions == [tag]  # opened as it is
    assert not [p for p in (ckpt / "universal").iterdir() if ".build-" in p.name or ".old-" in p.name]

    (ckpt / tag / "mp_rank_00_model_states.pt").write_bytes(b"v" * 64)  # the step saved again
    checkpoint.mark_complete(ckpt / tag, {"step": 8, "world_size": 2, "zero_stage": 2})
    checkpoint.prepare_elastic(ckpt, tag, 1, is_main=True)
    assert conversions == [tag, tag] and (universal / "zero" / "optimizer_state.pt").read_bytes() == b"v" * 64


def test_a_conversion_from_before_markers_is_adopted_not_redone(tmp_path, conversions):
    ckpt = tmp_path / "checkpoints"
    tag = saved_tag(ckpt, 8)
    old = ckpt / "universal" / tag / "zero"
    old.mkdir(parents=True)
    (old / "optimizer_state.pt").write_bytes(b"converted before")
    checkpoint.prepare_elastic(ckpt, tag, 1, is_main=True)
    assert conversions == [] and artifacts.damage(ckpt / "universal" / tag) is None
    assert (old / "optimizer_state.pt").read_bytes() == b"converted before"


def test_same_world_size_or_zero_0_loads_the_tag_itself(tmp_path, conversions):
    ckpt = tmp_path / "checkpoints"
    tag = saved_tag(ckpt, 4)
    assert checkpoint.prepare_elastic(ckpt, tag, 2, is_main=True) == (ckpt, tag, False)
    assert conversions == [] and not (ckpt / "universal").exists()


def test_saving_over_a_damaged_tag_moves_it_aside(tmp_path, caplog):
    ckpt = tmp_path / "checkpoints"
    tag = saved_tag(ckpt, 8)
    (ckpt / tag / "mp_rank_00_model_states.pt").write_bytes(b"short")

    class Engine:
        def save_checkpoint(self, save_dir, tag, client_state, save_latest):
            (Path(save_dir) / tag).mkdir()
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"new")

        def zero_optimization_stage(self):
            return 0

    with caplog.at_level("WARNING"):
        checkpoint.save(Engine(), ckpt, 8, {"world_size": 1}, is_main=True, keep_last=0)
    (aside,) = ckpt.glob(f"{tag}.damaged-*")
    assert (aside / "mp_rank_00_model_states.pt").read_bytes() == b"short"  # kept
    assert any("is damaged" in r.getMessage() and "mp_rank_00" in r.getMessage() for r in caplog.records)
    assert (
        checkpoint.damage(ckpt / tag) is None
        and json.loads((ckpt / tag / checkpoint.META).read_text())["step"] == 8
    )
    assert checkpoint.newest_complete(ckpt) == tag
