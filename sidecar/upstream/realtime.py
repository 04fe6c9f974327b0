"""Stigg's realtime updates: a graphql-transport-ws client that keeps the cache current.

One websocket to the GraphQL URL (``wss://…/graphql``), the API key sent as
``connectionParams.headers["X-API-KEY"]``, subscriptions to ``entitlementsUpdated`` and
``usageUpdated``; keep-alive pings, and reconnection with full-jitter backoff for ever.
Updates missed while disconnected are bounded by the cache's fresh TTL.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from sidecar.config import RealtimeSettings, Secret
from sidecar.entitlements.model import parse_timestamp
from sidecar.upstream import answers, documents
from sidecar.upstream.errors import UpstreamProtocolError

log = logging.getLogger(__name__)

PROTOCOL = "graphql-transport-ws"
ACK_TIMEOUT_SECONDS = 10.0


class RealtimeSink(Protocol):
    """Where updates go (the entitlement service)."""

    async def apply_state(
        self, customer_id: str, resource_id: str | None, raw: Mapping[str, Any]
    ) -> None: ...

    async def apply_usage(
        self,
        customer_id: str,
        resource_id: str | None,
        feature_id: str,
        current_usage: float,
        **period: float | None,
    ) -> bool: ...


class ProtocolViolation(Exception):
    """The server did not follow graphql-transport-ws (or refused us)."""


def websocket_url(graphql_url: str) -> str:
    parts = urlsplit(graphql_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


class RealtimeListener:
    """Runs until cancelled; ``connected`` and ``last_update_at`` describe its health."""

    def __init__(
        self, graphql_url: str, api_key: Secret, settings: RealtimeSettings, sink: RealtimeSink
    ) -> None:
        self._url = websocket_url(graphql_url)
        self._api_key = api_key
        self._settings = settings
        self._sink = sink
        self.connected = False
        self.last_update_at: float | None = None
        self.updates = 0
        self.connections = 0

    async def run(self) -> None:
        failures = 0
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self._session(session)
                    failures = 0  # the server closed a healthy connection: reconnect at once
                except asyncio.CancelledError:
                    raise
                except (aiohttp.ClientError, OSError, TimeoutError, ProtocolViolation) as exc:
                    failures += 1
                    delay = random.uniform(  # noqa: S311 - jitter, not cryptography
                        0, min(self._settings.reconnect_max_seconds, 0.25 * 2**failures)
                    )
                    log.warning(
                        "realtime updates disconnected (%s); reconnecting in %.1f s",
                        type(exc).__name__ if not str(exc) else exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                finally:
                    self.connected = False

    async def _session(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(
            self._url, protocols=(PROTOCOL,), heartbeat=None, autoping=True
        ) as ws:
            await ws.send_bytes(
                orjson.dumps(
                    {
                        "type": "connection_init",
                        "payload": {"headers": {"X-API-KEY": self._api_key.reveal()}},
                    }
                )
            )
            ack = await ws.receive(timeout=ACK_TIMEOUT_SECONDS)
            if _decode(ack).get("type") != "connection_ack":
                raise ProtocolViolation(f"no connection_ack (close code {ws.close_code})")
            for sub_id, operation in (
                ("entitlements", documents.ON_ENTITLEMENTS_UPDATED),
                ("usage", documents.ON_USAGE_UPDATED),
            ):
                await ws.send_bytes(
                    orjson.dumps(
                        {
                            "id": sub_id,
                            "type": "subscribe",
                            "payload": {
                                "query": operation.document,
                                "operationName": operation.name,
                            },
                        }
                    )
                )
            self.connected = True
            self.connections += 1
            log.info("realtime updates connected")
            await self._receive(ws)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        interval = self._settings.ping_interval_seconds
        while True:
            try:
                message = await ws.receive(timeout=interval)
            except TimeoutError:
                # Quiet line: ping, and give up on it when even the pong does not come.
                await ws.send_bytes(b'{"type":"ping"}')
                message = await ws.receive(timeout=interval)
            if message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                raise ProtocolViolation(f"connection closed (code {ws.close_code})")
            payload = _decode(message)
            kind = payload.get("type")
            if kind == "ping":
                await ws.send_bytes(b'{"type":"pong"}')
            elif kind == "next":
                await self._dispatch(payload.get("payload") or {})
            elif kind == "error":
                log.error(
                    "realtime subscription %s refused: %s",
                    payload.get("id"),
                    payload.get("payload"),
                )

    async def _dispatch(self, payload: Mapping[str, Any]) -> None:
        data = payload.get("data")
        data = data if isinstance(data, dict) else {}
        try:
            if "entitlementsUpdated" in data:
                update = answers.entitlements_update(data["entitlementsUpdated"])
                await self._sink.apply_state(update["customerId"], update["resourceId"], update)
            elif "usageUpdated" in data:
                usage = answers.usage_update(data["usageUpdated"])
                await self._sink.apply_usage(
                    usage["customerId"],
                    usage["resourceId"],
                    usage["featureId"],
                    usage["currentUsage"],
                    usage_period_start=parse_timestamp(usage["usagePeriodStart"]),
                    usage_period_end=parse_timestamp(usage["usagePeriodEnd"]),
                )
            else:
                return
        except UpstreamProtocolError as exc:
            log.warning("ignoring a realtime update: %s", exc.message)
            return
        self.updates += 1
        self.last_update_at = time.time()


def _decode(message: aiohttp.WSMessage) -> dict[str, Any]:
    if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return {}
    try:
        decoded = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}
