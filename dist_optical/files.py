"""Every file the project reads as text or writes goes through here: one atomic write (temp name,
fsync, rename), one way to report a failed write (`writing`), one UTF-8 line reader whose errors
name the file and line, and one folder lock.

The lock is `fcntl.flock` on a lock file: the kernel drops it when the process dies (kill -9
included), so a stale lock file never blocks anyone; the file only says who held it last.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dist_optical.errors import UserError

log = logging.getLogger("dist_optical.files")

# The write failures a user can fix, and how a message says them.
WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the disk holding",
    errno.EDQUOT: "disk quota exceeded for",
    errno.EROFS: "read-only file system at",
    errno.EACCES: "permission denied for",
    errno.EPERM: "operation not permitted on",
    errno.EISDIR: "a folder is in the way at",
    errno.ENOTDIR: "a file is in the way of",
}
# torch.save reports a failed write (a full disk) as a RuntimeError from its C++ writer, without errno.
TORCH_WRITER_FAILURES = ("inline_container.cc", "PytorchStreamWriter")


class WriteError(UserError):
    """Writing an artifact failed for a reason outside the program: a full disk, a read-only file system,
    permissions, a folder or file in the way."""


def write_failure(err: BaseException, path: Path, what: str) -> WriteError | None:
    """The one-line `WriteError` for ``err`` raised while writing ``what`` at ``path``, or None when
    ``err`` is not a write failure (a bug keeps its traceback)."""
    if isinstance(err, WriteError):  # already said, by the write that failed
        return err
    if isinstance(err, OSError) and err.errno in WRITE_FAILURES:
        reason = f"{WRITE_FAILURES[err.errno]} {err.filename or path}"
    elif isinstance(err, RuntimeError) and any(s in str(err) for s in TORCH_WRITER_FAILURES):
        reason = f"torch's file writer failed ({str(err).splitlines()[0]}); {_free_space(path)}"
    else:
        return None
    return WriteError(f"could not write {what} {path}: {reason}")


def _free_space(path: Path) -> str:
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    return f"{shutil.disk_usage(existing).free / 2**20:.0f} MB free on that disk"


@contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Report a write failure in the block as one `WriteError` line naming ``path`` and ``what`` was
    being written; any other error passes unchanged. Cleaning up is the block's job."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        failure = write_failure(err, Path(path), what)
        if failure is None:
            raise
        raise failure from err


def atomic_write(path: Path, data: str | bytes, what: str = "the file") -> None:
    """Write ``data`` to ``path`` atomically; on any failure (a full disk included) the temp file is
    removed and ``path`` keeps its previous content."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path, what):
            with open(tmp, "wb") as handle:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never a 0-byte or partial temp file left behind
        raise


def write_json(path: Path, obj: Any, what: str = "the file", indent: int | None = 1) -> None:
    """``obj`` as JSON (``indent`` None: one line, for long lists), written atomically (fsynced; NaN
    refused: it is not JSON). The project's one JSON file writer."""
    atomic_write(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n", what)


class TextFileError(UserError):
    """A text input that is not UTF-8 lines: a folder, a binary file, a bad byte."""


def text_lines(path: Path, error: type[UserError] = TextFileError) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line break) of a UTF-8 file, a leading BOM dropped.
    Decoded line by line, so ``error`` (raised for a folder, a bad byte or a NUL) names the line."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder; expected a UTF-8 text file")
    if not path.is_file():
        raise error(f"{path}: file not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise error(f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
            if number == 1:
                text = text.removeprefix("\ufeff")
            if "\x00" in text:  # a binary file, or a broken export: never read silently
                raise error(f"{path}:{number}: contains a NUL byte (column {text.index(chr(0)) + 1})")
            yield number, text.rstrip("\r\n")


def read_lines(path: Path, limit: int = 0) -> list[str]:
    """The first ``limit`` lines of a UTF-8 file (0 = all), e.g. one sentence a line."""
    return [text for _, text in itertools.islice(text_lines(path), limit or None)]


class FolderInUse(UserError):
    """Another process holds the folder's lock."""


LOCK_POLL_S = 0.5  # how often a waiting process tries the lock again
WAIT_REPORT_S = 30  # how often it says whom it is waiting for


@contextmanager
def hold_lock(lock_file: Path, what: str, wait: float = 0) -> Iterator[None]:
    """Hold ``lock_file`` exclusively while the block runs. ``what`` says who holds it (``train rank
    0``). When another process holds it: fail at once naming that process (``wait`` 0: a run folder
    has one writer), or wait up to ``wait`` seconds, saying whom for (a shared build in progress)."""
    with writing(lock_file, "the lock file"):
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_file, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole block)
    with handle:
        _acquire(handle, lock_file, wait)
        with writing(lock_file, "the lock file"):
            handle.seek(0)
            handle.truncate()
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            handle.write(f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {since})\n")
            handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle, lock_file: Path, wait: float) -> None:
    started, reported = time.monotonic(), -WAIT_REPORT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
        waited = time.monotonic() - started
        if waited >= wait:
            advice = f"gave up after waiting {waited:.0f} s" if wait else "wait for it, or use another folder"
            raise FolderInUse(f"{lock_file.parent} is in use by {holder}: {advice}") from None
        if waited - reported >= WAIT_REPORT_S:
            log.warning("waiting for %s, in use by %s (%.0f s so far, at most %.0f s)",
                        lock_file.parent, holder, waited, wait)  # fmt: skip
            reported = waited
        time.sleep(LOCK_POLL_S)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def input_sha256(path: Path) -> str:
    """sha256 of an input file (a bitext, a model file), hashed once per process while its size and
    mtime stay the same: start-up names shard folders, checks shards and records inputs from it."""
    stat = Path(path).stat()
    return _input_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _input_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))
