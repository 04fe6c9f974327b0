"""The protocol every cache level implements, and what it stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

V = TypeVar("V")

# (customerId, resourceId): entitlement state is per customer and, optionally, per resource.
CacheKey = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class CacheEntry(Generic[V]):
    """A cached value with its freshness deadlines (epoch seconds, comparable across hosts)."""

    value: V
    fresh_until: float
    # Past ``fresh_until`` and before this, the value is served only when Stigg fails.
    stale_until: float

    def is_fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def is_usable(self, now: float) -> bool:
        return now < self.stale_until


class CacheStore(Protocol[V]):
    """Get/set/delete of entries; implementations never raise for a missing key."""

    async def get(self, key: CacheKey) -> CacheEntry[V] | None:
        """The entry, or None when absent or past ``stale_until``."""
        ...

    async def set(self, key: CacheKey, entry: CacheEntry[V]) -> None:
        """Store ``entry``, replacing any previous one."""
        ...

    async def delete(self, key: CacheKey) -> None:
        """Forget one key."""
        ...

    async def delete_customer(self, customer_id: str) -> None:
        """Forget every key of ``customer_id`` (all resources)."""
        ...


class LocalStore(CacheStore[V], Protocol[V]):
    """A store in this process (L1): synchronous access for the hot path, and an index of
    each customer's resources so a customer is dropped without a scan."""

    def get_nowait(self, key: CacheKey) -> CacheEntry[V] | None:
        """``get`` without an await: the hot path's lookup."""
        ...

    def set_nowait(self, key: CacheKey, entry: CacheEntry[V]) -> None:
        """``set`` without an await."""
        ...

    def delete_nowait(self, key: CacheKey) -> None:
        """``delete`` without an await."""
        ...

    def resources_of(self, customer_id: str) -> frozenset[str | None]:
        """The resource ids (None: no resource) held for ``customer_id``."""
        ...

    def clear(self) -> None:
        """Forget everything."""
        ...

    def expire_all(self, now: float) -> None:
        """Make every entry due for a refresh, keeping it servable as stale until then."""
        ...

    def items(self) -> Iterator[tuple[CacheKey, CacheEntry[V]]]:
        """Every entry, oldest first, without counting as a use (the L1 snapshot)."""
        ...

    def __len__(self) -> int:
        """Entries held."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever any entry is stored, replaced, dropped, evicted or expired: an
        answer rendered from this store's entries at one generation is still theirs while the
        generation is the same."""
        ...

    @property
    def bytes_used(self) -> float:
        """Approximate bytes held."""
        ...
