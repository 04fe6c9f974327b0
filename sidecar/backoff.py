"""The one retry curve: full-jitter exponential backoff (client retries, flushes, realtime and
replication reconnects)."""

from __future__ import annotations

import random
from collections.abc import Callable


def full_jitter(
    attempt: int, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """AWS's "full jitter": uniform in [0, min(cap, base * 2**attempt)], so many sidecars
    retrying after one outage spread out instead of arriving together (``attempt`` from 0)."""
    return rng(0.0, min(cap, base * 2 ** min(attempt, 32)))
