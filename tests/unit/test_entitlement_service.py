"""The entitlement service over a fake upstream: caching, single-flight, fallbacks, updates."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import fakeredis
import orjson
import pytest

from sidecar.cache.memory import MemoryStore
from sidecar.cache.redis_store import RedisStore
from sidecar.cache.tiered import TieredCache
from sidecar.config import CacheSettings, EntitlementSettings, FeatureFallback
from sidecar.entitlements.model import CheckRequest, EntitlementsState
from sidecar.entitlements.service import EntitlementService
from sidecar.updates import UsageChange, UsageFigure
from sidecar.upstream.documents import Operation
from sidecar.upstream.errors import (
    StiggError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from tests.cache_suite import FakeClock
from tests.eventually import eventually


def stigg_state(
    usage: float = 3, limit: float = 10, period_end: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    if reason:
        return {"accessDeniedReason": reason, "entitlements": []}
    return {
        "accessDeniedReason": None,
        "entitlements": [
            {
                "isGranted": True,
                "hasUnlimitedUsage": False,
                "usageLimit": limit,
                "currentUsage": usage,
                "resetPeriod": "MONTH",
                "usagePeriodEnd": period_end,
                "feature": {"refId": "calls", "featureType": "NUMBER", "meterType": "Incremental"},
            },
            {
                "isGranted": True,
                "hasUnlimitedUsage": False,
                "feature": {"refId": "sso", "featureType": "BOOLEAN"},
            },
        ],
    }


class FakeUpstream:
    """Answers entitlementsState from ``states``; can be held at a gate or made to fail."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def execute(self, operation: Operation, variables: Mapping[str, Any]) -> Any:
        assert operation.root_field == "entitlementsState"
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        customer_id = variables["query"]["customerId"]
        return self.states.get(customer_id, stigg_state(reason="CustomerNotFound"))

    async def forward(self, body: bytes) -> Any:
        raise NotImplementedError


CACHE = CacheSettings(
    fresh_ttl_seconds=30, max_stale_seconds=3600, negative_ttl_seconds=5, refresh_ahead_seconds=5
)
CHECKS = EntitlementSettings(check_deadline_seconds=0.05)


