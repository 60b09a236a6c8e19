"""Every file the project reads as text or writes goes through here: one atomic write (temp name,
fsync, rename), one UTF-8 line reader whose errors name the file and line, and one folder lock.

The lock is `fcntl.flock` on a lock file: the kernel drops it when the process dies (kill -9
included), so a stale lock file never blocks anyone; the file only says who held it last.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dist_optical.errors import UserError


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically; on any failure (a full disk included) the temp file is
    removed and ``path`` keeps its previous content."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never a 0-byte or partial temp file left behind
        raise


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


@contextmanager
def hold_lock(lock_file: Path, what: str) -> Iterator[None]:
    """Hold ``lock_file`` exclusively while the block runs; fail at once (no waiting) when another
    process holds it, naming that process. ``what`` says who holds it (``train rank 0``)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderInUse(
                f"{lock_file.parent} is in use by {holder}: wait for it to finish, or use another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {since})\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
