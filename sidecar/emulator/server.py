"""The emulator over HTTP: Stigg's ``/graphql`` (API key, Apollo-style errors), injected
faults, and loopback-only admin endpoints for tests."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from graphql import OperationType

from sidecar.emulator import errors
from sidecar.emulator.catalog import Catalog
from sidecar.emulator.faults import FaultConfig, FaultConfigError, Faults
from sidecar.emulator.periods import Clock, iso
from sidecar.emulator.realtime import websocket_handler
from sidecar.emulator.resolvers import Operation, PreparedDocument, prepare, run, stigg_schema
from sidecar.emulator.state import EmulatorError, EmulatorState

log = logging.getLogger(__name__)

DEFAULT_MAX_HANG_SECONDS = 120.0
MAX_BODY_BYTES = 8 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HttpCounters:
    requests: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    faulted_requests: int = 0


class Emulator:
    """Everything one emulator app holds: the state, the key, faults and counters."""

    def __init__(
        self,
        catalog: Catalog,
        api_key: str,
        *,
        clock: Clock | None = None,
        max_hang_seconds: float = DEFAULT_MAX_HANG_SECONDS,
    ) -> None:
        if not api_key:
            raise ValueError("the emulator needs a non-empty API key")
        self.state = EmulatorState(catalog, clock)
        self.faults = Faults()
        self.counters = HttpCounters()
        self.max_hang_seconds = max_hang_seconds
        self._api_key = api_key.encode()
        self.websockets: set[web.WebSocketResponse] = set()
        # Always answer nullable lookups of unknown entities with null (the nullForMissing
        # fault does it for matching requests only); kept across resets.
        self.null_for_missing = False

    def authorized(self, request: web.Request) -> bool:
        presented = request.headers.get("X-API-KEY", "").encode()
        return hmac.compare_digest(presented, self._api_key)

    @property
    def api_key(self) -> bytes:
        return self._api_key

    def reset(self) -> None:
        self.faults.clear()
        self.counters = HttpCounters()
        self.state.reset()


EMULATOR = web.AppKey("emulator", Emulator)


def create_emulator_app(
    catalog: Catalog,
    api_key: str,
    *,
    clock: Clock | None = None,
    max_hang_seconds: float = DEFAULT_MAX_HANG_SECONDS,
) -> web.Application:
    """An aiohttp app emulating Stigg's GraphQL API for ``catalog``, guarded by ``api_key``."""
    stigg_schema()  # built now rather than inside the first request's timeout
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
    emulator = Emulator(catalog, api_key, clock=clock, max_hang_seconds=max_hang_seconds)
    app[EMULATOR] = emulator
    app.router.add_post("/graphql", _graphql)
    app.router.add_get("/graphql", _websocket)
    app.router.add_post("/admin/realtime/disconnect", _disconnect_realtime)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/admin/faults", _get_faults)
    app.router.add_post("/admin/faults", _set_faults)
    app.router.add_delete("/admin/faults", _clear_faults)
    app.router.add_get("/admin/counters", _counters)
    app.router.add_get("/admin/usage", _usage)
    app.router.add_post("/admin/reset", _reset)
    app.router.add_get("/admin/clock", _get_clock)
    app.router.add_post("/admin/clock", _advance_clock)

    async def release_hung_requests(_app: web.Application) -> None:
        emulator.faults.clear()
        for ws in list(emulator.websockets):
            await ws.close(code=1001, message=b"Server shutdown")

    # Hung requests would otherwise hold shutdown for up to max_hang_seconds.
    app.on_shutdown.append(release_hung_requests)
    return app


# --- /graphql ---------------------------------------------------------------------------------


async def _websocket(request: web.Request) -> web.StreamResponse:
    """Realtime subscriptions (graphql-transport-ws), as Stigg serves them on the same URL."""
    emulator = request.app[EMULATOR]
    return await websocket_handler(request, emulator.state, emulator.api_key, emulator.websockets)


async def _disconnect_realtime(request: web.Request) -> web.Response:
    """Drop every realtime connection (to test that clients reconnect)."""
    emulator = request.app[EMULATOR]
    closed = len(emulator.websockets)
    for ws in list(emulator.websockets):
        await ws.close(code=1012, message=b"Service restart")
    return _json({"closed": closed})


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _graphql_error(status: int, message: str, code: str) -> web.Response:
    return errors.error_response(status, message, code)


@dataclass(frozen=True)
class _Request:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None


