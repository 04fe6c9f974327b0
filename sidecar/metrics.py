"""Every Prometheus metric the sidecar exports, on one registry per app.

State the services already keep (check counts, cache size, breaker state, realtime link, usage
counts, spool depth) is read at scrape time by ``_StateCollector``: nothing on the hot path
increments a Prometheus object for it. Only what exists at the HTTP layer (requests by route and
status, their latency) and per upstream call attempt (``StiggClient.observer``) is counted as it
happens. No label carries a customer, feature or raw path: cardinality stays bounded.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.entitlements.service import CHECK_DECISIONS, CHECK_RESULTS
from sidecar.upstream import answers
from sidecar.upstream.client import OUTCOMES
from sidecar.upstream.documents import ALL_OPERATIONS, ON_ENTITLEMENTS_UPDATED, ON_USAGE_UPDATED
from sidecar.usage.model import KINDS
from sidecar.usage.stats import Histogram as StatsHistogram

if TYPE_CHECKING:
    from sidecar.services import Services
    from sidecar.upstream.realtime import RealtimeListener
    from sidecar.usage.spool import Depth

log = logging.getLogger(__name__)

# A ``_created`` series per counter and histogram doubles the output for nothing a dashboard
# uses (process-wide: the sidecar's only registries are these).
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "stigg_sidecar"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From 0.1 ms: an L1 hit is answered in well under a millisecond.
HTTP_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
SUBSCRIPTIONS = (ON_ENTITLEMENTS_UPDATED.root_field, ON_USAGE_UPDATED.root_field)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Operations sent over HTTP (subscriptions travel on the realtime websocket), and the raw
# GraphQL passthrough.
UPSTREAM_OPERATIONS = (
    *(
        op.root_field
        for op in ALL_OPERATIONS
        if op not in (ON_ENTITLEMENTS_UPDATED, ON_USAGE_UPDATED)
    ),
    "graphql",
)
FLUSH_FAILURE_REASONS = (
    "unavailable",
    "timeout",
    "rate_limited",
    "auth",
    "rejected",
    "bad_response",
    "spool",
)
# (metric name, help, KindStats attribute)
_USAGE_COUNTERS = (
    ("usage_reports_accepted", "Reports durably spooled (answered 202).", "accepted"),
    ("usage_reports_duplicate", "Reports already accepted (client key).", "duplicates"),
    ("usage_reports_rejected", "Reports refused with 503: the spool was full.", "rejected_full"),
    (
        "usage_reports_not_replicated",
        "Reports stored but answered 503: fewer replicas than redis.minReplicasAck held them.",
        "not_replicated",
    ),
    ("usage_reports_flushed", "Reports Stigg acknowledged.", "delivered"),
    ("usage_dead_letters", "Reports dead-lettered (Stigg rejected them).", "dead_lettered"),
    ("usage_reports_replayed", "Dead letters put back in the queue.", "replayed"),
    ("usage_reports_claimed", "Reports taken over from a replica presumed dead.", "claimed"),
    ("usage_upstream_calls", "Flush calls to Stigg, whatever their outcome.", "upstream_calls"),
    ("usage_batches_flushed", "Flush calls Stigg acknowledged.", "batches"),
)
SPOOL_DEPTH_TIMEOUT_SECONDS = 1.0


class LatencyCounts:
    """One series' answers by outcome (an HTTP status, a gRPC code): how many, and their
    latency in buckets.

    Plain numbers that the scrape reads: a Prometheus child's lock and its loop over the
    buckets cost more than the rest of a cached check's own work.
    """

    __slots__ = ("by_outcome",)

    def __init__(self) -> None:
        # outcome -> [sum of seconds, then one count per bucket of HTTP_BUCKETS and +Inf]
        self.by_outcome: dict[str, list[float]] = {}

    def observe(self, outcome: str, seconds: float) -> None:
        row = self.by_outcome.get(outcome)
        if row is None:
            row = self.by_outcome[outcome] = [0.0] * (len(HTTP_BUCKETS) + 2)
        row[0] += seconds
        row[1 + bisect.bisect_left(HTTP_BUCKETS, seconds)] += 1


class RequestFamily(Collector):
    """``<PREFIX>_<stem>_requests_total`` and ``..._request_duration_seconds``: requests by
    ``labels`` and outcome, counted in ``LatencyCounts`` and read at scrape time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        stem: str,
        what: str,
        labels: Sequence[str],
        outcome: str,
    ) -> None:
        """``what``: the requests, for the help texts (``HTTP requests to the API``)."""
        self._stem = f"{PREFIX}_{stem}"
        self._what = what
        self._labels = [*labels, outcome]
        self._series: dict[tuple[str, ...], LatencyCounts] = {}
        registry.register(self)

    def counts(self, *labels: str) -> LatencyCounts:
        """Where one series' answers are counted (resolve it once, observe it often)."""
        counts = self._series.get(labels)
        if counts is None:
            counts = self._series[labels] = LatencyCounts()
        return counts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        by = ", ".join(self._labels)
        requests = CounterMetricFamily(
            f"{self._stem}_requests", f"{self._what}, by {by}.", labels=self._labels
        )
        duration = HistogramMetricFamily(
            f"{self._stem}_request_duration_seconds",
            f"Time to answer {self._what}, by {by}.",
            labels=self._labels,
        )
        for labels, counts in list(self._series.items()):
            for outcome, row in list(counts.by_outcome.items()):
                values = [*labels, outcome]
                requests.add_metric(values, sum(int(n) for n in row[1:]))
                _add_buckets(duration, values, HTTP_BUCKETS, row[1:], row[0])
        yield requests
        yield duration


