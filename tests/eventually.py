"""The one polling helper for tests that wait on real sockets, processes or Redis:
``eventually`` in async tests, ``eventually_blocking`` in plain ones (same rule)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Condition = Callable[[], Any | Awaitable[Any]]


class _Deadline:
    def __init__(self, timeout: float, message: str) -> None:
        self._at = time.monotonic() + timeout
        self._failure = f"timed out after {timeout} s: {message or 'condition not met'}"

    def check(self) -> None:
        if time.monotonic() > self._at:
            raise AssertionError(self._failure)


async def eventually(
    condition: Condition, timeout: float = 5.0, message: str = "", interval: float = 0.005
) -> Any:
    """The first truthy value of ``condition()`` (sync or async), polled every ``interval``
    seconds; the test fails with ``message`` after ``timeout`` seconds."""
    deadline = _Deadline(timeout, message)
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        deadline.check()
        await asyncio.sleep(interval)


def eventually_blocking(
    condition: Callable[[], Any], timeout: float = 5.0, message: str = "", interval: float = 0.05
) -> Any:
    """``eventually`` for tests without an event loop (subprocesses, benchmarks)."""
    deadline = _Deadline(timeout, message)
    while True:
        result = condition()
        if result:
            return result
        deadline.check()
        time.sleep(interval)
