"""Repeated faults logged once per interval, with a count, and never with a traceback.

A fault that recurs on every request (a full disk, a malformed request flood) must not turn the
log into the bottleneck or the attack: the first occurrence is logged, the rest of the interval
is counted and reported with the next line about the same fault.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

# Often enough that an operator sees a fault within a minute, rarely enough to bound the log.
FAULT_LOG_INTERVAL_SECONDS = 60.0


class FaultLog:
    """Logs each fault key at most once per ``interval`` seconds, with how often it recurred."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = FAULT_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()  # SQLite spool faults arrive from its worker thread
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, key: str, level: int, message: str, *args: object) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval; True if it was."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            repeated = self._suppressed.pop(key, 0)
        if repeated:
            message += " (and %d more times in the last %.0fs)"
            args = (*args, repeated, self._interval if last is None else now - last)
        self._logger.log(level, message, *args)
        return True

    def unhandled(self, what: str, exc: BaseException) -> bool:
        """A bug met while serving ``what``: its type, message and the line it came from,
        once per interval per ``what`` and exception type (the 500 or INTERNAL answer says the
        rest to the caller)."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        return self.log(
            f"{what}:{type(exc).__name__}",
            logging.ERROR,
            "unhandled error in %s: %r at %s",
            what,
            exc,
            where,
        )
