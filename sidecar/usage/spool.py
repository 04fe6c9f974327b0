"""The durable spool: where an accepted report lives until Stigg has acknowledged it.

Two implementations share this interface and one test suite: SQLite in WAL mode (one process,
``sqlite_spool.py``) and a Redis stream with a consumer group (replicas, ``redis_spool.py``).

The life of a report: ``append`` stores it (after which the API answers 202); the flusher
``fetch``es reports in acceptance order, fixes a batch's composition and idempotency keys with
``record_batch`` *before* sending it, and ``ack_batch``es it once Stigg answered. After a crash,
``open_batches`` returns the recorded but unacknowledged batches so they are resent exactly as
they were, with the same keys, which Stigg counts once.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from sidecar.usage.model import Kind


class SpoolFull(Exception):
    """The spool is at its configured bound; the report was not stored."""


class SpoolUnavailable(Exception):
    """The spool's store cannot be reached (Redis down); nothing was stored."""


class NotReplicated(Exception):
    """Fewer replicas than asked confirmed the reports in time (new ones, or an earlier
    attempt's that this retry found as duplicates): a failover now could lose them, so they
    are not acknowledged. They stay spooled; a retry with the same client keys is answered
    as duplicates once the replicas confirm."""

    def __init__(self, stored: list[bool], confirmed: int, wanted: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed the write")
        self.stored = stored
        self.confirmed = confirmed
        self.wanted = wanted


@dataclass(frozen=True, slots=True)
class NewReport:
    """A report to append: its spooled JSON and, for client keys, what to de-duplicate on."""

    body: bytes
    dedupe_key: str | None


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored report, as ``fetch`` returns it."""

    id: str
    body: bytes
    accepted_at: float


@dataclass(slots=True)
class BatchItem:
    """One usage (or event) exactly as it is sent, and the stored reports it stands for."""

    payload: dict[str, Any]
    # (entry id, accepted_at) of every report merged into this item.
    sources: list[tuple[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"payload": self.payload, "sources": self.sources}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchItem:
        return cls(
            payload=data["payload"],
            sources=[(str(source), float(accepted)) for source, accepted in data["sources"]],
        )


@dataclass(slots=True)
class Batch:
    """A call's worth of items whose composition and keys are fixed once recorded."""

    id: str
    kind: Kind
    items: list[BatchItem]

    @property
    def entry_ids(self) -> list[str]:
        return [source for item in self.items for source, _ in item.sources]

    def split(self) -> tuple[Batch, Batch]:
        """Two halves that keep every item's payload (and so its key) and their order.

        Children's ids extend the parent's, so sorting ids keeps the original order."""
        middle = len(self.items) // 2
        return (
            Batch(f"{self.id}.0", self.kind, self.items[:middle]),
            Batch(f"{self.id}.1", self.kind, self.items[middle:]),
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "kind": self.kind, "items": [item.to_json() for item in self.items]}
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Batch:
        data = orjson.loads(raw)
        return cls(
            id=data["id"],
            kind=data["kind"],
            items=[BatchItem.from_json(item) for item in data["items"]],
        )


_sequence = itertools.count()


def new_batch_id() -> str:
    """Sortable (time, then a per-process counter) and unique across replicas."""
    return f"{time.time_ns():020d}{next(_sequence) % 10**6:06d}{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A report Stigg rejected as invalid, kept to be inspected and replayed."""

    id: str
    kind: Kind
    record: dict[str, Any]
    reason: str
    code: str
    accepted_at: float
    failed_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "report": self.record,
            "reason": self.reason,
            "code": self.code,
            "acceptedAt": self.accepted_at,
            "failedAt": self.failed_at,
        }


@dataclass(frozen=True, slots=True)
class Depth:
    """How much is waiting, for stats and metrics."""

    reports: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    oldest_accepted_at: dict[str, float | None] = field(default_factory=dict)
    dead_letters: int = 0
    open_batches: int = 0


class Spool(Protocol):
    """A bounded, durable, de-duplicating queue of reports with recorded batches."""

    name: str
    # How often the flusher must look for new reports that ``notify`` does not announce
    # (other replicas' appends); None when every append goes through this process.
    poll_interval: float | None
    # Writes fail for want of disk space (new reports are refused; delivery goes on).
    disk_full: bool

    @property
    def durable(self) -> bool:
        """Whether an accepted report survives the store's restart (a metric)."""
        ...

    async def open(self) -> None:
        """Create or recover the store; raises if it cannot be used."""
        ...

    async def close(self) -> None: ...

    async def append(self, kind: Kind, reports: Sequence[NewReport], now: float) -> list[bool]:
        """Store all of ``reports`` durably, or none (``SpoolFull``, ``SpoolUnavailable``).

        Returns, per report, False when its dedupe key was already accepted within the
        window (then it is not stored again)."""
        ...

    async def acquire(self) -> bool:
        """Whether this process may flush now (Redis: holds the flush lease); renews it."""
        ...

    async def release(self) -> None:
        """Give up the right to flush, so another replica can take over at once."""
        ...

    async def open_batches(self, kind: Kind) -> list[Batch]:
        """Recorded, unacknowledged batches in the order they were formed."""
        ...

    async def fetch(self, kind: Kind, limit: int, *, restart: bool) -> list[Entry]:
        """Up to ``limit`` reports not in a batch and not returned since the last restart,
        oldest first. ``restart`` starts over (after recovering open batches)."""
        ...

    async def record_batch(self, batch: Batch) -> bool:
        """Fix ``batch`` before it is sent; False when this process lost the right to flush."""
        ...

    async def split_batch(self, batch: Batch, parts: Sequence[Batch]) -> bool:
        """Replace ``batch`` by ``parts`` (same items, same keys)."""
        ...

    async def ack_batch(self, batch: Batch) -> None:
        """Stigg has it: delete the batch and its reports."""
        ...

    async def dead_letter(self, batch: Batch, reason: str, code: str, now: float) -> int:
        """Move the reports of a rejected batch to the dead letters; how many were moved."""
        ...

    async def dead_letters(
        self, kind: Kind | None, limit: int, after: str | None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first, after the id ``after``."""
        ...

    async def replay(self, ids: Sequence[str] | None, now: float) -> dict[str, int]:
        """Put dead letters (all when ``ids`` is None) back in the queue; how many, by kind."""
        ...

    async def depth(self) -> Depth: ...

    async def purge_expired_keys(self, now: float) -> int:
        """Forget client keys older than the dedupe window; how many."""
        ...
