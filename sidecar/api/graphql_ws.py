"""``GET /graphql``: apps' realtime websockets (graphql-transport-ws), proxied to Stigg.

Stigg's SDKs subscribe to entitlement and usage updates on the same URL as their GraphQL
API. The sidecar opens the matching websocket to Stigg, puts its own API key into the
client's ``connection_init`` (the key the app sent is dropped and goes nowhere), relays
frames both ways as text, and applies the updates it sees flowing by to its own cache.
Bounded: at most ``realtime.proxyMaxConnections`` at once; both legs are pinged when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from sidecar.api.errors import error_response
from sidecar.config import Secret
from sidecar.services import SERVICES, SETTINGS
from sidecar.upstream.realtime import PROTOCOL, RealtimeSink, apply_update, websocket_url

log = logging.getLogger(__name__)

INIT_TIMEOUT_SECONDS = 10.0
# graphql-transport-ws close codes the proxy itself uses.
_BAD_REQUEST = 4400
_INIT_TIMEOUT = 4408
_UPSTREAM_UNAVAILABLE = 1011
_GOING_AWAY = 1001


class GraphqlWebsocketProxy:
    """The proxied sockets of one app: the Stigg URL and key, the bound, the open pairs."""

    def __init__(
        self,
        graphql_url: str,
        api_key: Secret,
        sink: RealtimeSink,
        *,
        max_connections: int,
        ping_interval_seconds: float,
    ) -> None:
        self._url = websocket_url(graphql_url)
        self._api_key = api_key
        self._sink = sink
        self.max_connections = max_connections
        self._ping = ping_interval_seconds
        self._session: aiohttp.ClientSession | None = None
        self.open: set[web.WebSocketResponse] = set()
        self.refused = 0
        self.updates_seen = 0

    async def close_sockets(self) -> None:
        """Close every proxied socket (at shutdown: they would hold the drain otherwise)."""
        for ws in list(self.open):
            await ws.close(code=_GOING_AWAY, message=b"Sidecar shutting down")

    async def close(self) -> None:
        await self.close_sockets()
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        client = web.WebSocketResponse(protocols=(PROTOCOL,), heartbeat=self._ping)
        if not client.can_prepare(request).ok:
            return error_response(
                400,
                "websocket_required",
                "GET /graphql is Stigg's realtime websocket (graphql-transport-ws); "
                "send queries and mutations with POST",
            )
        if len(self.open) >= self.max_connections:
            self.refused += 1
            log.warning("refused a realtime websocket: %d already open", len(self.open))
            return error_response(
                503, "too_many_websockets", "too many realtime websockets open; retry later"
            )
        await client.prepare(request)
        self.open.add(client)
        try:
            await self._relay(client)
        finally:
            self.open.discard(client)
        return client

    async def _relay(self, client: web.WebSocketResponse) -> None:
        init = await self._connection_init(client)
        if init is None:
            return
        if self._session is None:
            # Created on first use: most sidecars never proxy a socket.
            self._session = aiohttp.ClientSession()
        try:
            upstream = await self._session.ws_connect(
                self._url, protocols=(PROTOCOL,), heartbeat=self._ping
            )
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("realtime websocket to Stigg failed: %s", type(exc).__name__)
            await client.close(code=_UPSTREAM_UNAVAILABLE, message=b"Stigg unavailable")
            return
        async with upstream:
            await upstream.send_str(orjson.dumps(init).decode())
            to_stigg = asyncio.create_task(_pump(client, upstream, None))
            to_app = asyncio.create_task(_pump(upstream, client, self._observe))
            done, pending = await asyncio.wait(
                (to_stigg, to_app), return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            code = _close_code(upstream if to_app in done else client)
            await client.close(code=code)
            await upstream.close(code=_close_code(client) if to_stigg in done else _GOING_AWAY)

    async def _connection_init(self, client: web.WebSocketResponse) -> dict[str, Any] | None:
        """The client's ``connection_init`` with Stigg's key in place of the app's."""
        try:
            first = await client.receive(timeout=INIT_TIMEOUT_SECONDS)
        except TimeoutError:
            await client.close(code=_INIT_TIMEOUT, message=b"Connection initialisation timeout")
            return None
        message = _decode(first)
        if message is None or message.get("type") != "connection_init":
            if first.type not in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                await client.close(code=_BAD_REQUEST, message=b"Expected connection_init")
            return None
        payload = message.get("payload")
        payload = dict(payload) if isinstance(payload, Mapping) else {}
        headers = payload.get("headers")
        headers = dict(headers) if isinstance(headers, Mapping) else {}
        for name in [h for h in headers if h.lower() == "x-api-key"]:
            del headers[name]
        headers["X-API-KEY"] = self._api_key.reveal()
        payload["headers"] = headers
        return {"type": "connection_init", "payload": payload}

    async def _observe(self, message: Mapping[str, Any]) -> None:
        if message.get("type") != "next":
            return
        payload = message.get("payload")
        data = payload.get("data") if isinstance(payload, Mapping) else None
        if not isinstance(data, Mapping):
            return
        # The app chose the fields of its subscription: an entitlements update may lack some
        # the cache needs, so it only invalidates; usage updates carry all they need or fail.
        for field in ("entitlementsUpdated", "entitlementsUpdatedV2"):
            update = data.get(field)
            if isinstance(update, Mapping) and isinstance(update.get("customerId"), str):
                await self._sink.invalidate(update["customerId"])
                self.updates_seen += 1
                return
        if await apply_update(self._sink, data):
            self.updates_seen += 1


Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: Socket, target: Socket, observe: Any) -> None:
    """Relay ``source`` to ``target`` until ``source`` closes; every frame goes as text."""
    async for frame in source:
        if frame.type == WSMsgType.TEXT:
            text = frame.data
        elif frame.type == WSMsgType.BINARY:
            text = frame.data.decode("utf-8", errors="replace")
        else:
            break
        await target.send_str(text)
        if observe is not None:
            message = _decode(frame)
            if message is not None:
                await observe(message)


