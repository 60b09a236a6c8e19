"""Fixtures of the fault tests: a finished tiny run to damage copies of, a process that forgets
which artifacts it hashed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import run_train


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run with checkpoints at steps 4 and 8 (tests change copies of it, never it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_train(out, "train.max_steps=8", "train.save_every=4", "train.keep_last=3")
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


@pytest.fixture
def fresh_process(monkeypatch):
    """Forget which artifacts this process already hashed: the next open is like a new job's."""
    from dist_optical import artifacts

    monkeypatch.setattr(artifacts, "_hashed", set())
