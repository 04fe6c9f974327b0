"""L1: an in-process LRU cache bounded by an estimate of the bytes it holds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Generic

from cachetools import Cache, LRUCache

from sidecar.cache.store import CacheEntry, CacheKey, V


class _SizedLRU(LRUCache[CacheKey, CacheEntry[V]]):
    """An LRU that tells its owner about evictions, so the per-customer index stays exact."""

    def __init__(
        self,
        maxsize: int,
        getsizeof: Callable[[CacheEntry[V]], float],
        on_evict: Callable[[CacheKey], None],
    ) -> None:
        super().__init__(maxsize, getsizeof)
        self._on_evict = on_evict

    def popitem(self) -> tuple[CacheKey, CacheEntry[V]]:
        key, entry = super().popitem()
        self._on_evict(key)
        return key, entry


class MemoryStore(Generic[V]):
    """``CacheStore`` in memory; ``sizeof`` estimates one value's bytes for the budget."""

    def __init__(
        self, budget_bytes: int, sizeof: Callable[[V], int], clock: Callable[[], float] = time.time
    ) -> None:
        self._lru: _SizedLRU[V] = _SizedLRU(
            budget_bytes, lambda entry: sizeof(entry.value), self._forget_index
        )
        self._clock = clock
        # customerId -> resourceIds cached for it, so a customer can be dropped without a scan.
        self._resources: dict[str, set[str | None]] = {}
        self.generation = 0

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes_used(self) -> float:
        return self._lru.currsize

    def clear(self) -> None:
        self.generation += 1
        self._lru.clear()
        self._resources.clear()

    def expire_all(self, now: float) -> None:
        """Make every entry due for a refresh, keeping it servable as stale until then."""
        self.generation += 1
        for key, entry in self.items():
            if entry.fresh_until > now:
                self._lru[key] = replace(entry, fresh_until=now)

    def items(self) -> Iterator[tuple[CacheKey, CacheEntry[V]]]:
        """Every entry, oldest first; reading them does not count as using them."""
        peek = Cache.__getitem__  # LRUCache's own would move each entry to the front
        return iter([(key, peek(self._lru, key)) for key in list(self._lru)])

    def resources_of(self, customer_id: str) -> frozenset[str | None]:
        """The resource ids (None: no resource) cached for ``customer_id``."""
        return frozenset(self._resources.get(customer_id, ()))

    def get_nowait(self, key: CacheKey) -> CacheEntry[V] | None:
        """The synchronous lookup the hot path uses (no await, no allocation)."""
        entry = self._lru.get(key)
        if entry is None:
            return None
        if not entry.is_usable(self._clock()):
            self.delete_nowait(key)
            return None
        return entry

    def set_nowait(self, key: CacheKey, entry: CacheEntry[V]) -> None:
        self.generation += 1
        try:
            self._lru[key] = entry
        except ValueError:  # one value larger than the whole budget: do not cache it
            return
        self._resources.setdefault(key[0], set()).add(key[1])

    def delete_nowait(self, key: CacheKey) -> None:
        if self._lru.pop(key, None) is not None:
            self._forget_index(key)

    def _forget_index(self, key: CacheKey) -> None:
        self.generation += 1  # every way out of the cache (delete, eviction) passes here
        resources = self._resources.get(key[0])
        if resources is not None:
            resources.discard(key[1])
            if not resources:
                del self._resources[key[0]]

    async def get(self, key: CacheKey) -> CacheEntry[V] | None:
        return self.get_nowait(key)

    async def set(self, key: CacheKey, entry: CacheEntry[V]) -> None:
        self.set_nowait(key, entry)

    async def delete(self, key: CacheKey) -> None:
        self.delete_nowait(key)

    async def delete_customer(self, customer_id: str) -> None:
        for resource_id in list(self._resources.get(customer_id, ())):
            self.delete_nowait((customer_id, resource_id))
