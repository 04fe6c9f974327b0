"""Replication between replicas over Redis pub/sub: what one replica changes in its cache
reaches every other replica's L1.

Everything cross-replica lives here: the typed events, their wire form, publishing them and
applying the others'. On the wire an event is a JSON object with a version ``v``, a ``type``
and named fields (``{"v": 1, "type": "invalidate", "customerId": ...}``); an event of an
unknown version is logged once per version and ignored, so replicas of different releases can
share a channel during a rolling upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.asyncio.client import PubSub

from sidecar.backoff import full_jitter
from sidecar.cache.tiered import REDIS_FAULTS, RedisFaults
from sidecar.redis_connect import RedisClient, is_cluster
from sidecar.updates import UsageChange, UsageFigure, UsageUpdate

log = logging.getLogger(__name__)

VERSION = 1
# Events waiting to be published while Redis is slow or down (a run of usage counts merges).
MAX_OUTBOX = 10_000


@dataclass(frozen=True, slots=True)
class Invalidate:
    """The customer's state changed: drop it from L1 (L2 has the new one, or nothing)."""

    customer_id: str


@dataclass(frozen=True, slots=True)
class UsageCounted:
    """Reports accepted by one replica, for the others to count at once."""

    changes: tuple[UsageChange, ...]


@dataclass(frozen=True, slots=True)
class UsageConfirmed:
    """Stigg's figures answered to a batch one replica delivered."""

    figures: tuple[UsageFigure, ...]


@dataclass(frozen=True, slots=True)
class Resync:
    """Events may have been missed (pub/sub keeps nothing while disconnected): drop all L1."""


Event = Invalidate | UsageCounted | UsageConfirmed | Resync


class ReplicaSink(Protocol):
    """Where the other replicas' events are applied (the entitlement service)."""

    def drop_local(self, customer_id: str) -> None:
        """Forget the customer's L1 state."""
        ...

    def drop_all_local(self) -> None:
        """Forget all of L1."""
        ...

    async def apply_usage(self, updates: Iterable[UsageUpdate], *, publish: bool = True) -> int:
        """Count usage in L1 (without publishing it again)."""
        ...


def encode(event: Event) -> dict[str, Any]:
    """The wire form of ``event`` (without the sender's ``origin``)."""
    if isinstance(event, Invalidate):
        return {"v": VERSION, "type": "invalidate", "customerId": event.customer_id}
    if isinstance(event, UsageCounted):
        changes = [
            {
                "customerId": c.customer_id,
                "resourceId": c.resource_id,
                "featureId": c.feature_id,
                "updateBehavior": c.behavior,
                "value": c.value,
            }
            for c in event.changes
        ]
        return {"v": VERSION, "type": "usage", "changes": changes}
    if isinstance(event, UsageConfirmed):
        figures = [
            {
                "customerId": f.customer_id,
                "resourceId": f.resource_id,
                "featureId": f.feature_id,
                "currentUsage": f.current_usage,
                "usagePeriodStartEpoch": f.period_start,
                "usagePeriodEndEpoch": f.period_end,
            }
            for f in event.figures
        ]
        return {"v": VERSION, "type": "usage_confirmed", "figures": figures}
    return {"v": VERSION, "type": "resync"}


def decode(wire: Mapping[str, Any]) -> Event:
    """The event of a version-1 wire object; KeyError, TypeError or ValueError if malformed."""
    kind = wire["type"]
    if kind == "invalidate":
        return Invalidate(str(wire["customerId"]))
    if kind == "usage":
        return UsageCounted(tuple(_change(c) for c in wire["changes"]))
    if kind == "usage_confirmed":
        return UsageConfirmed(tuple(_figure(f) for f in wire["figures"]))
    if kind == "resync":
        return Resync()
    raise ValueError(f"unknown event type {kind!r}")


def _change(item: Mapping[str, Any]) -> UsageChange:
    behavior = str(item["updateBehavior"])
    if behavior not in ("DELTA", "SET"):
        raise ValueError(f"unknown updateBehavior {behavior!r}")
    return UsageChange(
        str(item["customerId"]),
        _optional_text(item.get("resourceId")),
        str(item["featureId"]),
        behavior,
        float(item["value"]),
    )


def _figure(item: Mapping[str, Any]) -> UsageFigure:
    start, end = item.get("usagePeriodStartEpoch"), item.get("usagePeriodEndEpoch")
    return UsageFigure(
        str(item["customerId"]),
        _optional_text(item.get("resourceId")),
        str(item["featureId"]),
        float(item["currentUsage"]),
        None if start is None else float(start),
        None if end is None else float(end),
        answers_batch=True,
    )


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


