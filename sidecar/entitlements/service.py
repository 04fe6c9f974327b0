"""Entitlement checks answered from a two-level cache, with single-flight fetches from Stigg
and a fallback chain for when Stigg is slow or down.

Hot path: an L1 hit on fresh state is a dict lookup and a local evaluation, no await.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.cache.replication import Invalidate, Replication, UsageConfirmed, UsageCounted
from sidecar.cache.store import CacheEntry, CacheKey, LocalStore
from sidecar.cache.tiered import TieredCache
from sidecar.config import CacheSettings, EntitlementSettings, FeatureFallback
from sidecar.entitlements.fallback import fallback_answer
from sidecar.entitlements.model import (
    CUSTOMER_NOT_FOUND,
    CheckRequest,
    EntitlementsState,
    FeatureEntitlement,
    evaluate,
)
from sidecar.updates import UsageChange, UsageFigure, UsageUpdate
from sidecar.upstream import answers, documents
from sidecar.upstream.client import Upstream
from sidecar.upstream.errors import StiggError, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

# Rendered answers kept for the hottest checks (about 0.5 KiB each: ~10 MiB at most).
RENDERED_ANSWERS = 20_000
# A check answered from a rendered answer refreshes its entry's place in L1's LRU at most
# this often.
LRU_TOUCH_SECONDS = 1.0
# Per rendered answer beyond its bytes: the record, its token and the dict slot.
RENDERED_OVERHEAD_BYTES = 300


# hit: answered from the cache (L1 or L2) without waiting; miss: waited for Stigg;
# stale: Stigg failed or was too slow and expired state answered; fallback: nothing cached.
CHECK_RESULTS = ("hit", "miss", "stale", "fallback")
CHECK_DECISIONS = ("granted", "denied")


@dataclass
class CheckStats:
    """Counts behind the entitlement metrics."""

    hits: int = 0  # fresh L1
    l2_hits: int = 0
    misses: int = 0  # answered after waiting for Stigg
    stale: int = 0
    fallbacks: dict[str, int] = field(
        default_factory=lambda: {"request": 0, "config": 0, "default": 0}
    )
    granted: int = 0
    denied: int = 0
    fetches: int = 0
    fetch_failures: int = 0
    by_result: dict[tuple[str, str], int] = field(
        default_factory=lambda: {(r, d): 0 for r in CHECK_RESULTS for d in CHECK_DECISIONS}
    )
    """Checks by (result, decision): the ``stigg_sidecar_entitlement_checks_total`` series."""


class EntitlementService:
    """Answers checks from L1 (memory), L2 (Redis, optional) or Stigg, in that order."""

    def __init__(
        self,
        upstream: Upstream,
        cache: CacheSettings,
        settings: EntitlementSettings,
        *,
        store: TieredCache[EntitlementsState],
        replication: Replication | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._upstream = upstream
        self._cache = cache
        self._settings = settings
        self.store = store
        # The hot path reads L1 directly (through its protocol): one call less per check.
        self._l1 = store.l1
        self._replication = replication
        self._clock = clock
        self._inflight: dict[CacheKey, _Flight] = {}
        # Bumped when a customer changes while a fetch for it is in flight, so that fetch
        # (which may carry the state from before the change) is not stored. Only customers
        # with fetches in flight have an entry.
        self._generation: dict[str, int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Rendered answers to plain checks on fresh state, by token (``check_rendered``).
        self._answers: dict[Hashable, _Rendered] = {}
        self.answers_bytes = 0
        # Set when a fetch misses a check's deadline, cleared by the next successful fetch.
        self._upstream_slow = False
        self.stats = CheckStats()

    # --- checks --------------------------------------------------------------------------

    async def check(
        self, request: CheckRequest, request_fallback: FeatureFallback | None = None
    ) -> dict[str, Any]:
        """One feature's answer; never raises for Stigg failures (the fallback chain answers)."""
        key = (request.customer_id, request.resource_id)
        now = self._clock()
        entry = self._l1.get_nowait(key)
        if entry is not None and entry.is_fresh(now):
            self._hit(key, entry, now)
            return self._count(evaluate(entry.value, request, now), "hit")
        state, source, stale = await self._resolve(key, entry)
        now = self._clock()
        if state is not None:
            result = "hit" if source == "cache" else "miss"
            return self._count(evaluate(state, request, now, source), result)
        if stale is not None:
            self.stats.stale += 1
            return self._count(evaluate(stale, request, now, "stale"), "stale")
        return self._count(self._fallback(request, request_fallback, source), "fallback")

    async def check_json(self, request: CheckRequest, token: Hashable | None = None) -> bytes:
        """``check`` as JSON: the hot path of the REST API (``token``: see ``check_rendered``)."""
        return await self.check_rendered(request, orjson.dumps, token)

    def answer_cached(self, token: Hashable) -> bytes | None:
        """The bytes rendered for ``token`` by ``check_rendered``, if L1 has not changed since
        and the state they came from is still fresh; else None (then ask ``check_rendered``).

        The hot path of a warm check: one dict lookup, two comparisons, no parsing.
        """
        known = self._answers.get(token)
        if known is None or known.generation != self._l1.generation:
            return None
        now = self._clock()
        entry = known.entry
        if not entry.is_fresh(now):
            return None
        if now - known.touched_at > LRU_TOUCH_SECONDS:
            # Keep the entry's place in L1's LRU: it is in use, though not read through L1.
            known.touched_at = now
            self._l1.get_nowait(known.key)
        self._hit(known.key, entry, now)
        self._tally(known.has_access, "hit")
        return known.body

    async def check_rendered(
        self,
        request: CheckRequest,
        render: Callable[[dict[str, Any]], bytes],
        token: Hashable | None = None,
    ) -> bytes:
        """``render(check(request))``; a plain check (no requested usage or values) on fresh
        cached state keeps the bytes under ``token`` (default: the check and ``render``) for
        ``answer_cached``. REST passes the raw query string: a repeated query then skips its
        parsing too. ``token`` must stand for exactly this ``request`` and ``render``."""
        if request.requested_usage is not None or request.requested_values is not None:
            return render(await self.check(request))
        if token is None:
            token = (request.customer_id, request.resource_id, request.feature_id, render)
            body = self.answer_cached(token)
            if body is not None:
                return body
        key = (request.customer_id, request.resource_id)
        now = self._clock()
        entry = self._l1.get_nowait(key)
        if entry is None or not entry.is_fresh(now):
            return render(await self.check(request))
        self._hit(key, entry, now)
        answer = evaluate(entry.value, request, now)
        body = render(answer)
        self._tally(answer["hasAccess"], "hit")
        self._remember(token, _Rendered(self._l1.generation, entry, key, body, answer, now))
        return body

    def _remember(self, token: Hashable, rendered: _Rendered) -> None:
        answers = self._answers
        if token not in answers and len(answers) >= RENDERED_ANSWERS:
            # Oldest first (dicts keep insertion order): cheaper than an LRU on every hit.
            oldest = next(iter(answers))
            self.answers_bytes -= answers.pop(oldest).size
        else:
            previous = answers.get(token)
            if previous is not None:
                self.answers_bytes -= previous.size
        answers[token] = rendered
        self.answers_bytes += rendered.size

    def peek(self, request: CheckRequest) -> dict[str, Any] | None:
        """The answer from this replica's memory alone, None when nothing is cached: for
        replies that may show the current usage but must not wait for Stigg."""
        entry = self.l1.get_nowait((request.customer_id, request.resource_id))
        return None if entry is None else evaluate(entry.value, request, self._clock())

    @property
    def l1(self) -> LocalStore[EntitlementsState]:
        """This replica's memory cache (its size is a metric and a readiness reason)."""
        return self._l1

    def _hit(self, key: CacheKey, entry: CacheEntry[EntitlementsState], now: float) -> None:
        self.stats.hits += 1
        refresh_due = entry.fresh_until - now < self._cache.refresh_ahead_seconds
        if refresh_due and _servable_when_stale(entry):  # not for "customer not found"
            self._refresh_soon(key)

    async def list(self, customer_id: str, resource_id: str | None) -> dict[str, Any]:
        """All of the customer's entitlements (config fallbacks when nothing else can answer)."""
        state, source = await self.snapshot(customer_id, resource_id)
        if state is None:
            return self._fallback_list(customer_id, resource_id, source)
        return _listing(state, resource_id, self._clock(), source)

    async def snapshot(
        self, customer_id: str, resource_id: str | None
    ) -> tuple[EntitlementsState | None, str]:
        """The customer's state and its source (cache, upstream or stale), through the same
        cache, single-flight and stale fallback as checks; None when nothing can answer, with
        why (an ``UpstreamError`` code) as the source."""
        key = (customer_id, resource_id)
        now = self._clock()
        entry = self._l1.get_nowait(key)
        if entry is not None and entry.is_fresh(now):
            self._hit(key, entry, now)
            return entry.value, "cache"
        fetched, source, stale = await self._resolve(key, entry)
        if fetched is not None:
            return fetched, source
        if stale is not None:
            return stale, "stale"
        return None, source

    async def reload(self, customer_id: str, resource_id: str | None) -> dict[str, Any]:
        """Fetch the customer's state from Stigg now (errors propagate: the caller asked)."""
        await self.invalidate(customer_id, refresh=False)
        state = await self._fetch((customer_id, resource_id)).task
        return _listing(state, resource_id, self._clock(), "upstream")

    def _count(self, answer: dict[str, Any], result: str) -> dict[str, Any]:
        self._tally(answer["hasAccess"], result)
        return answer

    def _tally(self, has_access: bool, result: str) -> None:
        stats = self.stats
        if has_access:
            stats.granted += 1
            stats.by_result[result, "granted"] += 1
        else:
            stats.denied += 1
            stats.by_result[result, "denied"] += 1

    async def _resolve(
        self, key: CacheKey, entry: CacheEntry[EntitlementsState] | None
    ) -> tuple[EntitlementsState | None, str, EntitlementsState | None]:
        """(fresh state, its source, usable stale state) after L2 and Stigg were asked; without
        fresh state, the source is why (an ``UpstreamError`` code): a fallback says so."""
        # Nothing fresh in L1: another replica may have put fresh state in L2.
        shared = await self.store.get_shared(key)
        if shared is not None and (entry is None or shared.is_fresh(self._clock())):
            entry = shared
            if entry.is_fresh(self._clock()):
                self.stats.l2_hits += 1
                return entry.value, "cache", None
        stale = entry.value if entry is not None and _servable_when_stale(entry) else None
        flight = self._fetch(key)
        if stale is not None and self._upstream_slow:
            # Stigg just missed a deadline: answer stale now rather than wait for it again;
            # the fetch goes on in the background and the first success ends this mode.
            return None, "upstream", stale
        try:
            state = await flight.wait(self._settings.check_deadline_seconds)
        except TimeoutError:
            self._upstream_slow = True
            return None, UpstreamTimeout.code, stale  # the fetch goes on and fills the cache
        except UpstreamError as exc:
            return None, exc.code, stale
        self.stats.misses += 1
        return state, "upstream", None

    def _fallback(
        self, request: CheckRequest, request_fallback: FeatureFallback | None, reason: str
    ) -> dict[str, Any]:
        fallback: FeatureFallback | None = request_fallback
        source = "request"
        if fallback is None:
            fallback, source = self._settings.fallback.get(request.feature_id), "config"
        answer = fallback_answer(request, fallback, self._settings.default_has_access, source)
        answer["fallbackReason"] = reason
        self.stats.fallbacks[answer["source"]] += 1
        return answer

    def _fallback_list(
        self, customer_id: str, resource_id: str | None, reason: str
    ) -> dict[str, Any]:
        fallbacks = [
            self._fallback(CheckRequest(customer_id, feature_id, resource_id), None, reason)
            for feature_id in self._settings.fallback
        ]
        return {
            "customerId": customer_id,
            "resourceId": resource_id,
            "accessDeniedReason": None,
            "isFallback": True,
            "fallbackReason": reason,
            "source": "config",
            "entitlements": fallbacks,
        }

    # --- fetching ------------------------------------------------------------------------

    def _fetch(self, key: CacheKey) -> _Flight:
        """The one in-flight fetch for ``key`` (single-flight: concurrent misses share it)."""
        flight = self._inflight.get(key)
        if flight is None:
            flight = _Flight(_start(self._load(key)))
            self._inflight[key] = flight
            flight.task.add_done_callback(lambda done: self._fetched(key, flight))
        return flight

    def _fetched(self, key: CacheKey, flight: _Flight) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        if not any(k[0] == key[0] for k in self._inflight):
            self._generation.pop(key[0], None)
        task = flight.task
        if not task.cancelled() and task.exception() is not None:
            self.stats.fetch_failures += 1

    def _refresh_soon(self, key: CacheKey) -> None:
        if key not in self._inflight:
            self._fetch(key)

    async def _load(self, key: CacheKey) -> EntitlementsState:
        customer_id, resource_id = key
        generation = self._generation.get(customer_id, 0)
        query: dict[str, Any] = {"customerId": customer_id}
        if resource_id is not None:
            query["resourceId"] = resource_id
        self.stats.fetches += 1
        try:
            raw = await self._upstream.execute(documents.ENTITLEMENTS_STATE, {"query": query})
        except StiggError as exc:
            # Stigg may say "not found" as an error instead of a denial: the same answer.
            if exc.stigg_code != CUSTOMER_NOT_FOUND:
                raise
            raw = {"accessDeniedReason": CUSTOMER_NOT_FOUND, "entitlements": []}
        self._upstream_slow = False
        answer = answers.entitlements_state(raw)
        state = EntitlementsState.from_stigg(customer_id, resource_id, answer, self._clock())
        if self._generation.get(customer_id, 0) == generation:
            await self._store(key, state)
        return state

    def _entry(self, state: EntitlementsState) -> CacheEntry[EntitlementsState]:
        now = state.fetched_at
        if state.access_denied_reason == CUSTOMER_NOT_FOUND:
            # Briefly, and never served stale: the customer may be created any moment.
            until = now + self._cache.negative_ttl_seconds
            return CacheEntry(state, until, until)
        fresh_until = now + self._cache.fresh_ttl_seconds
        # A usage period that ends makes the state due for a refresh right then.
        for entitlement in state.entitlements.values():
            end = entitlement.usage_period_end
            if end is not None and now < end < fresh_until:
                fresh_until = end
        stale_until = max(fresh_until, now + self._cache.max_stale_seconds)
        return CacheEntry(state, fresh_until, stale_until)

    async def _store(self, key: CacheKey, state: EntitlementsState) -> None:
        await self.store.set(key, self._entry(state))

    # --- invalidation and updates --------------------------------------------------------

    def _changed(self, customer_id: str) -> None:
        if any(key[0] == customer_id for key in self._inflight):
            self._generation[customer_id] = self._generation.get(customer_id, 0) + 1

    async def invalidate(
        self, customer_id: str, *, refresh: bool = True, broadcast: bool = True
    ) -> None:
        """Drop the customer's state everywhere (all resources) and, if asked, refetch it."""
        self._changed(customer_id)
        resources = self.store.resources_of(customer_id)
        await self.store.delete_customer(customer_id)
        if broadcast:
            await self._publish(Invalidate(customer_id))
        if refresh:
            for resource_id in resources or {None}:
                self._spawn(self._quiet_refresh((customer_id, resource_id)))

    def drop_local(self, customer_id: str) -> None:
        """Another replica changed this customer: forget our L1 copy (L2 has the new one)."""
        self._changed(customer_id)
        self.store.drop_local(customer_id)

    def drop_all_local(self) -> None:
        """After missed cross-replica events: mark all of L1 for a refresh (from L2 or Stigg)
        without discarding it. Redis may have restarted empty, and stale beats a default."""
        for customer_id in {key[0] for key in self._inflight}:
            self._changed(customer_id)
        self.store.expire_local(self._clock())

    async def _quiet_refresh(self, key: CacheKey) -> None:
        try:
            await self._fetch(key).task
        except UpstreamError as exc:
            log.info("refresh of %s after invalidation failed: %s", key[0], exc.code)

    async def apply_state(
        self, customer_id: str, resource_id: str | None, raw: Mapping[str, Any]
    ) -> None:
        """A pushed ``entitlementsUpdated``: the customer's new state, stored as fresh."""
        self._changed(customer_id)
        state = EntitlementsState.from_stigg(customer_id, resource_id, raw, self._clock())
        await self._store((customer_id, resource_id), state)
        await self._publish(Invalidate(customer_id))

    # --- usage ---------------------------------------------------------------------------

    async def apply_usage(self, updates: Iterable[UsageUpdate], *, publish: bool = True) -> int:
        """Count usage in the cached state: reports just accepted (``UsageChange``) and
        Stigg's own figures (``UsageFigure``); with ``publish``, every replica counts them too.
        A check right after a report sees it without waiting for the flush to Stigg.
        Returns how many updates found their feature cached."""
        changes: list[UsageChange] = []
        figures: list[UsageFigure] = []
        applied = 0
        for update in updates:
            if isinstance(update, UsageChange):
                changes.append(update)
                applied += self._count_change(update)
            else:
                figures.append(update)
                applied += self._reconcile(update)
        if publish and changes:
            await self._publish(UsageCounted(tuple(changes)))
        if publish and figures:
            await self._publish(UsageConfirmed(tuple(figures)))
        return applied

    def _count_change(self, change: UsageChange) -> bool:
        found = self._cached_entitlement(change.customer_id, change.resource_id, change.feature_id)
        if found is None or not found[1].is_metered:
            return False
        entry, old = found
        value = change.value
        usage = value if change.behavior == "SET" else (old.current_usage or 0.0) + value
        self._put(entry, old.with_usage(usage))
        return True

    def _reconcile(self, figure: UsageFigure) -> bool:
        found = self._cached_entitlement(figure.customer_id, figure.resource_id, figure.feature_id)
        if found is None:
            return False
        entry, old = found
        usage = figure.current_usage
        start = figure.period_start
        same_period = start is None or start == old.usage_period_start
        incremental = old.meter_type == "Incremental"
        if figure.answers_batch and incremental and same_period and old.current_usage is not None:
            # Stigg's answer to a batch predates reports accepted since, which are counted
            # here already: taking its figure as is would forget them until they are sent.
            usage = max(usage, old.current_usage)
        changes: dict[str, Any] = {"current_usage": usage}
        if start is not None:
            changes["usage_period_start"] = start
        if figure.period_end is not None:
            changes["usage_period_end"] = figure.period_end
        self._put(entry, dataclasses.replace(old, **changes))
        return True

    def _cached_entitlement(
        self, customer_id: str, resource_id: str | None, feature_id: str
    ) -> tuple[CacheEntry[EntitlementsState], FeatureEntitlement] | None:
        entry = self._l1.get_nowait((customer_id, resource_id))
        if entry is None:
            return None
        old = entry.value.entitlements.get(feature_id)
        return None if old is None else (entry, old)

    def _put(self, entry: CacheEntry[EntitlementsState], updated: FeatureEntitlement) -> None:
        state = entry.value.with_entitlement(updated)
        self.store.set_local(
            (state.customer_id, state.resource_id),
            CacheEntry(state, entry.fresh_until, entry.stale_until),
        )

    async def _publish(self, event: Invalidate | UsageCounted | UsageConfirmed) -> None:
        if self._replication is not None:
            await self._replication.publish(event)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Cancel background fetches (shutdown)."""
        tasks = [*self._background, *(flight.task for flight in self._inflight.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _start(fetch: Coroutine[Any, Any, EntitlementsState]) -> asyncio.Task[EntitlementsState]:
    """A task for ``fetch``; from Python 3.12 started at once (eagerly), so in a stampede the
    request to Stigg leaves before the other checks have even been parked."""
    if sys.version_info >= (3, 12):
        return asyncio.Task(fetch, eager_start=True)
    return asyncio.ensure_future(fetch)


class _Flight:
    """One fetch and the checks waiting for it, each with its own deadline.

    A thousand checks on one cold customer park on plain futures in one queue, with one timer
    for the earliest deadline; the fetch's end answers them all in one pass. (Per check, a
    callback on the task and a timer of its own cost a thousand removals from the task's
    callback list and a thousand timers.)
    """

    __slots__ = ("_timer", "_waiters", "task")

    def __init__(self, task: asyncio.Task[EntitlementsState]) -> None:
        self.task = task
        # (deadline, future) in the order the checks came; deadlines are too, as every check
        # waits the same check_deadline_seconds.
        self._waiters: deque[tuple[float, asyncio.Future[EntitlementsState]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        task.add_done_callback(self._finished)

    def wait(self, seconds: float) -> asyncio.Future[EntitlementsState]:
        """The fetch's result within ``seconds`` (else ``TimeoutError``); the fetch itself goes
        on after a timeout or a cancelled check."""
        loop = self.task.get_loop()
        waiter: asyncio.Future[EntitlementsState] = loop.create_future()
        if self.task.done():
            _settle(waiter, self.task)
            return waiter
        deadline = loop.time() + seconds
        self._waiters.append((deadline, waiter))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        return waiter

    def _expire(self) -> None:
        self._timer = None
        now = self.task.get_loop().time()
        waiters = self._waiters
        while waiters and waiters[0][0] <= now:
            _, waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_exception(TimeoutError())
        if waiters:
            self._timer = self.task.get_loop().call_at(waiters[0][0], self._expire)

    def _finished(self, task: asyncio.Task[EntitlementsState]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters, self._waiters = self._waiters, deque()
        for _, waiter in waiters:
            if not waiter.done():
                _settle(waiter, task)


def _settle(
    waiter: asyncio.Future[EntitlementsState], task: asyncio.Task[EntitlementsState]
) -> None:
    if task.cancelled():
        waiter.set_exception(TimeoutError())
    elif (error := task.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(task.result())


class _Rendered:
    """One rendered answer and what it was rendered from."""

    __slots__ = ("body", "entry", "generation", "has_access", "key", "size", "touched_at")

    def __init__(
        self,
        generation: int,
        entry: CacheEntry[EntitlementsState],
        key: CacheKey,
        body: bytes,
        answer: Mapping[str, Any],
        now: float,
    ) -> None:
        self.generation = generation
        self.entry = entry
        self.key = key
        self.body = body
        self.has_access: bool = answer["hasAccess"]
        self.touched_at = now
        self.size = len(body) + RENDERED_OVERHEAD_BYTES


def _servable_when_stale(entry: CacheEntry[EntitlementsState]) -> bool:
    return entry.value.access_denied_reason != CUSTOMER_NOT_FOUND


def _listing(
    state: EntitlementsState, resource_id: str | None, now: float, source: str
) -> dict[str, Any]:
    answers: Iterable[dict[str, Any]] = (
        evaluate(state, CheckRequest(state.customer_id, feature_id, resource_id), now, source)
        for feature_id in state.entitlements
    )
    return {
        "customerId": state.customer_id,
        "resourceId": resource_id,
        "accessDeniedReason": state.access_denied_reason,
        "isFallback": False,
        "source": source,
        "entitlements": list(answers),
    }
