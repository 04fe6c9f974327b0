"""A circuit breaker: stop calling an upstream that keeps failing, probe it after a cool-down."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

log = logging.getLogger(__name__)


class BreakerState(Enum):
    CLOSED = 0  # calls flow
    OPEN = 1  # calls fail fast until the cool-down ends
    HALF_OPEN = 2  # one probe call is in flight; its outcome decides


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``cooldown`` lets one probe through."""

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        guards: str = "calls to Stigg",
    ) -> None:
        self._guards = guards
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self.state = BreakerState.CLOSED

    def allow(self) -> bool:
        """Whether a call may go to the upstream now (a True in OPEN starts the probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            log.info("circuit breaker for %s closed: Stigg answers again", self._guards)
        self._failures = 0
        self.state = BreakerState.CLOSED

    def failure(self) -> None:
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self._failures >= self._threshold
        ):
            if self.state is BreakerState.CLOSED:
                log.warning(
                    "circuit breaker for %s opened after %d consecutive failures; "
                    "probing again in %.1f s",
                    self._guards,
                    self._failures,
                    self._cooldown,
                )
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()
