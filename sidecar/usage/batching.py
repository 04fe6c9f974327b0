"""Forming a batch from the oldest spooled reports: builders fed one report at a time, no I/O.

A batch is always a prefix of the queue, so reports leave in the order they were accepted.
With coalescing on, DELTA reports without a client key for the same customer, feature,
resource, dimensions and time window become one usage whose value is their sum; its
idempotency key is derived from the batch (``sidecar-batch-<batch id>-<n>``) and recorded with
the batch before it is sent, so a resend after a crash repeats the same keys. A SET closes the
groups of its usage key: a DELTA after a SET is never merged into a usage placed before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from sidecar.timestamps import format_epoch, parse_iso
from sidecar.usage.spool import Batch, BatchItem, Entry

_UsageKey = tuple[str, str, str | None]
_GroupKey = tuple[_UsageKey, bytes, int]


@dataclass(frozen=True, slots=True)
class Pending:
    """A fetched report, decoded once while it waits in the flusher's buffer."""

    entry: Entry
    record: dict[str, Any]

    @classmethod
    def decode(cls, entry: Entry) -> Pending:
        return cls(entry, orjson.loads(entry.body))


def _stigg_payload(record: dict[str, Any], *, kind: str) -> dict[str, Any]:
    payload = {k: v for k, v in record.items() if k != "keyFromClient"}
    if kind == "usage" and "timestamp" in payload:
        payload["createdAt"] = payload.pop("timestamp")
    return payload


@dataclass(slots=True)
class _Draft:
    members: list[Pending]
    latest: float | None  # the newest member timestamp (epoch seconds), if any has one


class BatchBuilder(Protocol):
    """The next batch, grown one report at a time from the head of the queue: the flusher
    feeds each report once as it arrives instead of rebuilding from the whole buffer."""

    used: int  # reports taken so far (a prefix of what was fed)
    full: bool  # no further report fits

    def add(self, item: Pending) -> bool:
        """Take ``item`` into the batch; False when the batch is ``full`` already."""
        ...

    def build(self, batch_id: str) -> Batch: ...


class UsageBatchBuilder:
    """A ``reportUsageBulk`` batch, coalescing as the module says."""

    def __init__(
        self, *, max_items: int, max_reports: int, coalesce: bool, window_seconds: float
    ) -> None:
        self._max_items = max_items
        self._max_reports = max_reports
        self._coalesce = coalesce
        self._window = window_seconds
        self._drafts: list[_Draft] = []
        self._open_groups: dict[_GroupKey, _Draft] = {}
        self._groups_of: dict[_UsageKey, list[_GroupKey]] = {}
        self.used = 0
        self.full = max_items <= 0 or max_reports <= 0

    def add(self, item: Pending) -> bool:
        if self.full:
            return False
        record = item.record
        usage_key: _UsageKey = (record["customerId"], record["featureId"], record.get("resourceId"))
        behavior = record["updateBehavior"]
        if self._coalesce and behavior == "DELTA" and not record["keyFromClient"]:
            timestamp = record.get("timestamp")
            epoch = parse_iso(timestamp).timestamp() if timestamp else None
            group: _GroupKey = (
                usage_key,
                orjson.dumps(record.get("dimensions"), option=orjson.OPT_SORT_KEYS),
                0 if epoch is None else int(epoch // self._window),
            )
            draft = self._open_groups.get(group)
            if draft is not None:
                draft.members.append(item)
                if epoch is not None and (draft.latest is None or epoch > draft.latest):
                    draft.latest = epoch
                return self._took()
            self._drafts.append(_Draft([item], epoch))
            self._open_groups[group] = self._drafts[-1]
            self._groups_of.setdefault(usage_key, []).append(group)
            return self._took()
        if behavior == "SET":
            # Later DELTAs must land after this SET, so they may not join earlier groups.
            for closed in self._groups_of.pop(usage_key, ()):
                self._open_groups.pop(closed, None)
        self._drafts.append(_Draft([item], None))  # never merged: keeps its own timestamp
        return self._took()

    def _took(self) -> bool:
        self.used += 1
        # Full at the most usages a call may carry (sent at once, as nothing more can be
        # added but merges) or the most reports a batch may stand for.
        self.full = len(self._drafts) >= self._max_items or self.used >= self._max_reports
        return True

    def build(self, batch_id: str) -> Batch:
        items = [_finish(draft, batch_id, n) for n, draft in enumerate(self._drafts)]
        return Batch(batch_id, "usage", items)


def _finish(draft: _Draft, batch_id: str, n: int) -> BatchItem:
    members = draft.members
    sources = [(m.entry.id, m.entry.accepted_at) for m in members]
    payload = _stigg_payload(members[0].record, kind="usage")
    if len(members) > 1:
        payload["value"] = sum(m.record["value"] for m in members)
        payload["idempotencyKey"] = f"sidecar-batch-{batch_id}-{n}"
        if draft.latest is not None:
            payload["createdAt"] = format_epoch(draft.latest)
    return BatchItem(payload, sources)


class EventBatchBuilder:
    """A ``reportEvent`` batch: events are never merged, each keeps its key."""

    def __init__(self, *, max_items: int) -> None:
        self._max_items = max_items
        self._head: list[Pending] = []
        self.used = 0
        self.full = max_items <= 0

    def add(self, item: Pending) -> bool:
        if self.full:
            return False
        self._head.append(item)
        self.used += 1
        self.full = self.used >= self._max_items
        return True

    def build(self, batch_id: str) -> Batch:
        items = [
            BatchItem(_stigg_payload(p.record, kind="event"), [(p.entry.id, p.entry.accepted_at)])
            for p in self._head
        ]
        return Batch(batch_id, "event", items)
