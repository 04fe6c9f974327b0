"""The token bucket and the backoff, on a fake clock."""

from __future__ import annotations

import pytest

from sidecar.backoff import full_jitter
from sidecar.usage.rate_limit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_calls_are_paced_to_the_rate_per_minute() -> None:
    time = FakeTime()
    bucket = TokenBucket(600, clock=time.clock, sleep=time.sleep)
    starts = []
    for _ in range(50):
        await bucket.acquire()
        starts.append(time.now)
    # One token to start with, then one every 0.1 s: never more than 600 in any minute.
    assert starts[0] == 0.0
    assert starts[-1] == pytest.approx(4.9)
    for window_start in starts:
        in_window = [s for s in starts if window_start <= s < window_start + 1.0]
        assert len(in_window) <= 1 + 10


async def test_a_minute_of_calls_never_exceeds_the_limit() -> None:
    time = FakeTime()
    bucket = TokenBucket(120, clock=time.clock, sleep=time.sleep)
    count = 0
    while time.now < 60.0:
        await bucket.acquire()
        if time.now < 60.0:
            count += 1
    assert count <= 120


async def test_penalize_holds_calls_and_empties_the_bucket() -> None:
    time = FakeTime()
    bucket = TokenBucket(60, capacity=5, clock=time.clock, sleep=time.sleep)
    assert bucket.try_acquire()
    bucket.penalize(3.0)
    assert not bucket.try_acquire()
    await bucket.acquire()
    assert time.now == pytest.approx(4.0)  # the penalty, then one token's worth from empty
    assert bucket.delay() == pytest.approx(1.0)


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        TokenBucket(0)


def test_full_jitter_stays_within_the_growing_capped_ceiling() -> None:
    assert full_jitter(0, 0.5, 30, lambda low, high: high) == 0.5
    assert full_jitter(3, 0.5, 30, lambda low, high: high) == 4.0
    assert full_jitter(10, 0.5, 30, lambda low, high: high) == 30
    assert full_jitter(1000, 0.5, 30, lambda low, high: high) == 30
    assert full_jitter(5, 0.5, 30, lambda low, high: low) == 0.0
    for attempt in range(20):
        assert 0 <= full_jitter(attempt, 0.5, 30) <= 30
