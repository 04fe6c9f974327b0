"""Stigg's realtime subscriptions over graphql-transport-ws: ``entitlementsUpdated(V2)`` and
``usageUpdated(V2)`` pushed whenever the emulator's state changes, as text frames (graphql-ws
clients reject binary ones). ``packagePublished`` and ``creditBalanceUpdated`` are accepted
and never fire: a catalog file is never republished and credits are not emulated."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from graphql import OperationType, execute

from sidecar.emulator.resolvers import prepare, resolve_field, stigg_schema
from sidecar.emulator.state import EmulatorState, StateEvent

log = logging.getLogger(__name__)

PROTOCOL = "graphql-transport-ws"
SUPPORTED = {
    "entitlementsUpdated",
    "entitlementsUpdatedV2",
    "usageUpdated",
    "usageUpdatedV2",
    "packagePublished",
    "creditBalanceUpdated",
}
# Stigg sends the account of the environment; the emulator has a single one.
ACCOUNT_ID = "emulator"
INIT_TIMEOUT_SECONDS = 10.0


class _Connection:
    """One client's subscriptions; state events are queued and sent in order."""

    def __init__(self, ws: web.WebSocketResponse, state: EmulatorState) -> None:
        self.ws = ws
        self.state = state
        self.subscriptions: dict[str, tuple[Any, Any, Mapping[str, Any] | None]] = {}
        self.events: asyncio.Queue[StateEvent] = asyncio.Queue()

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    def subscribe(self, message: Mapping[str, Any]) -> str | None:
        """Register a subscription; returns an error message when it cannot be served."""
        payload = message.get("payload") or {}
        prepared = prepare(str(payload.get("query", "")))
        if prepared.document is None:
            return "; ".join(str(e.get("message")) for e in prepared.errors) or "invalid document"
        operation = prepared.operation(payload.get("operationName"))
        if isinstance(operation, str):
            return operation
        if operation.kind is not OperationType.SUBSCRIPTION:
            return "only subscription operations are accepted over websocket"
        unsupported = set(operation.root_fields) - SUPPORTED
        if unsupported:
            return f"{sorted(unsupported)[0]} is not supported by the emulator"
        self.subscriptions[str(message["id"])] = (prepared, operation, payload.get("variables"))
        return None

    async def push(self, event: StateEvent) -> None:
        roots = _root_values(self.state, event)
        for sub_id, (prepared, operation, variables) in list(self.subscriptions.items()):
            for field, value in roots.items():
                if field not in operation.root_fields:
                    continue
                result = execute(
                    stigg_schema(),
                    prepared.document,
                    root_value={field: value},
                    context_value=self.state,
                    variable_values=dict(variables) if variables else None,
                    operation_name=operation.name,
                    field_resolver=resolve_field,
                )
                payload: dict[str, Any] = {"data": result.data}  # type: ignore[union-attr]
                if result.errors:  # type: ignore[union-attr]
                    payload["errors"] = [e.formatted for e in result.errors]  # type: ignore[union-attr]
                await self.send({"id": sub_id, "type": "next", "payload": payload})


