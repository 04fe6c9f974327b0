"""One polling helper for tests that wait on real sockets, processes or Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Condition = Callable[[], Any | Awaitable[Any]]


async def eventually(condition: Condition, timeout: float = 3.0, message: str = "") -> Any:
    """The first truthy value of ``condition()`` (sync or async), polled until ``timeout``
    seconds have passed; then the test fails with ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message or "condition not met in time")
        await asyncio.sleep(0.005)
