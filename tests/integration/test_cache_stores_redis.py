"""The shared CacheStore suite against a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from sidecar.cache.redis_store import RedisStore
from sidecar.cache.store import CacheStore
from sidecar.entitlements.model import EntitlementsState
from tests.cache_suite import CacheStoreSuite, FakeClock, MakeStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestRedisStoreOnRedisServer(CacheStoreSuite):
    @pytest.fixture
    async def make_store(self, redis_server: str, clock: FakeClock) -> AsyncIterator[MakeStore]:
        client = redis.Redis.from_url(redis_server)
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
