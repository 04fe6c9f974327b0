"""L2: entitlement state in Redis, shared by every replica, with pub/sub invalidation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic

import orjson

from sidecar.cache.store import CacheEntry, CacheKey, V
from sidecar.redis_connect import RedisClient

log = logging.getLogger(__name__)

# Not allowed in customer or resource ids (see validation.py), so keys cannot collide.
_SEPARATOR = "|"


class RedisStore(Generic[V]):
    """``CacheStore`` in Redis: compact orjson values with a TTL of their stale deadline.

    A customer's keys (its entries and its resource index) carry the customer as a hash tag,
    ``...:{<customer>}...``: on a Cluster they share one slot, so the write of an entry with
    its index stays one transaction, while customers spread over every primary.
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        encode: Callable[[V], Any],
        decode: Callable[[Any], V],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._prefix = f"{prefix}:entitlements:"
        self._resources_prefix = f"{prefix}:resources:"
        self._encode = encode
        self._decode = decode
        self._clock = clock

    def _key(self, key: CacheKey) -> str:
        return f"{self._prefix}{{{key[0]}}}{_SEPARATOR}{key[1] or ''}"

    def _index(self, customer_id: str) -> str:
        return f"{self._resources_prefix}{{{customer_id}}}"

    async def get(self, key: CacheKey) -> CacheEntry[V] | None:
        raw = await self._redis.get(self._key(key))
        if raw is None:
            return None
        try:
            fresh_until, stale_until, value = orjson.loads(raw)
            entry = CacheEntry(self._decode(value), float(fresh_until), float(stale_until))
        except (ValueError, TypeError, KeyError) as exc:
            # A value written by an incompatible version: treat as a miss and let it be replaced.
            log.warning("ignoring unreadable cache value for %s: %s", key[0], exc)
            return None
        return entry if entry.is_usable(self._clock()) else None

    async def set(self, key: CacheKey, entry: CacheEntry[V]) -> None:
        ttl_ms = int((entry.stale_until - self._clock()) * 1000)
        if ttl_ms <= 0:
            return
        payload = orjson.dumps([entry.fresh_until, entry.stale_until, self._encode(entry.value)])
        if key[1] is None:
            await self._redis.set(self._key(key), payload, px=ttl_ms)
            return
        # Remember the customer's resources so delete_customer needs no keyspace scan.
        index = self._index(key[0])
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(key), payload, px=ttl_ms)
            pipe.sadd(index, key[1])
            pipe.pexpire(index, ttl_ms, gt=True)
            pipe.pexpire(index, ttl_ms, nx=True)
            await pipe.execute()

    async def delete(self, key: CacheKey) -> None:
        await self._redis.delete(self._key(key))

    async def delete_customer(self, customer_id: str) -> None:
        index = self._index(customer_id)
        resources = await self._redis.smembers(index)
        keys = [self._key((customer_id, None)), index]
        keys += [self._key((customer_id, _text(r))) for r in resources]
        await self._redis.delete(*keys)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
