"""Cross-replica invalidation over Redis pub/sub: one replica's change reaches every L1."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class RedisBroadcast:
    """Publishes and receives small JSON events on ``<prefix>:events``."""

    def __init__(self, client: redis.Redis, prefix: str, *, reconnect_max: float = 5.0) -> None:
        self._redis = client
        self.channel = f"{prefix}:events"
        # Lets a replica ignore its own messages: it already applied the change.
        self.origin = uuid.uuid4().hex
        self._reconnect_max = reconnect_max
        self.connected = asyncio.Event()

    async def publish(self, event: dict[str, Any]) -> None:
        await self._redis.publish(self.channel, orjson.dumps({**event, "origin": self.origin}))

    async def listen(self, handler: Handler) -> None:
        """Deliver other replicas' events to ``handler`` until cancelled; survives Redis restarts.

        Events published while disconnected are lost (pub/sub keeps nothing), so on every
        (re)connection the handler gets ``{"type": "resync"}`` to drop what may be outdated.
        """
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected.set()
                delay = 0.1
                await handler({"type": "resync"})
                async for message in pubsub.listen():
                    await self._deliver(message, handler)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.connected.clear()
                log.warning("redis pub/sub disconnected (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _deliver(self, message: dict[str, Any], handler: Handler) -> None:
        if message.get("type") != "message":
            return
        try:
            event = orjson.loads(message["data"])
        except orjson.JSONDecodeError:
            log.warning("ignoring malformed message on %s", self.channel)
            return
        if isinstance(event, dict) and event.get("origin") != self.origin:
            await handler(event)
