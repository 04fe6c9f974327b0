"""The shared CacheStore suite against a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from sidecar.cache.redis_store import RedisStore
from sidecar.cache.store import CacheStore
from sidecar.entitlements.model import EntitlementsState
from tests.cache_suite import *  # noqa: F403 - the shared tests
from tests.cache_suite import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(
    redis_server: str, clock: FakeClock
) -> AsyncIterator[CacheStore[EntitlementsState]]:
    client = redis.Redis.from_url(redis_server)
    # Real TTLs run on Redis' clock; the fake clock only decides staleness on read.
    yield RedisStore(
        client,
        f"test-{uuid.uuid4().hex}",
        EntitlementsState.to_json,
        EntitlementsState.from_json,
        clock,
    )
    await client.aclose()
