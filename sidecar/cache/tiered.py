"""L1 in front of L2: one cache over a local store and an optional shared one.

The shape of LaunchDarkly's ``CachingStoreWrapper``: callers see one cache; reads go to the
local store first and fill it from the shared one; writes and deletes go to both. A shared
store that fails (Redis down) is counted and logged here and never raised: the caller goes on
with memory and Stigg.
"""

from __future__ import annotations

import logging
from typing import Generic

from redis.exceptions import RedisClusterException, RedisError

from sidecar.cache.store import CacheEntry, CacheKey, CacheStore, LocalStore, V
from sidecar.fault_log import FaultLog

log = logging.getLogger(__name__)
_faults = FaultLog(log)

# What a failing Redis raises through redis-py (connection errors surface as OSError too; a
# Cluster that lost a slot's every node raises RedisClusterException, not a RedisError).
REDIS_FAULTS = (RedisError, RedisClusterException, OSError)


class RedisFaults:
    """Counts failed Redis operations (the ``cache_l2_errors`` metric) and logs them, once per
    interval and operation: with Redis down, every check would otherwise log a line."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, what: str, exc: BaseException) -> None:
        self.count += 1
        _faults.log(
            what,
            logging.WARNING,
            "redis cache %s failed (%s); answering from memory and Stigg",
            what,
            exc,
        )


class TieredCache(Generic[V]):
    """``l1`` (this process) in front of ``l2`` (shared by replicas, optional)."""

    def __init__(
        self, l1: LocalStore[V], l2: CacheStore[V] | None = None, faults: RedisFaults | None = None
    ) -> None:
        self.l1 = l1
        self._l2 = l2
        self.faults = faults if faults is not None else RedisFaults()

    async def get_shared(self, key: CacheKey) -> CacheEntry[V] | None:
        """The shared entry, copied into L1; None without L2, on a miss or a Redis fault."""
        if self._l2 is None:
            return None
        try:
            entry = await self._l2.get(key)
        except REDIS_FAULTS as exc:
            self.faults("read", exc)
            return None
        if entry is not None:
            self.l1.set_nowait(key, entry)
        return entry

    async def set(self, key: CacheKey, entry: CacheEntry[V]) -> None:
        """Store in both levels."""
        self.l1.set_nowait(key, entry)
        if self._l2 is not None:
            try:
                await self._l2.set(key, entry)
            except REDIS_FAULTS as exc:
                self.faults("write", exc)

    def set_local(self, key: CacheKey, entry: CacheEntry[V]) -> None:
        """Store in L1 only (a change every replica applies itself)."""
        self.l1.set_nowait(key, entry)

    async def delete_customer(self, customer_id: str) -> None:
        """Forget the customer's entries (all resources) in both levels."""
        await self.l1.delete_customer(customer_id)
        if self._l2 is not None:
            try:
                await self._l2.delete_customer(customer_id)
            except REDIS_FAULTS as exc:
                self.faults("delete", exc)

    def drop_local(self, customer_id: str) -> None:
        """Forget the customer's L1 entries (L2 holds the current ones)."""
        for resource_id in self.l1.resources_of(customer_id):
            self.l1.delete_nowait((customer_id, resource_id))

    def resources_of(self, customer_id: str) -> frozenset[str | None]:
        """The resource ids cached locally for ``customer_id``."""
        return self.l1.resources_of(customer_id)

    def expire_local(self, now: float) -> None:
        """Make every L1 entry due for a refresh, still servable as stale until then."""
        self.l1.expire_all(now)
