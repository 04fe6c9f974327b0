"""Forming a batch from the oldest spooled reports: pure functions, no I/O.

A batch is always a prefix of the queue, so reports leave in the order they were accepted.
With coalescing on, DELTA reports without a client key for the same customer, feature,
resource, dimensions and time window become one usage whose value is their sum; its
idempotency key is derived from the batch (``sidecar-batch-<batch id>-<n>``) and recorded with
the batch before it is sent, so a resend after a crash repeats the same keys. A SET closes the
groups of its usage key: a DELTA after a SET is never merged into a usage placed before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def build_usage_batch(
    pending: Sequence[Pending],
    batch_id: str,
    *,
    max_items: int,
    max_reports: int,
    coalesce: bool,
    window_seconds: float,
) -> tuple[Batch, int]:
    """The next ``reportUsageBulk`` batch from the head of ``pending``; and how many of
    ``pending`` it consumed."""
    drafts: list[_Draft] = []
    open_groups: dict[_GroupKey, _Draft] = {}
    groups_of: dict[_UsageKey, list[_GroupKey]] = {}
    used = 0
    for item in pending[:max_reports]:
        record = item.record
        usage_key: _UsageKey = (record["customerId"], record["featureId"], record.get("resourceId"))
        behavior = record["updateBehavior"]
        if coalesce and behavior == "DELTA" and not record["keyFromClient"]:
            timestamp = record.get("timestamp")
            bucket = int(parse_iso(timestamp).timestamp() // window_seconds) if timestamp else 0
            group: _GroupKey = (
                usage_key,
                orjson.dumps(record.get("dimensions"), option=orjson.OPT_SORT_KEYS),
                bucket,
            )
            draft = open_groups.get(group)
            if draft is not None:
                draft.members.append(item)
                used += 1
                continue
            if len(drafts) == max_items:
                break
            draft = _Draft([item])
            drafts.append(draft)
            open_groups[group] = draft
            groups_of.setdefault(usage_key, []).append(group)
        else:
            if len(drafts) == max_items:
                break
            if behavior == "SET":
                # Later DELTAs must land after this SET, so they may not join earlier groups.
                for closed in groups_of.pop(usage_key, ()):
                    open_groups.pop(closed, None)
            drafts.append(_Draft([item]))
        used += 1
    items = [_finish(draft, batch_id, n) for n, draft in enumerate(drafts)]
    return Batch(batch_id, "usage", items), used


def _finish(draft: _Draft, batch_id: str, n: int) -> BatchItem:
    sources = [(m.entry.id, m.entry.accepted_at) for m in draft.members]
    if len(draft.members) == 1:
        return BatchItem(_stigg_payload(draft.members[0].record, kind="usage"), sources)
    payload = _stigg_payload(draft.members[0].record, kind="usage")
    payload["value"] = sum(m.record["value"] for m in draft.members)
    payload["idempotencyKey"] = f"sidecar-batch-{batch_id}-{n}"
    stamps = [m.record["timestamp"] for m in draft.members if m.record.get("timestamp")]
    if stamps:
        payload["createdAt"] = format_epoch(max(parse_iso(stamp).timestamp() for stamp in stamps))
    return BatchItem(payload, sources)


def build_event_batch(
    pending: Sequence[Pending], batch_id: str, *, max_items: int
) -> tuple[Batch, int]:
    """The next ``reportEvent`` batch: events are never merged, each keeps its key."""
    head = pending[:max_items]
    items = [
        BatchItem(_stigg_payload(p.record, kind="event"), [(p.entry.id, p.entry.accepted_at)])
        for p in head
    ]
    return Batch(batch_id, "event", items), len(head)
