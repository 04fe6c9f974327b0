"""Pacing calls to Stigg: a token bucket, and full-jitter exponential backoff."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable


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
        self._blocked_until = 0.0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def delay(self) -> float:
        """Seconds until a token is available (0: now)."""
        now = self._clock()
        self._refill(now)
        wait = max(0.0, self._blocked_until - now)
        if self._tokens < 1:
            wait = max(wait, (1 - self._tokens) / self.rate)
        return wait

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
        self._blocked_until = max(self._blocked_until, now + seconds)


def full_jitter(
    attempt: int, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """AWS's "full jitter": uniform in [0, min(cap, base * 2**attempt)], so many sidecars
    retrying after one outage spread out instead of arriving together."""
    return rng(0.0, min(cap, base * 2 ** min(attempt, 32)))
