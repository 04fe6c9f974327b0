"""One behaviour suite for every ``CacheStore``: the memory, fakeredis and real Redis test
modules subclass ``CacheStoreSuite`` and provide a ``make_store`` fixture (one store per
namespace, all over one backend and one ``clock`` fixture, a ``FakeClock``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sidecar.cache.store import CacheEntry, CacheStore
from sidecar.entitlements.model import EntitlementsState

NOW = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def state(
    customer_id: str, resource_id: str | None = None, usage: float = 1.0
) -> EntitlementsState:
    return EntitlementsState.from_stigg(
        customer_id,
        resource_id,
        {
            "entitlements": [
                {
                    "isGranted": True,
                    "hasUnlimitedUsage": False,
                    "usageLimit": 10,
                    "currentUsage": usage,
                    "feature": {
                        "refId": "calls",
                        "featureType": "NUMBER",
                        "meterType": "Incremental",
                    },
                },
                {
                    "isGranted": True,
                    "hasUnlimitedUsage": False,
                    "enumValues": ["us", "eu"],
                    "feature": {"refId": "region", "featureType": "ENUM"},
                },
            ]
        },
        NOW,
    )


def entry(value: EntitlementsState, fresh: float = 30, stale: float = 3600) -> CacheEntry[Any]:
    return CacheEntry(value, NOW + fresh, NOW + stale)


MakeStore = Callable[[str], CacheStore[EntitlementsState]]


class CacheStoreSuite:
    """The behaviour every cache level shares."""

    @pytest.fixture
    def store(self, make_store: MakeStore) -> CacheStore[EntitlementsState]:
        return make_store("stigg-sidecar:test")

    async def test_get_returns_what_was_set(self, store: CacheStore[EntitlementsState]) -> None:
        assert await store.get(("c1", None)) is None
        await store.set(("c1", None), entry(state("c1")))
        got = await store.get(("c1", None))
        assert got is not None
        assert got.value == state("c1")
        assert (got.fresh_until, got.stale_until) == (NOW + 30, NOW + 3600)

    async def test_resources_are_separate_keys(self, store: CacheStore[EntitlementsState]) -> None:
        await store.set(("c1", None), entry(state("c1", usage=1)))
        await store.set(("c1", "ws-a"), entry(state("c1", "ws-a", usage=2)))
        a = await store.get(("c1", "ws-a"))
        plain = await store.get(("c1", None))
        assert a is not None
        assert plain is not None
        assert a.value.entitlements["calls"].current_usage == 2
        assert plain.value.entitlements["calls"].current_usage == 1

    async def test_set_replaces(self, store: CacheStore[EntitlementsState]) -> None:
        await store.set(("c1", None), entry(state("c1", usage=1)))
        await store.set(("c1", None), entry(state("c1", usage=5)))
        got = await store.get(("c1", None))
        assert got is not None
        assert got.value.entitlements["calls"].current_usage == 5

    async def test_delete_one_key(self, store: CacheStore[EntitlementsState]) -> None:
        await store.set(("c1", None), entry(state("c1")))
        await store.set(("c2", None), entry(state("c2")))
        await store.delete(("c1", None))
        await store.delete(("never-set", None))  # no error
        assert await store.get(("c1", None)) is None
        assert await store.get(("c2", None)) is not None

    async def test_delete_customer_drops_every_resource(
        self, store: CacheStore[EntitlementsState]
    ) -> None:
        for resource in (None, "ws-a", "ws-b"):
            await store.set(("c1", resource), entry(state("c1", resource)))
        await store.set(("c10", None), entry(state("c10")))  # a prefix of nobody else's id
        await store.delete_customer("c1")
        for resource in (None, "ws-a", "ws-b"):
            assert await store.get(("c1", resource)) is None
        assert await store.get(("c10", None)) is not None
        await store.delete_customer("nobody")

    async def test_entry_past_stale_deadline_is_gone(
        self, store: CacheStore[EntitlementsState], clock: FakeClock
    ) -> None:
        await store.set(("c1", None), entry(state("c1"), fresh=1, stale=2))
        clock.now = NOW + 1.5
        got = await store.get(("c1", None))
        assert got is not None
        assert not got.is_fresh(clock.now)
        assert got.is_usable(clock.now)
        clock.now = NOW + 2.5
        assert await store.get(("c1", None)) is None

    async def test_namespaces_do_not_see_each_other(self, make_store: MakeStore) -> None:
        staging = make_store("stigg-sidecar:staging")
        production = make_store("stigg-sidecar:production")
        for resource in (None, "ws-a"):
            await staging.set(("c1", resource), entry(state("c1", resource, usage=1)))
        assert await production.get(("c1", None)) is None
        await production.set(("c1", None), entry(state("c1", usage=2)))
        await production.delete_customer("c1")
        await production.delete(("c1", "ws-a"))
        for resource in (None, "ws-a"):
            kept = await staging.get(("c1", resource))
            assert kept is not None
            assert kept.value.entitlements["calls"].current_usage == 1