def _decode(raw: bytes) -> _Request | str:
    """The GraphQL request in ``raw``, or what is wrong with it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "the request body is not valid JSON"
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        return "GraphQL operations must contain a non-empty `query`"
    variables = body.get("variables")
    if variables is not None and not isinstance(variables, dict):
        return "`variables` must be a JSON object"
    operation_name = body.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return "`operationName` must be a string"
    return _Request(query, variables, operation_name)


async def _graphql(request: web.Request) -> web.StreamResponse:
    emulator = request.app[EMULATOR]
    emulator.counters.requests += 1
    decoded = _decode(await request.read())
    # The operation is worked out first because it decides which faults apply.
    prepared: PreparedDocument | None = None
    chosen: Operation | str | None = None
    if isinstance(decoded, _Request):
        prepared = prepare(decoded.query)
        if prepared.document is not None:
            chosen = prepared.operation(decoded.operation_name)

    fault = emulator.faults.take(chosen.root_fields if isinstance(chosen, Operation) else ())
    if fault is not None:
        emulator.counters.faulted_requests += 1
        faulted = await _apply_fault(emulator, fault, emulator.faults.gate())
        if faulted is not None:
            return faulted

    if not emulator.authorized(request):
        return errors.unauthenticated()
    if isinstance(decoded, str):
        return _graphql_error(400, decoded, "BAD_REQUEST")
    if prepared is None or prepared.document is None:
        return _json({"errors": list(prepared.errors if prepared else ())}, 400)
    if not isinstance(chosen, Operation):
        return _graphql_error(400, str(chosen), "OPERATION_RESOLUTION_FAILED")
    if chosen.kind is OperationType.SUBSCRIPTION:
        return _graphql_error(400, "Subscriptions are not served over HTTP POST", "BAD_REQUEST")
    # Set and used with no await between: requests cannot see each other's setting.
    emulator.state.null_for_missing = emulator.null_for_missing or (
        fault is not None and fault.null_for_missing
    )
    answer = run(emulator.state, prepared, chosen, decoded.variables)
    if answer.executed:
        emulator.counters.calls.update(chosen.root_fields)
    return _json(answer.body, answer.status)


async def _apply_fault(
    emulator: Emulator, fault: FaultConfig, release: asyncio.Event
) -> web.Response | None:
    """Delay or hold the request; the error response to send instead of executing, if any."""
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.hang and await Faults.hold(release, emulator.max_hang_seconds):
        # Released by clearing the faults: the request proceeds as if nothing happened.
        return None
    if fault.status is None:
        return None
    if fault.status == 401:
        return errors.unauthenticated()
    if fault.status == 429:
        return errors.rate_limited()
    if fault.status >= 500:
        return errors.gateway_error(fault.status)
    return _graphql_error(fault.status, f"Emulated fault: HTTP {fault.status}", "BAD_REQUEST")


async def _healthz(_request: web.Request) -> web.Response:
    return _json({"status": "ok"})


# --- admin ------------------------------------------------------------------------------------


def _admin_error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


async def _admin_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _AdminBadRequest("the request body is not valid JSON") from None


class _AdminBadRequest(Exception):
    pass


async def _get_faults(request: web.Request) -> web.Response:
    config = request.app[EMULATOR].faults.config
    return _json(config.to_json() if config is not None else None)


async def _set_faults(request: web.Request) -> web.Response:
    try:
        config = FaultConfig.parse(await _admin_body(request))
    except (FaultConfigError, _AdminBadRequest) as exc:
        return _admin_error(400, "invalid_fault", str(exc))
    request.app[EMULATOR].faults.configure(config)
    return _json(config.to_json())


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[EMULATOR].faults.clear()
    return _json(None)


async def _counters(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    http, state = emulator.counters, emulator.state.counters
    return _json(
        {
            "requests": http.requests,
            "calls": dict(http.calls),
            "bulkSizes": list(state.bulk_sizes),
            "usagesApplied": state.usages_applied,
            "duplicateKeys": state.duplicate_keys,
            "eventsAccepted": state.events_accepted,
            "duplicateEvents": state.duplicate_events,
            "eventBatchSizes": list(state.event_batch_sizes),
            "faultedRequests": http.faulted_requests,
        }
    )


async def _usage(request: web.Request) -> web.Response:
    query = request.query
    customer_id, feature_id = query.get("customerId"), query.get("featureId")
    if not customer_id or not feature_id:
        return _admin_error(400, "bad_request", "customerId and featureId are required")
    resource_id = query.get("resourceId") or None
    try:
        usage = request.app[EMULATOR].state.current_usage(customer_id, feature_id, resource_id)
    except EmulatorError as exc:
        return _admin_error(404, exc.code, exc.message)
    return _json(
        {
            "customerId": customer_id,
            "featureId": feature_id,
            "resourceId": resource_id,
            "currentUsage": usage,
        }
    )


async def _reset(request: web.Request) -> web.Response:
    request.app[EMULATOR].reset()
    return _json({"reset": True})


async def _get_clock(request: web.Request) -> web.Response:
    return _json({"now": iso(request.app[EMULATOR].state.clock.now())})


async def _advance_clock(request: web.Request) -> web.Response:
    try:
        body = await _admin_body(request)
    except _AdminBadRequest as exc:
        return _admin_error(400, "bad_request", str(exc))
    seconds = body.get("advanceSeconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        return _admin_error(400, "bad_request", "advanceSeconds must be a non-negative number")
    clock = request.app[EMULATOR].state.clock
    clock.advance(float(seconds))
    return _json({"now": iso(clock.now())})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 as JSON in the shape of the endpoint, never HTML."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if request.path == "/graphql":
            return _graphql_error(exc.status, exc.reason, "BAD_REQUEST")
        return _admin_error(exc.status, "http_error", exc.reason)


# --- running it -------------------------------------------------------------------------------


def _check_loopback(host: str) -> None:
    # The admin endpoints have no authentication: they must never be reachable from outside.
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the emulator only binds to loopback addresses, not {host!r}")


class EmulatorServer:
    """The emulator on a real socket (``port=0``: a free ephemeral port)."""

    def __init__(
        self,
        catalog: Catalog,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock | None = None,
        max_hang_seconds: float = DEFAULT_MAX_HANG_SECONDS,
    ) -> None:
        _check_loopback(host)
        self._app = create_emulator_app(
            catalog, api_key, clock=clock, max_hang_seconds=max_hang_seconds
        )
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def emulator(self) -> Emulator:
        return self._app[EMULATOR]

    @property
    def state(self) -> EmulatorState:
        return self._app[EMULATOR].state

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the emulator is not started")
        return self._bound_port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/graphql"

    async def start(self) -> None:
        if self._runner is not None:
            return
        # Access logs off: benchmarks push thousands of requests through.
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self._app[EMULATOR].faults.clear()
            await runner.cleanup()

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