def service(
    upstream: FakeUpstream,
    clock: FakeClock,
    *,
    l2: Any = None,
    settings: EntitlementSettings = CHECKS,
    cache: CacheSettings = CACHE,
) -> EntitlementService:
    return EntitlementService(
        upstream,
        cache,
        settings,
        store=TieredCache(MemoryStore(10_000_000, EntitlementsState.approx_bytes, clock), l2),
        clock=clock,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def upstream() -> FakeUpstream:
    fake = FakeUpstream()
    fake.states["c1"] = stigg_state()
    return fake


CALLS = CheckRequest("c1", "calls")


async def test_second_check_is_served_from_memory(upstream: FakeUpstream, clock: FakeClock) -> None:
    svc = service(upstream, clock)
    first = await svc.check(CALLS)
    second = await svc.check(CheckRequest("c1", "sso"))
    assert (first["source"], second["source"]) == ("upstream", "cache")
    assert first["hasAccess"]
    assert second["hasAccess"]
    assert upstream.calls == 1


async def test_thousand_concurrent_first_checks_make_one_call(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    upstream.gate = asyncio.Event()  # Stigg answers once every check is waiting
    # A deadline long enough that a busy test machine cannot turn this into a fallback test.
    svc = service(upstream, clock, settings=replace(CHECKS, check_deadline_seconds=5))
    checks = asyncio.gather(*(svc.check(CALLS) for _ in range(1000)))
    await eventually(lambda: upstream.calls)
    upstream.gate.set()
    answers = await checks
    assert upstream.calls == 1
    assert all(a["hasAccess"] and not a["isFallback"] for a in answers)


async def test_unknown_customer_is_cached_briefly(upstream: FakeUpstream, clock: FakeClock) -> None:
    svc = service(upstream, clock)
    for _ in range(50):
        answer = await svc.check(CheckRequest("ghost", "calls"))
        assert answer["accessDeniedReason"] == "CustomerNotFound"
    assert upstream.calls == 1
    clock.now += CACHE.negative_ttl_seconds + 0.1
    await svc.check(CheckRequest("ghost", "calls"))
    assert upstream.calls == 2


async def test_refresh_ahead_keeps_hot_customers_warm(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    svc = service(upstream, clock)
    await svc.check(CALLS)
    clock.now += CACHE.fresh_ttl_seconds - 1  # inside the refresh-ahead window
    upstream.states["c1"] = stigg_state(usage=7)
    answer = await svc.check(CALLS)
    assert answer["source"] == "cache"  # answered without waiting
    assert answer["currentUsage"] == 3
    await asyncio.sleep(0)  # let the background refresh run
    await asyncio.sleep(0)
    assert upstream.calls == 2
    clock.now += 2  # past the old entry's fresh deadline: the refreshed one answers
    assert (await svc.check(CALLS))["currentUsage"] == 7
    assert upstream.calls == 2


async def test_stale_state_answers_when_stigg_fails(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    svc = service(upstream, clock)
    await svc.check(CALLS)
    clock.now += CACHE.fresh_ttl_seconds + 1
    upstream.failure = UpstreamUnavailable("down")
    answer = await svc.check(CALLS)
    assert (answer["source"], answer["isFallback"], answer["hasAccess"]) == ("stale", False, True)
    assert answer["currentUsage"] == 3
    clock.now += CACHE.max_stale_seconds  # too old even for an outage
    answer = await svc.check(CALLS)
    assert (answer["source"], answer["isFallback"], answer["hasAccess"]) == ("default", True, False)


async def test_slow_stigg_falls_back_at_the_deadline_and_fills_the_cache_later(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    upstream.gate = asyncio.Event()  # Stigg answers only after the 50 ms deadline
    svc = service(upstream, clock)
    fallback = FeatureFallback(has_access=True, usage_limit=5)
    answer = await asyncio.wait_for(svc.check(CALLS, fallback), 1)
    assert (answer["isFallback"], answer["source"], answer["hasAccess"]) == (True, "request", True)
    assert answer["usageLimit"] == 5
    upstream.gate.set()  # the fetch that timed out finishes in the background
    await eventually(lambda: svc.l1.get_nowait(("c1", None)))
    answer = await svc.check(CALLS)
    assert (answer["source"], answer["isFallback"]) == ("cache", False)
    assert upstream.calls == 1


async def test_fallback_chain_order(upstream: FakeUpstream, clock: FakeClock) -> None:
    upstream.failure = UpstreamRateLimited("429")
    settings = replace(
        CHECKS, fallback={"calls": FeatureFallback(has_access=True, usage_limit=100)}
    )
    svc = service(upstream, clock, settings=settings)
    request_fallback = FeatureFallback(has_access=False)
    by_request = await svc.check(CALLS, request_fallback)
    assert (by_request["source"], by_request["hasAccess"]) == ("request", False)
    by_config = await svc.check(CALLS)
    assert (by_config["source"], by_config["hasAccess"], by_config["usageLimit"]) == (
        "config",
        True,
        100,
    )
    over = await svc.check(CALLS._replace(requested_usage=101))
    assert (over["hasAccess"], over["accessDeniedReason"]) == (
        False,
        "RequestedUsageExceedingLimit",
    )
    default = await svc.check(CheckRequest("c1", "sso"))
    assert (default["source"], default["hasAccess"], default["accessDeniedReason"]) == (
        "default",
        False,
        "Unknown",
    )
    granting = service(upstream, clock, settings=replace(CHECKS, default_has_access=True))
    assert (await granting.check(CheckRequest("c1", "sso")))["hasAccess"] is True


async def test_ended_usage_period_triggers_refresh_and_resets_when_stigg_is_down(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    upstream.states["c1"] = stigg_state(usage=10, period_end="2027-01-15T08:00:10Z")
    svc = service(upstream, clock)
    assert (await svc.check(CALLS))["hasAccess"] is False  # 10 of 10 used
    clock.now = 1_800_000_011.0  # 2027-01-15T08:00:11Z: the period ended a second ago
    upstream.failure = UpstreamUnavailable("down")
    answer = await svc.check(CALLS)  # entry is due: refetch fails, stale state is re-evaluated
    assert upstream.calls == 2
    assert (answer["source"], answer["hasAccess"], answer["currentUsage"]) == ("stale", True, 0)


async def test_invalidate_drops_and_refetches(upstream: FakeUpstream, clock: FakeClock) -> None:
    svc = service(upstream, clock)
    await svc.check(CALLS)
    upstream.states["c1"] = stigg_state(usage=9)
    await svc.invalidate("c1")
    await eventually(lambda: svc.l1.get_nowait(("c1", None)))  # the refresh it started
    answer = await svc.check(CALLS)
    assert (answer["source"], answer["currentUsage"]) == ("cache", 9)
    assert upstream.calls == 2


async def test_fetch_started_before_an_invalidation_is_not_stored(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    upstream.gate = asyncio.Event()
    svc = service(upstream, clock, settings=replace(CHECKS, check_deadline_seconds=5))
    pending = asyncio.create_task(svc.check(CALLS))
    await eventually(lambda: upstream.calls == 1)  # the fetch waits at the gate, old state
    await svc.invalidate("c1", refresh=False)
    upstream.gate.set()
    await pending
    assert svc.l1.get_nowait(("c1", None)) is None  # the pre-change answer was not cached


async def test_pushed_updates_replace_cached_state(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    svc = service(upstream, clock)
    await svc.check(CALLS)
    await svc.apply_state("c1", None, stigg_state(usage=10))
    assert (await svc.check(CALLS))["hasAccess"] is False
    assert await svc.apply_usage([UsageFigure("c1", None, "calls", 4.0)], publish=False)
    answer = await svc.check(CALLS)
    assert (answer["currentUsage"], answer["hasAccess"], answer["source"]) == (4, True, "cache")
    assert not await svc.apply_usage([UsageFigure("nobody", None, "calls", 1.0)], publish=False)
    assert upstream.calls == 1


async def test_warm_start_from_l2_needs_no_upstream(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    redis_client = fakeredis.FakeAsyncRedis()
    l2 = RedisStore(
        redis_client, "t", EntitlementsState.to_json, EntitlementsState.from_json, clock
    )
    await service(upstream, clock, l2=l2).check(CALLS)
    upstream.failure = UpstreamUnavailable("down")
    restarted = service(upstream, clock, l2=l2)  # empty L1, same Redis
    answer = await restarted.check(CALLS)
    assert (answer["source"], answer["hasAccess"], answer["isFallback"]) == ("cache", True, False)
    assert upstream.calls == 1


async def test_redis_failure_degrades_to_memory_and_stigg(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    broken = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    broken.connection_pool.connection_kwargs["server"].connected = False
    l2 = RedisStore(broken, "t", EntitlementsState.to_json, EntitlementsState.from_json, clock)
    svc = service(upstream, clock, l2=l2)
    answer = await svc.check(CALLS)
    assert (answer["source"], answer["hasAccess"]) == ("upstream", True)
    assert svc.store.faults.count >= 1
    assert (await svc.check(CALLS))["source"] == "cache"


async def test_list_falls_back_to_config(upstream: FakeUpstream, clock: FakeClock) -> None:
    upstream.failure = UpstreamUnavailable("down")
    settings = replace(CHECKS, fallback={"sso": FeatureFallback(has_access=True)})
    listing = await service(upstream, clock, settings=settings).list("c1", None)
    assert listing["isFallback"] is True
    assert [(e["featureId"], e["hasAccess"]) for e in listing["entitlements"]] == [("sso", True)]


async def test_once_stigg_missed_a_deadline_stale_answers_do_not_wait(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    svc = service(upstream, clock)
    for customer in ("c1", "c2"):
        upstream.states[customer] = stigg_state()
        await svc.check(CheckRequest(customer, "calls"))
    clock.now += CACHE.fresh_ttl_seconds + 1  # both entries are stale now
    upstream.gate = asyncio.Event()  # Stigg hangs
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = await svc.check(CheckRequest("c1", "calls"))
    assert loop.time() - started >= CHECKS.check_deadline_seconds  # waited for Stigg once
    started = loop.time()
    second = await svc.check(CheckRequest("c2", "calls"))
    assert loop.time() - started < CHECKS.check_deadline_seconds  # did not wait again
    assert first["source"] == second["source"] == "stale"
    upstream.gate.set()  # Stigg answers: the background fetches refresh both entries

    def refreshed() -> bool:
        entry = svc.l1.get_nowait(("c2", None))
        return entry is not None and entry.is_fresh(clock.now)

    await eventually(refreshed)
    assert (await svc.check(CheckRequest("c2", "calls")))["source"] == "cache"


def report(value: float, behavior: str = "DELTA", feature: str = "calls") -> UsageChange:
    return UsageChange("c1", None, feature, behavior, value)


def confirmed(usage: float) -> UsageFigure:
    """Stigg's answer to a delivered batch."""
    return UsageFigure("c1", None, "calls", usage, answers_batch=True)


async def test_accepted_usage_counts_at_once(upstream: FakeUpstream, clock: FakeClock) -> None:
    svc = service(upstream, clock)
    assert (await svc.check(CALLS))["currentUsage"] == 3
    await svc.apply_usage([report(6)])
    assert (await svc.check(CALLS))["currentUsage"] == 9
    await svc.apply_usage([report(1)])  # 10 of 10: the next check is denied
    denied = await svc.check(CALLS)
    assert (denied["hasAccess"], denied["accessDeniedReason"]) == (
        False,
        "RequestedUsageExceedingLimit",
    )
    await svc.apply_usage([report(2, "SET")])
    assert (await svc.check(CALLS))["currentUsage"] == 2
    await svc.apply_usage([report(5, feature="sso")])  # not metered: nothing to count
    assert upstream.calls == 1


async def test_confirmed_usage_reconciles_without_losing_later_reports(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    svc = service(upstream, clock)
    await svc.check(CALLS)
    await svc.apply_usage([report(2), report(3)])  # 8 counted here
    # Stigg confirms the first batch (3 + 2 = 5) while the second report is not sent yet.
    await svc.apply_usage([confirmed(5)])
    assert (await svc.check(CALLS))["currentUsage"] == 8
    # Stigg knows more than we do (another replica reported): its figure wins.
    await svc.apply_usage([confirmed(9)])
    assert (await svc.check(CALLS))["currentUsage"] == 9


async def test_rendered_answers_follow_every_change(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    svc = service(upstream, clock)
    first = orjson.loads(await svc.check_json(CALLS))
    assert (first["currentUsage"], first["source"]) == (3, "upstream")
    assert orjson.loads(await svc.check_json(CALLS))["source"] == "cache"
    again = await svc.check_json(CALLS)
    assert again is await svc.check_json(CALLS)  # the same bytes, rendered once
    await svc.apply_usage([report(7)])
    assert orjson.loads(await svc.check_json(CALLS))["hasAccess"] is False  # 10 of 10
    await svc.apply_state("c1", None, stigg_state(usage=1))
    assert orjson.loads(await svc.check_json(CALLS))["currentUsage"] == 1
    granted, denied = svc.stats.granted, svc.stats.denied
    await svc.check_json(CALLS)
    assert (svc.stats.granted, svc.stats.denied) == (granted + 1, denied)


async def test_a_cached_query_never_answers_changed_or_expired_state(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    """The raw-query fast path (``answer_cached``): any change to L1 or the end of freshness
    sends the query back through a real check, which answers the new state."""
    svc = service(upstream, clock)
    query = "customerId=c1&featureId=calls"

    async def ask() -> dict[str, Any]:
        body = svc.answer_cached(query)
        if body is None:
            body = await svc.check_json(CALLS, query)
        return orjson.loads(body)  # type: ignore[no-any-return]

    assert (await ask())["source"] == "upstream"
    assert svc.answer_cached(query) is None  # not answered from cache yet: nothing kept
    assert (await ask())["currentUsage"] == 3
    kept = svc.answer_cached(query)
    assert kept is not None
    assert orjson.loads(kept)["currentUsage"] == 3
    await svc.apply_usage([report(2)])  # an accepted report
    assert svc.answer_cached(query) is None
    assert (await ask())["currentUsage"] == 5
    await svc.apply_state("c1", None, stigg_state(usage=1))  # a pushed update
    assert (await ask())["currentUsage"] == 1
    upstream.states["c1"] = stigg_state(usage=6)
    await svc.invalidate("c1")  # a webhook or a mutation through the sidecar
    assert svc.answer_cached(query) is None
    await eventually(lambda: upstream.calls == 2)  # the refresh after the invalidation
    assert (await ask())["currentUsage"] == 6
    assert (await ask())["currentUsage"] == 6
    assert svc.answer_cached(query) is not None
    upstream.states["c1"] = stigg_state(usage=8)
    clock.now += CACHE.fresh_ttl_seconds + 1  # past freshness
    assert svc.answer_cached(query) is None
    assert (await ask())["currentUsage"] == 8
    assert (await ask())["currentUsage"] == 8
    svc.drop_all_local()  # missed replication events: everything due for a refresh
    assert svc.answer_cached(query) is None


async def test_customer_not_found_error_is_the_same_denial_as_the_data(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    """Stigg may answer an unknown customer with a CustomerNotFound error instead of data."""
    upstream.failure = StiggError("no such customer", stigg_code="CustomerNotFound")
    svc = service(upstream, clock)
    answer = await svc.check(CheckRequest("ghost", "calls"))
    assert (answer["hasAccess"], answer["isFallback"], answer["accessDeniedReason"]) == (
        False,
        False,
        "CustomerNotFound",
    )
    listing = await svc.list("ghost", None)
    assert (listing["accessDeniedReason"], listing["entitlements"]) == ("CustomerNotFound", [])
    assert upstream.calls == 1  # remembered like the data answer


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (
            UpstreamProtocolError("Stigg's answer could not be understood"),
            "upstream_invalid_answer",
        ),
        (UpstreamUnavailable("down"), "upstream_unavailable"),
        (StiggError("odd", stigg_code="SomethingNew"), "SomethingNew"),
    ],
)
async def test_a_fallback_says_why(
    upstream: FakeUpstream, clock: FakeClock, failure: Exception, reason: str
) -> None:
    upstream.failure = failure
    svc = service(upstream, clock)
    answer = await svc.check(CALLS)
    assert (answer["isFallback"], answer["fallbackReason"]) == (True, reason)
    listing = await svc.list("c1", None)
    assert (listing["isFallback"], listing["fallbackReason"]) == (True, reason)


async def test_a_fallback_after_the_deadline_says_timeout(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    upstream.gate = asyncio.Event()
    svc = service(upstream, clock)
    answer = await svc.check(CALLS)
    assert (answer["isFallback"], answer["fallbackReason"]) == (True, "upstream_timeout")
    await svc.aclose()


async def test_resync_marks_for_refresh_and_stale_beats_the_default(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    # Redis reconnected (perhaps restarted empty): L1 must be refreshed, not thrown away.
    l2 = RedisStore(
        fakeredis.FakeAsyncRedis(), "t", EntitlementsState.to_json, EntitlementsState.from_json
    )
    svc = service(upstream, clock, l2=l2)
    await svc.check(CALLS)
    await l2.delete_customer("c1")  # the restarted Redis has nothing
    svc.drop_all_local()
    upstream.gate = asyncio.Event()  # Stigg too slow for the 50 ms deadline
    answer = await svc.check(CALLS)
    assert (answer["source"], answer["isFallback"], answer["hasAccess"]) == ("stale", False, True)
    upstream.gate.set()  # the background fetch lands and refreshes the entry
    await eventually(lambda: svc.l1.get_nowait(("c1", None)).is_fresh(clock()))
    calls = upstream.calls
    answer = await svc.check(CALLS)
    assert (answer["source"], answer["hasAccess"]) == ("cache", True)  # refreshed, not stale
    assert upstream.calls == calls


async def test_resync_takes_fresher_state_from_the_shared_cache(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    l2 = RedisStore(
        fakeredis.FakeAsyncRedis(), "t", EntitlementsState.to_json, EntitlementsState.from_json
    )
    svc = service(upstream, clock, l2=l2)
    await svc.check(CALLS)
    upstream.states["c1"] = stigg_state(usage=7)
    other = service(upstream, clock, l2=l2)  # another replica refreshed the shared state
    await other.reload("c1", None)
    svc.drop_all_local()
    calls = upstream.calls
    answer = await svc.check(CALLS)
    assert (answer["source"], answer["currentUsage"]) == ("cache", 7)
    assert upstream.calls == calls
