"""Replication between replicas: typed, named, versioned events over (fake) Redis pub/sub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

import fakeredis
import orjson
import pytest

from sidecar.cache.replication import (
    Invalidate,
    Replication,
    Resync,
    UsageConfirmed,
    UsageCounted,
    decode,
    encode,
)
from sidecar.cache.tiered import RedisFaults
from sidecar.updates import UsageChange, UsageFigure, UsageUpdate
from tests.eventually import eventually

CHANGE = UsageChange("c1", "ws-a", "calls", "DELTA", 2.0)
FIGURE = UsageFigure("c1", None, "calls", 7.0, 1.0, 2.0, answers_batch=True)


class RecordingSink:
    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.resyncs = 0
        self.usage: list[tuple[UsageUpdate, bool]] = []

    def drop_local(self, customer_id: str) -> None:
        self.dropped.append(customer_id)

    def drop_all_local(self) -> None:
        self.resyncs += 1

    async def apply_usage(self, updates: Iterable[UsageUpdate], *, publish: bool = True) -> int:
        self.usage.extend((update, publish) for update in updates)
        return 0


@pytest.mark.parametrize(
    "event",
    [Invalidate("c1"), UsageCounted((CHANGE,)), UsageConfirmed((FIGURE,)), Resync()],
)
def test_events_travel_as_named_versioned_objects(event: object) -> None:
    wire = orjson.loads(orjson.dumps(encode(event)))  # type: ignore[arg-type]
    assert wire["v"] == 1
    assert isinstance(wire["type"], str)
    assert decode(wire) == event


def test_usage_changes_are_named_not_positional() -> None:
    wire = encode(UsageCounted((CHANGE,)))
    assert wire["changes"] == [
        {
            "customerId": "c1",
            "resourceId": "ws-a",
            "featureId": "calls",
            "updateBehavior": "DELTA",
            "value": 2.0,
        }
    ]


Pair = tuple[Replication, Replication, RecordingSink, fakeredis.FakeServer]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """Replica a publishes; replica b listens, applying to a recording sink."""
    server = fakeredis.FakeServer()
    a = Replication(fakeredis.FakeAsyncRedis(server=server), "ns", RedisFaults())
    b = Replication(fakeredis.FakeAsyncRedis(server=server), "ns", RedisFaults())
    sink = RecordingSink()
    listening = asyncio.create_task(b.run(sink))
    await eventually(b.connected.is_set)
    yield a, b, sink, server
    listening.cancel()
    await asyncio.gather(listening, return_exceptions=True)


async def test_other_replicas_apply_what_one_publishes(
    pair: Pair,
) -> None:
    a, b, sink, _ = pair
    assert sink.resyncs == 1  # on connecting: what was missed is dropped
    await a.publish(Invalidate("c1"))
    await a.publish(UsageCounted((CHANGE,)))
    await a.publish(UsageConfirmed((FIGURE,)))
    await b.publish(Invalidate("mine"))  # its own events: already applied where published
    await eventually(lambda: len(sink.usage) == 2)
    assert sink.dropped == ["c1"]
    # Applied without publishing again (no echo between replicas).
    assert sink.usage == [(CHANGE, False), (FIGURE, False)]


async def test_unknown_versions_and_malformed_events_are_logged_and_ignored(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, sink, server = pair
    client = fakeredis.FakeAsyncRedis(server=server)
    caplog.set_level(logging.WARNING)
    for message in (
        {"v": 2, "type": "invalidate", "customerId": "future"},
        {"v": 2, "type": "invalidate", "customerId": "future-again"},
        {"type": "invalidate", "customerId": "no-version"},
        {"v": 1, "type": "usage", "changes": [["c1", None, "calls", "DELTA", 1]]},
        {"v": 1, "type": "teleport"},
    ):
        await client.publish(b.channel, orjson.dumps(message))
    await a.publish(Invalidate("last"))
    await eventually(lambda: sink.dropped == ["last"])
    assert sink.usage == []
    versions = [r for r in caplog.records if "version" in r.getMessage()]
    assert len(versions) == 2  # once per unknown version (2, and none), not per event
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 2


class HeldRedis:
    """A Redis whose PUBLISH waits until released: the sender is busy, events queue up."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.published: list[dict[str, object]] = []

    async def publish(self, channel: str, message: bytes) -> int:
        await self.release.wait()
        self.published.append(orjson.loads(message))
        return 1


async def test_reports_published_during_a_send_go_as_one_message_in_order() -> None:
    held = HeldRedis()
    replication = Replication(held, "ns", RedisFaults())  # type: ignore[arg-type]
    await replication.publish(Invalidate("first"))
    await asyncio.sleep(0)  # the sender is now waiting on Redis with the first event
    others = [UsageChange("c1", None, "calls", "DELTA", float(n)) for n in range(5)]
    for change in others[:3]:
        await replication.publish(UsageCounted((change,)))
    await replication.publish(Invalidate("between"))
    for change in others[3:]:
        await replication.publish(UsageCounted((change,)))
    held.release.set()
    await replication.flush()
    assert [decode(message) for message in held.published] == [
        Invalidate("first"),
        UsageCounted(tuple(others[:3])),
        Invalidate("between"),
        UsageCounted(tuple(others[3:])),
    ]


async def test_events_waiting_on_a_stuck_redis_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar.cache import replication as module

    monkeypatch.setattr(module, "MAX_OUTBOX", 10)
    held = HeldRedis()
    faults = RedisFaults()
    replication = Replication(held, "ns", faults)  # type: ignore[arg-type]
    await replication.publish(Invalidate("sent first"))
    await asyncio.sleep(0)
    for n in range(25):
        await replication.publish(Invalidate(f"c{n}"))
    assert faults.count == 15  # the 15 oldest waiting were dropped, each counted
    held.release.set()
    await replication.flush()
    assert [decode(m) for m in held.published] == [
        Invalidate("sent first"),
        *(Invalidate(f"c{n}") for n in range(15, 25)),
    ]
