"""Pacing calls to Stigg: a token bucket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

_EPSILON = 1e-9


class TokenBucket:
    """At most ``per_minute`` calls a minute, evenly paced.

    The bucket holds ``capacity`` tokens (default one), so over any window of ``t`` seconds at
    most ``capacity + per_minute * t / 60`` calls start: Stigg's per-minute limits are never
    met in a burst. ``penalize`` empties it for a while (after a 429, which Stigg sends without
    ``Retry-After``)."""

    def __init__(
        self,
        per_minute: float,
        *,
        capacity: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_minute <= 0 or capacity < 1:
            raise ValueError("per_minute must be positive and capacity at least 1")
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._updated = clock()

    def _refill(self, now: float) -> None:
        # _updated may lie in the future (a penalty): nothing accrues before it.
        if now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def delay(self) -> float:
        """Seconds until a token is available (0: now)."""
        now = self._clock()
        self._refill(now)
        held = max(0.0, self._updated - now)
        missing = 1.0 - self._tokens
        # The tolerance keeps float rounding from turning into a sleep too short to matter.
        if held == 0.0 and missing <= _EPSILON:
            return 0.0
        return held + max(0.0, missing) / self.rate

    def try_acquire(self) -> bool:
        if self.delay() > 0:
            return False
        self._tokens -= 1
        return True

    async def acquire(self) -> None:
        """Wait for a token and take it."""
        while not self.try_acquire():
            await self._sleep(self.delay())

    def penalize(self, seconds: float) -> None:
        """No call for ``seconds``, and then start from an empty bucket."""
        now = self._clock()
        self._refill(now)
        self._tokens = min(self._tokens, 0.0)
        self._updated = max(self._updated, now + seconds)
