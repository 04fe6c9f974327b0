"""Disk full: a reserve of space that lets the SQLite spool keep acknowledging and delivering.

Acknowledging a delivered batch deletes its reports, and in WAL mode even a delete appends new
pages to the log: on a full disk the acknowledgements failed too, so nothing spooled was ever
delivered and removed. The spool keeps a preallocated file on its filesystem and gives it up
the first time a flush-side write hits a full disk; appends are refused (503) until the disk has
room for the reserve again, so the space the reserve freed goes to acknowledgements only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

# Acknowledging a few thousand batches before a checkpoint takes a few MiB of WAL.
RESERVE_BYTES = 8 * 1024 * 1024


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the filesystem (not the spool's own bound) is out of space."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskReserve:
    """A preallocated file of ``size`` bytes, released to free that space at once."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def claim(self) -> bool:
        """Take the space (idempotent); False when the disk has not that much room."""
        if self.held:
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            self.release()
            return False
        return True

    def release(self) -> bool:
        """Give the space back to the filesystem; whether there was any to give."""
        held = self.held
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return held
