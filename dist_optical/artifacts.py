"""Built artifacts: folders made once from their inputs, checked on every open, rebuilt when damaged.

`build_once(folder, build, what)` is how the project makes a folder that jobs share and reuse (the
teacher cache, the converted e5 model):
- A folder is *complete* when its marker (`artifact.json`, written last) lists each of its files
  with size and sha256, and the files still match. Sizes are checked on every open, sha256s once
  per process (hashing the 470 MB e5 folder takes ~1-2 s, small next to loading it).
- Otherwise the folder is built under a lock beside it (`.NAME.lock`). A job that finds another's
  build in progress waits for it (saying whose, and for how long) up to ``wait`` seconds, then uses
  its result. Under the lock, temp folders of dead builds (`.NAME.build-*`) are removed, and a
  damaged folder is moved aside (`NAME.damaged-TIME`, with a warning naming the damage): never
  deleted, never served.
- ``build(tmp)`` writes into a fresh temp folder beside ``folder``; then every file is fsynced, the
  marker is written, and the temp folder is renamed into place. A crash leaves only a temp folder;
  a full disk or a read-only one is one `WriteError` line, the temp folder removed.

Checkpoint tags (engine/checkpoint.py) use the same marker and checks under their own marker name.
Built models (the converted e5) live under `model_cache_root()`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dist_optical.config import REPO_ROOT
from dist_optical.files import hold_lock, sha256_file, write_json, writing

log = logging.getLogger("dist_optical.artifacts")

MARKER = "artifact.json"
BUILD_WAIT_S = 3600.0  # how long a job waits for another's build when its config does not say
_hashed: set[tuple[str, int]] = set()  # (folder, its marker's mtime): sha256s checked in this process


def model_cache_root() -> Path:
    """Where built models live: ``$DIST_OPTICAL_CACHE/models`` if set, else ``<repo>/.cache/models``
    (git-ignored)."""
    env = os.environ.get("DIST_OPTICAL_CACHE")
    return Path(env) / "models" if env else REPO_ROOT / ".cache" / "models"


def mark_complete(folder: Path, meta: dict[str, Any], marker: str = MARKER) -> None:
    """Make ``folder`` complete: every file fsynced, then the marker (``meta`` plus each file's size
    and sha256) written last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != marker):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    write_json(folder / marker, {**meta, "files": files}, f"the marker of {folder}")


def damage(folder: Path, checksums: bool = True, marker: str = MARKER) -> str | None:
    """Why ``folder`` is not complete (names the file), or None when it is."""
    marker_path = folder / marker
    try:
        files = json.loads(marker_path.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"{marker_path} is missing (it was not finished)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{marker_path} is unreadable ({err})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, {expected['bytes']} when written (truncated?)"
    for name, expected in files.items() if checksums else ():
        if sha256_file(folder / name) != expected["sha256"]:
            return f"{folder / name} does not match its sha256 from when written (altered or corrupted)"
    return None


def build_once(
    folder: Path, build: Callable[[Path], dict[str, Any]], what: str, wait: float = BUILD_WAIT_S
) -> Path:
    """``folder``, complete: opened as it is, or built first by ``build(tmp)`` (which writes the files
    into ``tmp`` and returns what the marker should record besides them). See the module docstring."""
    if folder.exists() and verify(folder) is None:
        return folder
    with writing(folder.parent, what):
        folder.parent.mkdir(parents=True, exist_ok=True)
    with hold_lock(folder.parent / f".{folder.name}.lock", f"the build of {what} {folder.name}", wait):
        if folder.exists():
            why = verify(folder)
            if why is None:  # built by another job while this one waited
                return folder
            _move_aside(folder, why, what)
        _remove_dead_builds(folder)
        _build_into(folder, build, what)
    return folder


def verify(folder: Path) -> str | None:
    """`damage`, with the sha256s checked only the first time this process opens this build."""
    try:
        key = (str(folder), (folder / MARKER).stat().st_mtime_ns)
    except OSError:
        key = None
    why = damage(folder, checksums=key not in _hashed)
    if why is None and key is not None:
        _hashed.add(key)
    return why


def _move_aside(folder: Path, why: str, what: str) -> None:
    aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    with writing(aside, f"(moving aside) the damaged {what}"):
        folder.rename(aside)
    log.warning("%s %s is damaged: %s; moved it aside to %s and building it again", what, folder, why, aside)


def _remove_dead_builds(folder: Path) -> None:
    """Temp folders of builds whose process died: every builder holds the lock, which is now ours."""
    for dead in folder.parent.glob(f".{folder.name}.build-*"):
        shutil.rmtree(dead, ignore_errors=True)
        log.info("removed %s, left by a build that did not finish", dead)


def _build_into(folder: Path, build: Callable[[Path], dict[str, Any]], what: str) -> None:
    start = time.perf_counter()
    with writing(folder, what):
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.build-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the files from other users' jobs
        with writing(folder, what):
            meta = build(tmp)
            mark_complete(tmp, {**meta, "build_s": round(time.perf_counter() - start, 1)})
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only this build's own temp folder
        raise
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    log.info("built %s in %.0f s (%.0f MB): %s", what, time.perf_counter() - start, size / 2**20, folder)
