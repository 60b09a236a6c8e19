"""Exclusive ownership of a folder (a run folder, a shard folder) for a process's lifetime.

`fcntl.flock` on a lock file: the kernel drops the lock when the process dies (kill -9 included),
so a stale lock file never blocks anyone; the file only says who held it last.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dist_optical.errors import UserError


class FolderInUse(UserError):
    """Another process holds the folder's lock."""


@contextmanager
def hold(lock_file: Path, what: str) -> Iterator[None]:
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
