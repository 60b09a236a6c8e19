"""Built artifacts: folders made once from their inputs, checked on every open, rebuilt when damaged.

`build_once(folder, build, what, key=...)` is how the project makes a folder that jobs share and
reuse (shards, the teacher cache, the converted e5 model, eval embeddings, exports, universal
checkpoints):
- A folder is *complete* when its marker (`artifact.json`, written last) lists each of its files
  with size and sha256, and the files still match. Sizes are checked on every open, sha256s once
  per process (hashing the 470 MB e5 folder takes ~1-2 s, small next to loading it).
- ``key`` (optional, JSON) says what the folder was built from (the inputs' sha256s, the builder's
  arguments) and is recorded in the marker. A complete folder of another key is *stale*: the same
  output folder asked for other content (`dist-optical shard` into a folder it sharded before).
- Otherwise the folder is built under a lock beside it (`.NAME.lock`). A job that finds another's
  build in progress waits for it (saying whose, and for how long) up to ``wait`` seconds, then uses
  its result. Under the lock, temp folders of dead builds (`.NAME.build-*`) are removed, a
  replacement that died half-way is finished or undone (`.NAME.old-*`), and a damaged folder is
  moved aside (`NAME.damaged-TIME`, with a warning naming the damage): never deleted, never served.
- ``build(tmp)`` writes into a fresh temp folder beside ``folder``; then every file is fsynced, the
  marker is written, and the temp folder is renamed into place. A stale build is replaced by two
  renames (it becomes `.NAME.old-PID`, the new one `NAME`), and only then are the files its marker
  lists deleted; a stale folder holding any other file is refused, untouched. A crash at any point
  leaves the previous build intact (at worst as `.NAME.old-PID`, put back by the next build); a
  full disk or a read-only one is one `WriteError` line, the temp folder removed.

Checkpoint tags (engine/checkpoint.py) use the same marker and checks under their own marker name.
Built models (the converted e5) live under `model_cache_root()`.
"""

from __future__ import annotations

import glob
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
from dist_optical.errors import UserError
from dist_optical.files import hold_lock, sha256_file, write_json, writing

log = logging.getLogger("dist_optical.artifacts")

MARKER = "artifact.json"
BUILD_WAIT_S = 3600.0  # how long a job waits for another's build when its config does not say
_hashed: set[tuple[str, int]] = set()  # (folder, its marker's mtime): sha256s checked in this process


class ArtifactError(UserError):
    """A folder that a build may not replace: it holds files no build of it wrote."""


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


def read_marker(folder: Path, marker: str = MARKER) -> dict[str, Any]:
    """The marker's content (``meta``, ``key`` and ``files``); raises OSError or ValueError."""
    return json.loads((folder / marker).read_text(encoding="utf-8"))


def damage(folder: Path, checksums: bool = True, marker: str = MARKER) -> str | None:
    """Why ``folder`` is not complete (names the file), or None when it is."""
    marker_path = folder / marker
    try:
        files = read_marker(folder, marker)["files"]
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
    folder: Path,
    build: Callable[[Path], dict[str, Any]],
    what: str,
    wait: float = BUILD_WAIT_S,
    *,
    key: Any = None,
    adopt: Callable[[Path], dict[str, Any] | None] | None = None,
) -> Path:
    """``folder``, complete (and built from ``key``, when given): opened as it is, or built first by
    ``build(tmp)`` (which writes the files into ``tmp`` and returns what the marker should record
    besides them and the key). See the module docstring.

    key: what the content is a function of, as JSON (compared as JSON: a tuple equals its list),
    e.g. ``{"sources": [sha256, ...], "pairs_per_shard": 1000}``; None: not checked (a folder named
    by a digest of its inputs cannot hold another key's build).
    adopt: for a folder with files but no marker (a build of an earlier version, before markers):
    ``adopt(folder)`` checks it and returns what its marker should record (the ``key`` it was built
    from included), and the folder is marked in place instead of rebuilt; None when it is not such
    a build (then it is damaged: moved aside). To refuse the folder (someone else's files), raise.
    """
    folder = Path(folder)
    if _why_rebuild(folder, key) is None:
        return folder
    with writing(folder.parent, what):
        folder.parent.mkdir(parents=True, exist_ok=True)
    with hold_lock(folder.parent / f".{folder.name}.lock", f"the build of {what} {folder.name}", wait):
        _finish_replacements(folder, what)
        _remove_dead_builds(folder)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # an empty folder (made by the user for the output): built into
        if adopt is not None and folder.exists() and not (folder / MARKER).exists():
            _adopt(folder, adopt, what)
        if folder.exists():
            why = _why_rebuild(folder, key)
            if why is None:  # built by another job while this one waited
                return folder
            if verify(folder) is not None:
                move_aside(folder, f"is damaged: {why}", what)
            else:  # stale: complete, another key; ours to replace, unless it holds others' files
                _refuse_unlisted(folder, what)
                log.info("%s %s %s: building it again", what, folder, why)
        _build_into(folder, build, what, key)
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