@dataclass
class _Scraped:
    """Async-only state, read by the /metrics handler just before the registry is collected."""

    depth: Depth | None = None
    at: float = 0.0


class Metrics:
    """One app's metrics; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self, services: Callable[[], Services | None]) -> None:
        """``services`` finds the app's services (None until they are built)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.services = services
        self._scraped = _Scraped()
        self.upstream_requests = Counter(
            f"{PREFIX}_upstream_requests",
            "Call attempts to Stigg by operation and outcome (circuit_open: not sent).",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Time of one call attempt to Stigg, by operation and outcome.",
            ["operation", "outcome"],
            buckets=UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        build = Gauge(
            f"{PREFIX}_build_info",
            "Always 1; the labels say which sidecar runs on which Python.",
            ["version", "python"],
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        for operation in UPSTREAM_OPERATIONS:
            for outcome in OUTCOMES:
                self.upstream_requests.labels(operation, outcome)
            # Latency pre-initialised for successes only: every outcome would be ~1000 series.
            self.upstream_duration.labels(operation, "success")
        self.http = RequestFamily(
            self.registry,
            "http",
            "HTTP requests to the app-facing API",
            ("route", "method"),
            "status",
        )
        self.registry.register(_StateCollector(self))

    def observe_upstream(self, operation: str, outcome: str, seconds: float) -> None:
        """One call attempt to Stigg (``StiggClient.observer``)."""
        self.upstream_requests.labels(operation, outcome).inc()
        if outcome != "circuit_open":
            self.upstream_duration.labels(operation, outcome).observe(seconds)

    # --- scrape --------------------------------------------------------------------------

    async def render(self) -> bytes:
        """The text exposition; reads the spool's depth first (bounded, even with Redis down)."""
        services = self.services()
        self._scraped.depth = None
        if services is not None:
            try:
                self._scraped.depth = await asyncio.wait_for(
                    services.usage.spool.depth(), SPOOL_DEPTH_TIMEOUT_SECONDS
                )
            except Exception as exc:  # noqa: BLE001 - metrics must answer while Redis is down
                log.debug("metrics: spool depth unavailable: %s", type(exc).__name__)
            self._scraped.at = time.time()
        return generate_latest(self.registry)


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: StatsHistogram) -> None:
    _add_buckets(family, labels, histogram.buckets, histogram.counts, histogram.sum)


def _add_buckets(
    family: HistogramMetricFamily,
    labels: list[str],
    bounds: Sequence[float],
    counts: Iterable[float],
    total: float,
) -> None:
    """One series of ``family`` from per-bucket ``counts`` (one per bound, then +Inf)."""
    names = [*(str(float(bound)) for bound in bounds), "+Inf"]
    cumulative = itertools.accumulate(int(count) for count in counts)
    family.add_metric(labels, list(zip(names, cumulative, strict=True)), total)


class _StateCollector(Collector):
    """Reads the services' own counts and states at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # names are only known once collected; skip the registry's duplicate check

    def collect(self) -> Iterator[Metric]:
        services = self._metrics.services()
        if services is not None:
            yield from self._entitlements(services)
            yield from self._usage(services)
            yield from self._breaker(services)
        yield from self._realtime(services.realtime if services is not None else None)
        yield self._unexpected_answers()

    def _unexpected_answers(self) -> Metric:
        family = _counter(
            "upstream_unexpected_answers",
            "Values in Stigg's answers that differ from its schema (unknown enum value, wrong"
            " type, missing field, partial data), replaced by safe defaults; by operation.",
            ["operation"],
        )
        counts = answers.DRIFT.counts
        sent = (op for op in UPSTREAM_OPERATIONS if op != "graphql")  # passthrough: not read
        for operation in dict.fromkeys((*sent, *SUBSCRIPTIONS, *counts)):
            family.add_metric([operation], counts.get(operation, 0))
        return family

    def _entitlements(self, services: Services) -> Iterator[Metric]:
        entitlements = services.entitlements
        stats = entitlements.stats
        checks = _counter(
            "entitlement_checks",
            "Entitlement checks by result (hit, miss, stale, fallback) and decision.",
            ["result", "decision"],
        )
        for result in CHECK_RESULTS:
            for decision in CHECK_DECISIONS:
                checks.add_metric([result, decision], stats.by_result[result, decision])
        yield checks
        fallbacks = _counter(
            "entitlement_fallbacks",
            "Answers from the fallback chain, by source (request, config, default).",
            ["source"],
        )
        for source, count in stats.fallbacks.items():
            fallbacks.add_metric([source], count)
        yield fallbacks
        fetches = _counter("entitlement_fetches", "Entitlement state fetches from Stigg.")
        fetches.add_metric([], stats.fetches)
        yield fetches
        failures = _counter(
            "entitlement_fetch_failures", "Entitlement state fetches from Stigg that failed."
        )
        failures.add_metric([], stats.fetch_failures)
        yield failures
        l2_errors = _counter("cache_l2_errors", "Redis (L2) cache operations that failed.")
        l2_errors.add_metric([], entitlements.store.faults.count)
        yield l2_errors
        entries = _gauge("cache_entries", "Entitlement states cached, by level.", ["level"])
        entries.add_metric(["l1"], len(entitlements.l1))
        yield entries
        size = _gauge(
            "cache_bytes",
            "Approximate bytes of cached state, by level (answers: rendered check answers).",
            ["level"],
        )
        size.add_metric(["l1"], entitlements.l1.bytes_used)
        size.add_metric(["answers"], entitlements.answers_bytes)
        yield size

    def _breaker(self, services: Services) -> Iterator[Metric]:
        health = services.upstream.health()
        state = _gauge(
            "circuit_breaker_state",
            "Circuit breaker to Stigg: 0 closed, 1 open (failing fast), 2 half-open (probing).",
        )
        state.add_metric([], health.breaker.value)
        yield state
        last = health.last_answer_at
        age = _gauge(
            "upstream_last_answer_age_seconds",
            "Seconds since Stigg last answered (absent until it has answered once).",
        )
        if last is not None:
            age.add_metric([], max(0.0, time.monotonic() - last))
        yield age

    def _realtime(self, listener: RealtimeListener | None) -> Iterator[Metric]:
        connected = _gauge(
            "realtime_connected", "1 while the realtime link to Stigg is up (0 when disabled)."
        )
        connected.add_metric([], 1 if listener is not None and listener.connected else 0)
        yield connected
        last = _gauge(
            "realtime_last_update_timestamp_seconds",
            "Unix time of the last realtime update applied (absent until the first).",
        )
        if listener is not None and listener.last_update_at is not None:
            last.add_metric([], listener.last_update_at)
        yield last
        updates = _counter("realtime_updates", "Realtime updates received from Stigg.")
        updates.add_metric([], 0 if listener is None else listener.updates)
        yield updates

    def _usage(self, services: Services) -> Iterator[Metric]:
        stats = services.usage.stats
        for name, doc, attribute in _USAGE_COUNTERS:
            family = _counter(name, doc + " By kind (usage, event).", ["kind"])
            for kind in KINDS:
                family.add_metric([kind], getattr(stats.kinds[kind], attribute))
            yield family
        failures = _counter(
            "usage_flush_failures", "Failed flush calls by kind and reason.", ["kind", "reason"]
        )
        for kind in KINDS:
            seen = stats.kinds[kind].flush_failures
            for reason in sorted({*FLUSH_FAILURE_REASONS, *seen}):
                failures.add_metric([kind, reason], seen.get(reason, 0))
        yield failures
        sizes = HistogramMetricFamily(
            f"{PREFIX}_usage_flush_batch_size",
            "Reports per acknowledged flush call, by kind.",
            labels=["kind"],
        )
        delivery = HistogramMetricFamily(
            f"{PREFIX}_usage_delivery_duration_seconds",
            "From a report's acceptance to Stigg's acknowledgement, by kind.",
            labels=["kind"],
        )
        for kind in KINDS:
            _histogram(sizes, [kind], stats.kinds[kind].batch_sizes)
            _histogram(delivery, [kind], stats.kinds[kind].delivery_seconds)
        yield sizes
        yield delivery
        leader = _gauge("usage_flush_leader", "1 while this replica flushes the spool.")
        leader.add_metric([], int(stats.leader))
        yield leader
        paused = _gauge("usage_auth_paused", "1 while Stigg rejects the API key (flush paused).")
        paused.add_metric([], int(stats.auth_paused))
        yield paused
        yield from self._spool(services)

    def _spool(self, services: Services) -> Iterator[Metric]:
        scraped = self._metrics._scraped
        depth = scraped.depth
        up = _gauge("usage_spool_up", "1 when the spool answered this scrape (Redis reachable).")
        up.add_metric([], int(depth is not None))
        yield up
        full = _gauge("usage_spool_full", "1 while the spool's disk is full (new reports get 503).")
        full.add_metric([], int(services.usage.spool.disk_full))
        yield full
        durable = _gauge(
            "usage_spool_durable",
            "1 when an accepted report survives a spool restart (0: Redis without AOF).",
        )
        durable.add_metric([], int(services.usage.spool.durable))
        yield durable
        reports = _gauge("usage_spool_depth", "Reports waiting in the spool, by kind.", ["kind"])
        oldest = _gauge(
            "usage_spool_oldest_age_seconds",
            "Age of the oldest waiting report, by kind (0 when none waits).",
            ["kind"],
        )
        size = _gauge("usage_spool_bytes", "Bytes of reports waiting in the spool.")
        dead = _gauge("usage_spool_dead_letters", "Dead letters kept in the spool.")
        if depth is not None:
            for kind in KINDS:
                reports.add_metric([kind], depth.reports.get(kind, 0))
                at = depth.oldest_accepted_at.get(kind)
                oldest.add_metric([kind], 0.0 if at is None else max(0.0, scraped.at - at))
            size.add_metric([], depth.bytes)
            dead.add_metric([], depth.dead_letters)
        yield from (reports, oldest, size, dead)