def _close_code(ws: Socket) -> int:
    code = ws.close_code
    # 1005/1006 mean "no code"/"dropped": not codes one may send.
    return code if code is not None and code not in (1005, 1006) else _GOING_AWAY


def _decode(frame: aiohttp.WSMessage) -> dict[str, Any] | None:
    if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    try:
        decoded = orjson.loads(frame.data)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


GRAPHQL_WS = web.AppKey("graphql_ws", GraphqlWebsocketProxy)


def graphql_ws_ctx(
    stigg_link: web.AppKey[tuple[Any, ...]],
) -> Any:
    """A cleanup context creating the proxy once the Stigg link and services exist."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        url, api_key = app[stigg_link]
        if api_key is None:  # an injected upstream without a key: nothing to proxy to
            yield
            return
        realtime = app[SETTINGS].realtime
        proxy = GraphqlWebsocketProxy(
            url,
            api_key,
            app[SERVICES].entitlements,
            max_connections=realtime.proxy_max_connections,
            ping_interval_seconds=realtime.ping_interval_seconds,
        )
        app[GRAPHQL_WS] = proxy
        yield
        await proxy.close()

    return ctx


async def close_graphql_websockets(app: web.Application) -> None:
    """``on_shutdown`` hook: proxied sockets end before the in-flight requests are awaited."""
    if GRAPHQL_WS in app:
        await app[GRAPHQL_WS].close_sockets()


async def graphql_websocket(request: web.Request) -> web.StreamResponse:
    """``GET /graphql``."""
    if GRAPHQL_WS not in request.app:
        return error_response(503, "realtime_unavailable", "no Stigg link to proxy to")
    return await request.app[GRAPHQL_WS].handle(request)