async def apply(event: Event, sink: ReplicaSink) -> None:
    """Apply another replica's ``event`` to this replica's cache."""
    if isinstance(event, Invalidate):
        sink.drop_local(event.customer_id)
    elif isinstance(event, UsageCounted):
        await sink.apply_usage(event.changes, publish=False)
    elif isinstance(event, UsageConfirmed):
        await sink.apply_usage(event.figures, publish=False)
    else:
        sink.drop_all_local()


class Replication:
    """Publishes this replica's events and applies the others' on ``<prefix>:events``.

    On a Cluster the channel is a sharded one (SPUBLISH/SSUBSCRIBE, Redis 7): a message goes
    only to the primary owning the channel's slot and its replicas instead of every node, and
    the subscription follows the slot when it moves or its primary fails over.
    """

    # How often the sharded listener wakes without a message, to notice a lost node.
    POLL_SECONDS = 1.0

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        faults: RedisFaults,
        *,
        reconnect_max: float = 5.0,
    ) -> None:
        self._redis = client
        self._sharded = is_cluster(client)
        self.channel = f"{prefix}:events"
        # Lets a replica ignore its own messages: it already applied the change.
        self.origin = uuid.uuid4().hex
        self._faults = faults
        self._reconnect_max = reconnect_max
        self._unknown_versions: set[Any] = set()
        self.connected = asyncio.Event()
        self._outbox: list[Event] = []
        self._sender: asyncio.Task[None] | None = None

    async def publish(self, event: Event) -> None:
        """Tell the other replicas, without waiting for Redis: events published while a send
        is under way go in the next one, a run of usage counts as one event (one message per
        burst of reports, not one per request). A Redis fault is counted and logged, never
        raised; pub/sub is lossy anyway, and a replica that missed events resyncs. While
        Redis does not answer, at most ``MAX_OUTBOX`` events wait: the oldest are dropped."""
        if len(self._outbox) >= MAX_OUTBOX:
            del self._outbox[0]
            self._faults("publish", OverflowError(f"{MAX_OUTBOX} events wait; dropped the oldest"))
        self._outbox.append(event)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def flush(self) -> None:
        """Wait until what was published so far has been sent (or failed to)."""
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)

    async def _send(self) -> None:
        while self._outbox:
            events, self._outbox = _merged(self._outbox), []
            for event in events:
                message = orjson.dumps({**encode(event), "origin": self.origin})
                try:
                    if self._sharded:
                        await self._redis.spublish(self.channel, message)
                    else:
                        await self._redis.publish(self.channel, message)
                except REDIS_FAULTS as exc:
                    self._faults("publish", exc)

    async def run(self, sink: ReplicaSink) -> None:
        """Apply other replicas' events to ``sink`` until cancelled; survives Redis restarts.

        Events published while disconnected are lost (pub/sub keeps nothing), so every
        (re)connection starts with a ``Resync``.
        """
        attempt = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                if self._sharded:
                    await pubsub.ssubscribe(self.channel)
                else:
                    await pubsub.subscribe(self.channel)
                self.connected.set()
                attempt = 0
                await apply(Resync(), sink)
                async for message in self._messages(pubsub):
                    await self._receive(message, sink)
            except asyncio.CancelledError:
                raise
            except REDIS_FAULTS as exc:
                self.connected.clear()
                delay = full_jitter(attempt, 0.1, self._reconnect_max)
                attempt += 1
                log.warning("redis pub/sub disconnected (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _messages(self, pubsub: PubSub) -> AsyncIterator[Mapping[str, Any]]:
        if not self._sharded:
            async for message in pubsub.listen():
                yield message
            return
        while True:
            message = await pubsub.get_sharded_message(  # type: ignore[attr-defined]
                ignore_subscribe_messages=True, timeout=self.POLL_SECONDS
            )
            if message is not None:
                yield message

    async def _receive(self, message: Mapping[str, Any], sink: ReplicaSink) -> None:
        if message.get("type") not in ("message", "smessage"):
            return
        try:
            wire = orjson.loads(message["data"])
        except orjson.JSONDecodeError:
            log.warning("ignoring malformed message on %s", self.channel)
            return
        if not isinstance(wire, dict) or wire.get("origin") == self.origin:
            return
        version = wire.get("v")
        if version != VERSION:
            if _hashable(version) not in self._unknown_versions:
                self._unknown_versions.add(_hashable(version))
                log.warning(
                    "ignoring events of version %r on %s (this replica reads version %d)",
                    version,
                    self.channel,
                    VERSION,
                )
            return
        try:
            event = decode(wire)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "ignoring a malformed %s event from another replica: %r", wire.get("type"), exc
            )
            return
        await apply(event, sink)


def _merged(events: list[Event]) -> list[Event]:
    """``events`` in order, each run of consecutive ``UsageCounted`` as one."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, UsageCounted) and isinstance(last, UsageCounted):
            merged[-1] = UsageCounted(last.changes + event.changes)
        else:
            merged.append(event)
    return merged


def _hashable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | None) else repr(value)
