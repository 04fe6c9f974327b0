"""The background flusher: spooled reports to Stigg in rate-limited batches, none lost, none
counted twice.

One task per kind of report per process. It only sends while the spool says it may (always
with SQLite; while holding the flush lease with Redis), one call at a time, in acceptance
order, so reports for one usage key are applied in the order they were accepted.

Failures, by kind:

- unreachable, 5xx, timeout, unparseable answer: full-jitter exponential backoff, then the
  *same* batch again (same keys: Stigg counts a repeated key once);
- 429: the token bucket is emptied for a jittered, growing while (Stigg sends no Retry-After);
- 401/403: flushing pauses (one log line per pause), reports are kept, retried slowly;
- Stigg rejects the batch as invalid: it is split in halves until the rejected usage is alone,
  and only that one goes to the dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.backoff import full_jitter
from sidecar.config import UsageSettings
from sidecar.upstream import answers, documents
from sidecar.upstream.client import Upstream
from sidecar.upstream.documents import Operation
from sidecar.upstream.errors import (
    StiggError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify,
)
from sidecar.usage.batching import BatchBuilder, EventBatchBuilder, Pending, UsageBatchBuilder
from sidecar.usage.model import Kind
from sidecar.usage.rate_limit import TokenBucket
from sidecar.usage.spool import Batch, Spool, new_batch_id
from sidecar.usage.stats import UsageStats

log = logging.getLogger(__name__)


# How often a partial batch is topped up from the spool while it waits for its flush interval.
REFILL_SECONDS = 0.05


def _never(_: Mapping[str, Any]) -> bool:
    return False


# The flusher owns retries (behind its token bucket), so the client must not add its own calls.
REPORT_USAGE_BULK = dataclasses.replace(documents.REPORT_USAGE_BULK, retry_safe=_never)
REPORT_EVENT = dataclasses.replace(documents.REPORT_EVENT, retry_safe=_never)


class ConfirmedListener(Protocol):
    def __call__(self, measurements: Sequence[Mapping[str, Any]]) -> Awaitable[None]: ...


@dataclass(frozen=True)
class KindPolicy:
    """What differs between flushing usage and flushing raw events."""

    kind: Kind
    operation: Operation
    calls_per_minute: int
    max_items: int
    # The operation's variables for a batch's item payloads.
    variables: Callable[[list[Any]], dict[str, Any]]
    # An empty next batch, to be fed the pending reports in order.
    builder: Callable[[], BatchBuilder]
    # Stigg's answer read into the figures it confirms; raises ``UpstreamProtocolError`` when
    # it cannot be read (a failed call: the batch stays and is resent with the same keys).
    read: Callable[[Any], list[dict[str, Any]]]
    # Told what Stigg answered to a delivered batch (its figures reconcile the cache).
    reconcile: ConfirmedListener | None = None
    # Whether this flusher's lease shows in ``UsageStats.leader``.
    shows_leadership: bool = False


def usage_policy(settings: UsageSettings, reconcile: ConfirmedListener | None = None) -> KindPolicy:
    """``reportUsageBulk``: reports coalesced per usage key, Stigg's figures reconciled."""

    def builder() -> BatchBuilder:
        return UsageBatchBuilder(
            max_items=settings.max_batch_size,
            max_reports=settings.max_reports_per_batch,
            coalesce=settings.coalesce,
            window_seconds=settings.coalesce_window_seconds,
        )

    return KindPolicy(
        "usage",
        REPORT_USAGE_BULK,
        settings.calls_per_minute,
        settings.max_batch_size,
        lambda items: {"input": {"usages": items}},
        builder,
        answers.measurements,
        reconcile,
        shows_leadership=True,
    )


def event_policy(settings: UsageSettings) -> KindPolicy:
    """``reportEvent``: events sent as they are, each with its own key."""

    def builder() -> BatchBuilder:
        return EventBatchBuilder(max_items=settings.max_event_batch_size)

    return KindPolicy(
        "event",
        REPORT_EVENT,
        settings.event_calls_per_minute,
        settings.max_event_batch_size,
        lambda items: {"input": {"usageEvents": items}},
        builder,
        lambda _answer: [],  # reportEvent confirms no figures
    )


class _LostLease(Exception):
    """Another replica took over flushing; forget what this one had in hand."""


def is_rejection(exc: StiggError) -> bool:
    """Stigg refused the usage itself (unknown customer or feature, invalid): retrying the
    same items cannot succeed, so they are split out and dead-lettered."""
    return classify(exc) in ("not_found", "invalid")