def ready(folder: Path, key: Any = None) -> bool:
    """``folder`` is complete and (when ``key`` is given) built from ``key``: build_once would open
    it as it is."""
    return _why_rebuild(Path(folder), key) is None


def move_aside(folder: Path, why: str, what: str, label: str = "damaged") -> Path:
    """Rename ``folder`` to ``NAME.LABEL-TIME`` beside it (kept, never deleted), with a warning
    saying ``why`` (``is damaged: FILE ...``); returns where it went."""
    aside = folder.with_name(f"{folder.name}.{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    with writing(aside, f"(moving aside) the {label} {what}"):
        folder.rename(aside)
    log.warning("%s %s %s; moved it aside to %s", what, folder, why, aside)
    return aside


def _why_rebuild(folder: Path, key: Any) -> str | None:
    """Why ``folder`` cannot be opened as built from ``key``: its damage, or that it is stale."""
    if not folder.exists():
        return f"{folder} does not exist"
    why = verify(folder)
    if why is not None or key is None:
        return why
    try:
        recorded = read_marker(folder).get("key")
    except (OSError, ValueError, AttributeError) as err:
        return f"{folder / MARKER} is unreadable ({err})"
    wanted = json.loads(json.dumps(key))  # compared as JSON: tuples are recorded as lists
    if recorded == wanted:
        return None
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        changed = sorted(k for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k))
        return f"was built from other inputs or arguments (changed: {', '.join(changed)})"
    return "was built from other inputs or arguments (another key)"


def _adopt(folder: Path, adopt: Callable[[Path], dict[str, Any] | None], what: str) -> None:
    meta = adopt(folder)
    if meta is not None:
        with writing(folder, f"the marker of {what}"):
            mark_complete(folder, meta)
        log.info("%s %s: an earlier version's build, checked and marked complete in place", what, folder)


def _refuse_unlisted(folder: Path, what: str) -> None:
    listed = set(read_marker(folder)["files"]) | {MARKER}
    unlisted = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                      and str(p.relative_to(folder)) not in listed)  # fmt: skip
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
        raise ArtifactError(
            f"{folder} holds files no build of {what} wrote ({shown}), so it is not replaced: move them "
            "out, or build into another folder"
        )


def _remove_dead_builds(folder: Path) -> None:
    """Temp folders of builds whose process died: every builder holds the lock, which is now ours."""
    for dead in folder.parent.glob(f".{glob.escape(folder.name)}.build-*"):
        shutil.rmtree(dead, ignore_errors=True)
        log.info("removed %s, left by a build that did not finish", dead)


def _finish_replacements(folder: Path, what: str) -> None:
    """A replacement whose process died between its renames: the previous build goes back in place;
    one that died after them: the previous build's listed files are deleted."""
    for old in folder.parent.glob(f".{glob.escape(folder.name)}.old-*"):
        if not folder.exists():
            with writing(folder, f"(putting back) the previous {what}"):
                old.rename(folder)
            log.warning("put back %s as %s: its replacement did not finish", old, folder)
        else:
            _remove_build(old)


def _remove_build(old: Path) -> None:
    """Delete what a complete build wrote (its marker's files, then the marker and emptied folders);
    anything else stays, with the folder."""
    try:
        listed = list(read_marker(old)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = []
    for name in [*listed, MARKER]:
        (old / name).unlink(missing_ok=True)
    for sub in sorted((p for p in old.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if any(old.iterdir()):
        log.warning("kept %s: it holds files its build did not write", old)
    else:
        old.rmdir()


def _build_into(folder: Path, build: Callable[[Path], dict[str, Any]], what: str, key: Any) -> None:
    start = time.perf_counter()
    with writing(folder, what):
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.build-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the files from other users' jobs
        with writing(folder, what):
            meta = build(tmp)
            keyed = {"key": key} if key is not None else {}
            mark_complete(tmp, {**meta, **keyed, "build_s": round(time.perf_counter() - start, 1)})
            if folder.exists():
                _replace(folder, tmp)
            else:
                tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only this build's own temp folder
        raise
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    log.info("built %s in %.0f s (%.0f MB): %s", what, time.perf_counter() - start, size / 2**20, folder)


def _replace(folder: Path, tmp: Path) -> None:
    """Swap the complete ``tmp`` in for the stale ``folder`` (two renames), then delete the old
    build's files; a crash between the renames leaves the old build whole as `.NAME.old-PID`."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    folder.rename(old)
    try:
        tmp.rename(folder)
    except BaseException:
        old.rename(folder)
        raise
    _remove_build(old)
