"""The shared CacheStore suite against real Redis, in every mode (standalone, Cluster,
Sentinel, TLS with an ACL user)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from sidecar.cache.redis_store import RedisStore
from sidecar.cache.store import CacheStore
from sidecar.entitlements.model import EntitlementsState
from tests.cache_suite import CacheStoreSuite, FakeClock, MakeStore
from tests.conftest import RedisTarget


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestRedisStoreOnRedisServer(CacheStoreSuite):
    @pytest.fixture
    async def make_store(
        self, redis_target: RedisTarget, clock: FakeClock
    ) -> AsyncIterator[MakeStore]:
        client = redis_target.client()
        run = uuid.uuid4().hex

        def make(namespace: str) -> CacheStore[EntitlementsState]:
            # Real TTLs run on Redis' clock; the fake clock only decides staleness on read.
            return RedisStore(
                client,
                f"{namespace}-{run}",
                EntitlementsState.to_json,
                EntitlementsState.from_json,
                clock,
            )

        yield make
        await client.aclose()
