"""Stigg's realtime updates: a graphql-transport-ws client that keeps the cache current.

One websocket to the GraphQL URL (``wss://…/graphql``), the API key sent as
``connectionParams.headers["X-API-KEY"]``, subscriptions to ``entitlementsUpdated`` and
``usageUpdated``; keep-alive pings, and reconnection with full-jitter backoff for ever.
Updates missed while disconnected are bounded by the cache's fresh TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from sidecar.backoff import full_jitter
from sidecar.config import RealtimeSettings, Secret
from sidecar.timestamps import parse_timestamp
from sidecar.updates import UsageFigure, UsageUpdate
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

    async def apply_usage(self, updates: Iterable[UsageUpdate], *, publish: bool = True) -> int: ...

    async def invalidate(self, customer_id: str) -> None: ...


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
                    delay = full_jitter(failures, 0.25, self._settings.reconnect_max_seconds)
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
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "connection_init",
                        "payload": {"headers": {"X-API-KEY": self._api_key.reveal()}},
                    }
                ).decode()
            )
            ack = await ws.receive(timeout=ACK_TIMEOUT_SECONDS)
            if _decode(ack).get("type") != "connection_ack":
                raise ProtocolViolation(f"no connection_ack (close code {ws.close_code})")
            for sub_id, operation in (
                ("entitlements", documents.ON_ENTITLEMENTS_UPDATED),
                ("usage", documents.ON_USAGE_UPDATED),
            ):
                await ws.send_str(
                    orjson.dumps(
                        {
                            "id": sub_id,
                            "type": "subscribe",
                            "payload": {
                                "query": operation.document,
                                "operationName": operation.name,
                            },
                        }
                    ).decode()
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
                await ws.send_str('{"type":"ping"}')
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
                await ws.send_str('{"type":"pong"}')
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
        if await apply_update(self._sink, data if isinstance(data, dict) else {}):
            self.updates += 1
            self.last_update_at = time.time()


async def apply_update(sink: RealtimeSink, data: Mapping[str, Any]) -> bool:
    """Apply one subscription payload's ``data`` to ``sink``; False when it carries no update
    (or a malformed one). Reads ``usageUpdatedV2`` too, which apps' own SDKs subscribe to."""
    try:
        if "entitlementsUpdated" in data:
            update = answers.entitlements_update(data["entitlementsUpdated"])
            await sink.apply_state(update["customerId"], update["resourceId"], update)
            return True
        if "usageUpdated" in data:
            usage = answers.usage_update(data["usageUpdated"])
            figure = UsageFigure(
                usage["customerId"],
                usage["resourceId"],
                usage["featureId"],
                usage["currentUsage"],
                parse_timestamp(usage["usagePeriodStart"]),
                parse_timestamp(usage["usagePeriodEnd"]),
            )
        elif "usageUpdatedV2" in data:
            update = data["usageUpdatedV2"]
            reference, usage = update["entitlementReference"], update["usage"]
            if reference.get("type") != "FEATURE":
                return False  # credits are not cached
            figure = UsageFigure(
                update["customerId"],
                update.get("resourceId"),
                reference["id"],
                float(usage["currentUsage"]),
                parse_timestamp(usage.get("usagePeriodStart")),
                parse_timestamp(usage.get("usagePeriodEnd")),
            )
        else:
            return False
        # Every replica has its own link to Stigg: nothing to tell the others.
        await sink.apply_usage([figure], publish=False)
    except UpstreamProtocolError as exc:
        log.warning("ignoring a realtime update: %s", exc.message)
        return False
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("ignoring a malformed realtime update: %r", exc)
        return False
    return True


def _decode(message: aiohttp.WSMessage) -> dict[str, Any]:
    if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return {}
    try:
        decoded = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}