def _root_values(state: EmulatorState, event: StateEvent) -> dict[str, Any]:
    kind, customer_id = event[0], event[1]
    if customer_id is None:
        return {}
    if kind == "entitlements":
        resource_id = event[2]
        snapshot = state.entitlements_state(customer_id, resource_id)
        common = {
            "accountId": ACCOUNT_ID,
            "environmentId": state.shapes.environment_id,
            "customerId": customer_id,
            "resourceId": resource_id,
            "accessDeniedReason": snapshot["accessDeniedReason"],
        }
        return {
            "entitlementsUpdated": {
                **common,
                "__typename": "EntitlementsUpdated",
                "entitlements": snapshot["entitlements"],
            },
            "entitlementsUpdatedV2": {
                **common,
                "__typename": "EntitlementsUpdatedV2",
                "entitlements": snapshot["entitlementsV2"],
            },
        }
    if kind == "usage":
        feature_id, resource_id = event[2], event[3]
        snapshot = state.entitlements_state(customer_id, resource_id)
        entitlement = next(
            (e for e in snapshot["entitlements"] if e["feature"]["refId"] == feature_id), None
        )
        if entitlement is None:
            return {}
        return {
            "usageUpdatedV2": {
                "__typename": "UsageUpdatedV2",
                "accountId": ACCOUNT_ID,
                "environmentId": state.shapes.environment_id,
                "customerId": customer_id,
                "resourceId": resource_id,
                "entitlementReference": {"id": feature_id, "type": "FEATURE"},
                "usage": {
                    "currentUsage": entitlement.get("currentUsage") or 0.0,
                    "usagePeriodStart": entitlement.get("usagePeriodStart"),
                    "usagePeriodEnd": entitlement.get("usagePeriodEnd"),
                    "usageUpdatedAt": entitlement.get("usageUpdatedAt")
                    or entitlement.get("entitlementUpdatedAt"),
                },
            },
            "usageUpdated": {
                "__typename": "UsageUpdated",
                "entitlement": entitlement,
                "usage": {
                    "__typename": "UsageMeasurementUpdated",
                    "customerId": customer_id,
                    "resourceId": resource_id,
                    "featureId": feature_id,
                    "currentUsage": entitlement.get("currentUsage") or 0.0,
                    "usagePeriodStart": _epoch_ms(entitlement.get("usagePeriodStart")),
                    "usagePeriodEnd": _epoch_ms(entitlement.get("usagePeriodEnd")),
                    "nextResetDate": _epoch_ms(entitlement.get("nextResetDate")),
                },
            },
        }
    return {}


def _epoch_ms(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


async def websocket_handler(
    request: web.Request,
    state: EmulatorState,
    api_key: bytes,
    open_sockets: set[web.WebSocketResponse],
) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=(PROTOCOL,))
    await ws.prepare(request)
    open_sockets.add(ws)
    try:
        return await _serve(ws, state, api_key)
    finally:
        open_sockets.discard(ws)


async def _serve(
    ws: web.WebSocketResponse, state: EmulatorState, api_key: bytes
) -> web.WebSocketResponse:
    if ws.ws_protocol != PROTOCOL:
        await ws.close(code=4406, message=b"Subprotocol not acceptable")
        return ws
    connection = _Connection(ws, state)
    try:
        first = await ws.receive(timeout=INIT_TIMEOUT_SECONDS)
    except TimeoutError:
        await ws.close(code=4408, message=b"Connection initialisation timeout")
        return ws
    init = _decode(first)
    headers = ((init or {}).get("payload") or {}).get("headers") or {}
    presented = str(headers.get("X-API-KEY", "")).encode()
    if init is None or init.get("type") != "connection_init":
        await ws.close(code=4400, message=b"Expected connection_init")
        return ws
    if not hmac.compare_digest(presented, api_key):
        await ws.close(code=4403, message=b"Forbidden")
        return ws
    await connection.send({"type": "connection_ack"})
    remove = state.add_listener(connection.events.put_nowait)
    pusher = asyncio.create_task(_pump(connection))
    try:
        async for raw in ws:
            message = _decode(raw)
            if message is None:
                if raw.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
                continue
            kind = message.get("type")
            if kind == "ping":
                await connection.send({"type": "pong"})
            elif kind == "subscribe" and "id" in message:
                error = connection.subscribe(message)
                if error is not None:
                    await connection.send(
                        {"id": message["id"], "type": "error", "payload": [{"message": error}]}
                    )
            elif kind == "complete" and "id" in message:
                connection.subscriptions.pop(str(message["id"]), None)
    finally:
        remove()
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
    return ws


async def _pump(connection: _Connection) -> None:
    while True:
        event = await connection.events.get()
        try:
            await connection.push(event)
        except ConnectionResetError:
            return


def _decode(message: Any) -> dict[str, Any] | None:
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    try:
        decoded = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None