class Flusher:
    """Sends one kind of spooled report to Stigg until stopped."""

    def __init__(
        self,
        policy: KindPolicy,
        *,
        spool: Spool,
        upstream: Upstream,
        settings: UsageSettings,
        stats: UsageStats,
        bucket: TokenBucket | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.kind = policy.kind
        self._policy = policy
        self._spool = spool
        self._upstream = upstream
        self._settings = settings
        self._stats = stats
        self._kind_stats = stats.kinds[policy.kind]
        self._bucket = bucket or TokenBucket(policy.calls_per_minute)
        self._clock = clock
        self._rng = rng
        self._fetch_limit = max(settings.max_reports_per_batch, policy.max_items)
        self._buffer: list[Pending] = []
        self._wake = asyncio.Event()
        self._draining = False
        self._resumed = False
        self._restart_fetch = True
        self._next_batch()
        self._task: asyncio.Task[None] | None = None

    # --- control ------------------------------------------------------------------------------

    def notify(self) -> None:
        """New reports were appended in this process."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"usage-flusher-{self.kind}")

    async def drain(self, seconds: float) -> bool:
        """Flush everything now (partial batches too) for at most ``seconds``; True
        when nothing was left. What is not sent stays spooled for the next start."""
        task = self._task
        if task is None:
            return True
        self._draining = True
        self._wake.set()
        try:
            await asyncio.wait_for(task, timeout=max(0.0, seconds))
        except TimeoutError:
            log.warning(
                "usage flusher (%s): shutdown deadline reached; unsent reports stay spooled",
                self.kind,
            )
            return False
        except Exception:  # noqa: BLE001 - run() logs its own failures
            return False
        return True

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if await self._step():
                    return
                failures = 0
            except _LostLease:
                log.info("usage flusher (%s): another replica took over flushing", self.kind)
                self._reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a spool failure must not end flushing
                failures += 1
                self._kind_stats.flush_failures["spool"] += 1
                if failures == 1 or failures & (failures - 1) == 0:
                    log.warning(
                        "usage flusher (%s): spool failure (%s: %s); retrying",
                        self.kind,
                        type(exc).__name__,
                        exc,
                    )
                # What is in memory may no longer match the store: start again from it.
                self._reset()
                await self._wait(self._backoff(failures))

    def _reset(self) -> None:
        self._buffer.clear()
        self._next_batch()
        self._resumed = False
        self._restart_fetch = True

    def _next_batch(self) -> None:
        """Start the next batch from the buffer's head (fed again as ``_ready`` runs)."""
        self._batch = self._policy.builder()
        self._fed = 0

    async def _wait(self, seconds: float | None, *, poll: bool = True) -> None:
        poll_interval = self._spool.poll_interval if poll else None
        if poll_interval is not None:
            seconds = poll_interval if seconds is None else min(seconds, poll_interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _step(self) -> bool:
        """One turn; True when draining and nothing is left."""
        if not await self._spool.acquire():
            if self.kind == "usage":
                self._stats.leader = False
            self._reset()
            if self._draining:
                return True
            # Standing by: try for the lease a few times per lease period, not at poll rate.
            await self._wait(self._settings.claim_idle_seconds / 3, poll=False)
            return False
        if self._policy.shows_leadership:
            self._stats.leader = True
        if not self._resumed:
            for batch in await self._spool.open_batches(self.kind):
                await self._deliver(batch)
            self._buffer.clear()
            self._next_batch()
            self._restart_fetch = True
            self._resumed = True
        room = self._fetch_limit - len(self._buffer)
        if room > 0:
            entries = await self._spool.fetch(self.kind, room, restart=self._restart_fetch)
            self._restart_fetch = False
            self._buffer.extend(Pending.decode(entry) for entry in entries)
        if not self._buffer:
            if self._draining:
                return True
            await self._wait(None if self._spool.poll_interval is not None else 60.0)
            return False
        ready = self._ready()
        if isinstance(ready, float):
            # A partial batch waits to fill up: look for more reports every REFILL_SECONDS
            # rather than at every append, each look being a round trip to the spool.
            await asyncio.sleep(min(ready, REFILL_SECONDS))
            return False
        batch, used = ready
        if not await self._spool.record_batch(batch):
            raise _LostLease
        del self._buffer[:used]
        await self._deliver(batch)
        return False

    def _ready(self) -> tuple[Batch, int] | float:
        """The batch to send now, or how long to wait for it to fill up. Each buffered report
        is fed to the batch once (again only after a batch was taken before it)."""
        batch = self._batch
        buffer = self._buffer
        while self._fed < len(buffer) and batch.add(buffer[self._fed]):
            self._fed += 1
        if not (self._draining or batch.full):
            wait = self._settings.flush_interval_seconds - (
                self._clock() - buffer[0].entry.accepted_at
            )
            if wait > 0:
                return wait
        ready = batch.build(new_batch_id()), batch.used
        self._next_batch()
        return ready

    # --- sending ------------------------------------------------------------------------------

    async def _deliver(self, batch: Batch) -> None:
        """Send ``batch`` until Stigg has all of it or has rejected the bad items."""
        queue = deque([batch])
        while queue:
            current = queue.popleft()
            rejection = await self._send(current)
            if rejection is None:
                continue
            if len(current.items) == 1:
                moved = await self._spool.dead_letter(
                    current, rejection.message, rejection.stigg_code, self._clock()
                )
                self._kind_stats.dead_lettered += moved
                log.warning(
                    "usage flusher (%s): Stigg rejected a %s (%s: %s); %d report(s) moved to"
                    " the dead letters (GET /v1/usage/dead-letters)",
                    self.kind,
                    self.kind,
                    rejection.stigg_code,
                    rejection.message,
                    moved,
                )
                continue
            parts = current.split()
            if not await self._spool.split_batch(current, parts):
                raise _LostLease
            queue.extendleft(reversed(parts))

    def _backoff(self, attempt: int) -> float:
        return full_jitter(
            attempt,
            self._settings.retry_backoff_seconds,
            self._settings.retry_backoff_max_seconds,
            self._rng,
        )

    async def _send(self, batch: Batch) -> StiggError | None:
        """Deliver ``batch`` once; None when acknowledged, the error when rejected as invalid."""
        operation = self._policy.operation
        variables = self._policy.variables([item.payload for item in batch.items])
        attempt = 0
        while True:
            await self._bucket.acquire()
            self._kind_stats.upstream_calls += 1
            try:
                result = await self._upstream.execute(operation, variables)
                # An answer we cannot read is a failed call: the batch stays and is resent
                # with the same keys (Stigg counts a repeated key once).
                confirmed = self._policy.read(result)
            except UpstreamAuthError:
                self._fail("auth")
                if not self._stats.auth_paused:
                    self._stats.auth_paused = True
                    log.error(  # noqa: TRY400 - an operator problem, not a traceback
                        "Stigg rejected the sidecar's API key: usage flushing is paused and"
                        " reports are kept; retrying every %.0f s (check STIGG_API_KEY)",
                        self._settings.auth_retry_seconds,
                    )
                await asyncio.sleep(self._settings.auth_retry_seconds)
                continue
            except StiggError as exc:
                if is_rejection(exc):
                    self._fail("rejected")
                    return exc
                self._fail("stigg_error", exc)
            except UpstreamRateLimited:
                self._fail("rate_limited")
                attempt += 1
                # No Retry-After from Stigg: the bucket stays empty for a growing, jittered time.
                self._bucket.penalize(
                    full_jitter(
                        attempt,
                        max(1.0, self._settings.retry_backoff_seconds),
                        max(1.0, self._settings.retry_backoff_max_seconds),
                        self._rng,
                    )
                )
                continue
            except UpstreamTimeout as exc:
                self._fail("timeout", exc)
            except UpstreamUnavailable as exc:
                self._fail("unavailable", exc)
            except UpstreamError as exc:
                self._fail("bad_response", exc)
            else:
                if self._stats.auth_paused:
                    self._stats.auth_paused = False
                    log.info("Stigg accepts the API key again: usage flushing resumed")
                await self._acknowledge(batch, confirmed)
                return None
            attempt += 1
            await asyncio.sleep(self._backoff(attempt))

    def _fail(self, kind: str, exc: UpstreamError | None = None) -> None:
        self._kind_stats.flush_failures[kind] += 1
        count = self._kind_stats.flush_failures[kind]
        if exc is not None and (count == 1 or count & (count - 1) == 0):
            log.warning(
                "usage flusher (%s): Stigg call failed (%s: %s, %d so far); reports kept,"
                " retrying with backoff",
                self.kind,
                kind,
                exc.message,
                count,
            )

    async def _acknowledge(self, batch: Batch, confirmed: list[dict[str, Any]]) -> None:
        attempt = 0
        while True:
            try:
                await self._spool.ack_batch(batch)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Stigg has it; a resend would be deduplicated
                attempt += 1
                self._kind_stats.flush_failures["spool"] += 1
                if attempt == 1:
                    log.warning(
                        "usage flusher (%s): cannot acknowledge a batch (%s)", self.kind, exc
                    )
                await asyncio.sleep(self._backoff(attempt))
        now = self._clock()
        stats = self._kind_stats
        stats.batches += 1
        stats.items_sent += len(batch.items)
        stats.batch_sizes.observe(len(batch.items))
        for item in batch.items:
            for _, accepted_at in item.sources:
                stats.delivered += 1
                stats.delivery_seconds.observe(max(0.0, now - accepted_at))
        reconcile = self._policy.reconcile
        if reconcile is not None and confirmed:
            try:
                await reconcile(confirmed)
            except Exception:
                log.exception("usage listener failed on confirmed usage")
