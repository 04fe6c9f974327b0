"""The shared CacheStore suite against the memory store and Redis (fakeredis)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest

from sidecar.cache.memory import MemoryStore
from sidecar.cache.redis_store import RedisStore
from sidecar.cache.store import CacheStore
from sidecar.entitlements.model import EntitlementsState
from tests.cache_suite import NOW, CacheStoreSuite, FakeClock, MakeStore, entry, state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestMemoryStore(CacheStoreSuite):
    @pytest.fixture
    def make_store(self, clock: FakeClock) -> MakeStore:
        # Memory is per process: each namespace (deployment) has its own.
        stores: dict[str, CacheStore[EntitlementsState]] = {}

        def make(namespace: str) -> CacheStore[EntitlementsState]:
            return stores.setdefault(
                namespace, MemoryStore(10_000_000, EntitlementsState.approx_bytes, clock)
            )

        return make


class TestRedisStoreOnFakeredis(CacheStoreSuite):
    @pytest.fixture
    async def make_store(self, clock: FakeClock) -> AsyncIterator[MakeStore]:
        client = fakeredis.FakeAsyncRedis()

        def make(namespace: str) -> CacheStore[EntitlementsState]:
            return RedisStore(
                client, namespace, EntitlementsState.to_json, EntitlementsState.from_json, clock
            )

        yield make
        await client.aclose()


def test_memory_budget_evicts_least_recently_used() -> None:
    per_state = state("c0").approx_bytes()
    memory = MemoryStore(per_state * 3, EntitlementsState.approx_bytes, FakeClock())
    for name in ("c0", "c1", "c2"):
        memory.set_nowait((name, None), entry(state(name)))
    assert memory.get_nowait(("c0", None)) is not None  # c0 is now most recently used
    memory.set_nowait(("c3", None), entry(state("c3")))
    assert memory.get_nowait(("c1", None)) is None  # least recently used, evicted
    assert {k for k in ("c0", "c2", "c3") if memory.get_nowait((k, None))} == {"c0", "c2", "c3"}
    assert memory.bytes_used <= per_state * 3
    assert memory.resources_of("c1") == frozenset()  # the customer index follows evictions


async def test_redis_values_are_namespaced_compact_json_with_ttl() -> None:
    client = fakeredis.FakeAsyncRedis()
    clock = FakeClock()
    redis_store = RedisStore(
        client, "stigg-sidecar:prod", EntitlementsState.to_json, EntitlementsState.from_json, clock
    )
    await redis_store.set(("c1", None), entry(state("c1"), stale=60))
    keys = await client.keys("*")
    # The customer is the key's hash tag: a Cluster keeps a customer's keys on one slot.
    assert keys == [b"stigg-sidecar:prod:entitlements:{c1}|"]
    ttl = await client.pttl(keys[0])
    assert 0 < ttl <= 60_000
    raw = await client.get(keys[0])
    assert raw is not None
    assert len(raw) < 300
    await client.set(keys[0], b"not json")
    assert await redis_store.get(("c1", None)) is None  # unreadable is a miss, not a crash
    assert clock.now == NOW
