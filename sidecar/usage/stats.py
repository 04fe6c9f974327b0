"""The usage pipeline's counts, in one object the metrics exporter can read as it is.

Counters only grow (Prometheus counters); ``Histogram`` keeps cumulative bucket counts, a sum
and a count (a Prometheus histogram) plus a window of recent samples for quantiles in
``GET /v1/usage/stats``.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from sidecar.usage.model import KINDS

BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 75, 100, 250, 500, 1000)
DELIVERY_SECONDS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)


@dataclass
class Histogram:
    """Bucketed observations (upper bounds ``buckets``; one more bucket for +Inf)."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1
        self.recent.append(value)

    def quantile(self, q: float) -> float | None:
        """Of the recent observations (exact, not interpolated from buckets)."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def to_json(self) -> dict[str, Any]:
        cumulative: dict[str, int] = {}
        running = 0
        for bound, count in zip((*self.buckets, "+Inf"), self.counts, strict=True):
            running += count
            cumulative[str(bound)] = running
        return {
            "count": self.count,
            "sum": self.sum,
            "buckets": cumulative,
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
        }


@dataclass
class KindStats:
    """Counts for one kind of report (usage or event)."""

    accepted: int = 0
    """Reports durably spooled (answered 202)."""
    duplicates: int = 0
    """Reports whose client key was already accepted within the dedupe window."""
    rejected_full: int = 0
    """Reports refused with 503 because the spool was full."""
    not_replicated: int = 0
    """Reports answered 503 as fewer replicas than redis.minReplicasAck confirmed them."""
    delivered: int = 0
    """Reports Stigg acknowledged."""
    items_sent: int = 0
    """Usages (after coalescing) or events in acknowledged calls."""
    upstream_calls: int = 0
    """Calls to Stigg, whatever their outcome."""
    batches: int = 0
    """Acknowledged calls."""
    dead_lettered: int = 0
    replayed: int = 0
    claimed: int = 0
    """Reports taken over from a replica presumed dead (Redis)."""
    flush_failures: Counter[str] = field(default_factory=Counter)
    """Failed calls by kind: unavailable, timeout, rate_limited, auth, rejected, ..."""
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    delivery_seconds: Histogram = field(default_factory=lambda: Histogram(DELIVERY_SECONDS_BUCKETS))
    """From acceptance to Stigg's acknowledgement, per report."""

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejectedFull": self.rejected_full,
            "notReplicated": self.not_replicated,
            "delivered": self.delivered,
            "itemsSent": self.items_sent,
            "upstreamCalls": self.upstream_calls,
            "batches": self.batches,
            "deadLettered": self.dead_lettered,
            "replayed": self.replayed,
            "claimed": self.claimed,
            "flushFailures": dict(self.flush_failures),
            "batchSizes": self.batch_sizes.to_json(),
            "deliverySeconds": self.delivery_seconds.to_json(),
        }


@dataclass
class UsageStats:
    """Everything the pipeline counts; one instance per ``UsageService``."""

    kinds: dict[str, KindStats] = field(default_factory=lambda: {k: KindStats() for k in KINDS})
    auth_paused: bool = False
    """Stigg rejects the API key: flushing is paused, reports are kept."""
    leader: bool = False
    """This process currently flushes (always, without Redis)."""

    @property
    def usage(self) -> KindStats:
        return self.kinds["usage"]

    @property
    def event(self) -> KindStats:
        return self.kinds["event"]
