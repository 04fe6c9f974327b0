"""The application factory: wires settings, the upstream and the services into one aiohttp app.

Every client and background task is created in a ``cleanup_ctx`` (after startup) and closed in
reverse order on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from sidecar.api.edge import edge_routes
from sidecar.api.graphql import graphql_passthrough
from sidecar.api.graphql_ws import close_graphql_websockets, graphql_websocket, graphql_ws_ctx
from sidecar.api.grpc.server import GrpcListener, start_grpc
from sidecar.api.http_errors import (
    UNMATCHED,
    answer_parse_errors_as_json,
    rate_limit_parse_error_logs,
)
from sidecar.api.layer import ApiLayer
from sidecar.api.management import (
    MANAGEMENT,
    METRICS,
    Management,
    begin_shutdown,
    management_ctx,
    readiness,
    use_redis_for_readiness,
)
from sidecar.api.openapi import openapi_document
from sidecar.api.rest import routes
from sidecar.api.usage import usage_routes
from sidecar.api.webhooks import webhook_routes
from sidecar.cache.memory import MemoryStore
from sidecar.cache.redis_store import RedisStore
from sidecar.cache.replication import Replication
from sidecar.cache.snapshot import L1Snapshot
from sidecar.cache.tiered import RedisFaults, TieredCache
from sidecar.config import Secret, Settings
from sidecar.entitlements.model import EntitlementsState
from sidecar.entitlements.service import EntitlementService
from sidecar.logs import register_secrets
from sidecar.metrics import Metrics
from sidecar.provisioning import ProvisioningService
from sidecar.redis_connect import RedisClient, connect
from sidecar.redis_namespace import RedisNamespace
from sidecar.services import SERVICES, SETTINGS, Services
from sidecar.upstream.client import StiggClient, Upstream
from sidecar.upstream.documents import ENTITLEMENTS_STATE
from sidecar.upstream.realtime import RealtimeListener
from sidecar.usage.service import UsageService

log = logging.getLogger(__name__)

UPSTREAM = web.AppKey("upstream", Upstream)
# The Stigg URL and key in use (with --local: the embedded emulator's), for the realtime link.
STIGG_LINK = web.AppKey("stigg_link", tuple)
REDIS = web.AppKey[RedisClient]("redis")
REPLICATION = web.AppKey("replication", Replication)
# How long shutdown waits for a background task (replication, realtime) to stop.
BACKGROUND_STOP_SECONDS = 2.0


def _upstream_ctx(
    given: Upstream | None,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """Start the Stigg client (and, with --local, the embedded emulator it talks to)."""

    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        if given is not None:
            app[UPSTREAM] = given
            app[STIGG_LINK] = (settings.stigg.api_url, settings.api_key)
            yield
            return
        emulator: Any = None
        stigg = settings.stigg
        api_key = settings.api_key
        if settings.local_catalog is not None:
            # Imported here so a production start never loads the emulator and its schema.
            from sidecar.emulator import EmulatorServer, load_catalog

            api_key = Secret(secrets.token_urlsafe(32))
            register_secrets(api_key)
            emulator = EmulatorServer(load_catalog(settings.local_catalog), api_key.reveal())
            await emulator.start()
            stigg = replace(stigg, api_url=emulator.url)
            log.info(
                "local mode: Stigg emulator at %s (admin API under %s/admin) seeded from %s",
                emulator.url,
                emulator.base_url,
                settings.local_catalog,
            )
        assert api_key is not None  # load_settings refuses to start without one
        client = StiggClient(stigg, api_key, observer=app[METRICS].observe_upstream)
        if emulator is not None:
            # One throwaway check now, so the emulator's first (slow, cold) answer does not
            # land inside a developer's first check and its 200 ms deadline.
            await client.execute(ENTITLEMENTS_STATE, {"query": {"customerId": "warm-up"}})
        app[UPSTREAM] = client
        app[STIGG_LINK] = (stigg.api_url, api_key)
        try:
            yield
        finally:
            await client.aclose()
            if emulator is not None:
                await emulator.stop()

    return lambda app: ctx(app)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """One Redis client for the whole process (standalone, Cluster or Sentinel)."""
    settings = app[SETTINGS]
    assert settings.redis_url is not None
    client = connect(
        settings.redis_url.reveal(),
        settings.redis,
        username=settings.redis_username,
        password=settings.redis_password,
    )
    app[REDIS] = client
    yield
    await client.aclose()


async def _services_ctx(app: web.Application, *, realtime_link: bool) -> AsyncIterator[None]:
    """The services, each built with its collaborators; ``realtime_link``: listen to Stigg's
    realtime updates (not against a given upstream: it has no websocket)."""
    settings = app[SETTINGS]
    upstream = app[UPSTREAM]
    namespace = RedisNamespace(settings.cache.environment)
    faults = RedisFaults()
    l1 = MemoryStore(settings.cache.memory_budget_bytes, EntitlementsState.approx_bytes)
    l2: RedisStore[EntitlementsState] | None = None
    replication: Replication | None = None
    if REDIS in app:
        prefix = namespace.prefix
        l2 = RedisStore(app[REDIS], prefix, EntitlementsState.to_json, EntitlementsState.from_json)
        replication = app[REPLICATION] = Replication(app[REDIS], prefix, faults)
    entitlements = EntitlementService(
        upstream,
        settings.cache,
        settings.entitlements,
        store=TieredCache(l1, l2, faults),
        replication=replication,
    )
    realtime: RealtimeListener | None = None
    if realtime_link:
        url, api_key = app[STIGG_LINK]
        realtime = RealtimeListener(url, api_key, settings.realtime, entitlements)
    app[SERVICES] = Services(
        entitlements=entitlements,
        usage=UsageService.from_settings(
            upstream, settings, redis=app.get(REDIS), listener=entitlements
        ),
        provisioning=ProvisioningService(upstream, entitlements),
        upstream=upstream,
        realtime=realtime,
    )
    if REDIS in app:
        use_redis_for_readiness(app, app[REDIS], namespace.key("entitlements") + ":")
    yield
    await entitlements.aclose()


async def _snapshot_ctx(app: web.Application) -> AsyncIterator[None]:
    """L1 restored from, and kept in, a local snapshot (a restart answers from recent state)."""
    settings = app[SETTINGS]
    snapshot = L1Snapshot(
        settings.data_dir,
        app[SERVICES].entitlements.l1,
        EntitlementsState.to_json,
        EntitlementsState.from_json,
    )
    snapshot.start(settings.cache.snapshot_interval_seconds)
    try:
        yield
    finally:
        await snapshot.stop()


async def _usage_ctx(app: web.Application) -> AsyncIterator[None]:
    """The usage pipeline: spool opened and flushers started after the services, drained and
    closed before them (cleanup runs in reverse)."""
    usage = app[SERVICES].usage
    await usage.start()
    try:
        yield
    finally:
        await usage.stop()


async def _stop_accepting_usage(app: web.Application) -> None:
    # on_shutdown runs once the listening sockets are closed and before in-flight requests
    # are awaited: from here on new reports get 503 and the drain deadline is running.
    app[SERVICES].usage.stop_accepting()


async def _run_in_background(name: str, coroutine: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(coroutine, name=name)
    yield
    task.cancel()
    # Bounded: a task stuck in a cleanup of its own (a socket that will not close) must not
    # hold up the shutdown behind it.
    done, _ = await asyncio.wait({task}, timeout=BACKGROUND_STOP_SECONDS)
    if not done:
        log.warning("%s did not stop within %.0f s; leaving it", name, BACKGROUND_STOP_SECONDS)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("%s ended with %r", name, task.exception())


async def _replication_ctx(app: web.Application) -> AsyncIterator[None]:
    """Apply other replicas' changes to this replica's L1."""
    replication = app[REPLICATION]
    async for _ in _run_in_background("replication", replication.run(app[SERVICES].entitlements)):
        yield
    # The last invalidations and counts reach the other replicas, if Redis answers soon.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(replication.flush(), BACKGROUND_STOP_SECONDS)


async def _realtime_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keep the cache current from Stigg's realtime link."""
    listener = app[SERVICES].realtime
    assert listener is not None
    async for _ in _run_in_background("realtime", listener.run()):
        yield


# Stigg Sidecar's gRPC API on its own port, served from the same services as REST.
GRPC = web.AppKey("grpc", GrpcListener)


async def _grpc_ctx(app: web.Application) -> AsyncIterator[None]:
    """Started after the services, stopped (drained) before them."""
    settings = app[SETTINGS]
    listener = app[GRPC] = await start_grpc(
        settings.grpc,
        lambda: app[SERVICES],
        token=settings.auth_token,
        max_reports=settings.usage.max_reports_per_request,
        registry=app[METRICS].registry,
        ready=functools.partial(_is_ready, app),
    )
    try:
        yield
    finally:
        await listener.stop(settings.server.shutdown_timeout_seconds)


async def _is_ready(app: web.Application) -> bool:
    ready, _ = await readiness(app)
    return ready


async def _grpc_unready(app: web.Application) -> None:
    # At the start of the drain, as /readyz: no new gRPC traffic is routed here from now on.
    if GRPC in app:
        await app[GRPC].unready()


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def create_app(settings: Settings, *, upstream: Upstream | None = None) -> web.Application:
    """The sidecar's app; pass ``upstream`` to run it against a fake instead of Stigg."""
    register_secrets(*settings.secrets())
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    metrics = Metrics(lambda: app.get(SERVICES))
    layer = ApiLayer(
        metrics,
        access_log=settings.logging.access_log,
        token=settings.auth_token,
        max_body_bytes=settings.server.max_body_bytes,
    )
    app[UNMATCHED] = layer.unmatched
    answer_parse_errors_as_json(app)
    rate_limit_parse_error_logs()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[MANAGEMENT] = Management()
    if settings.management.enabled:
        # First in, last out: probes answer through the whole start and the whole drain.
        app.cleanup_ctx.append(management_ctx())
        app.on_shutdown.append(begin_shutdown)
    app.cleanup_ctx.append(_upstream_ctx(upstream))
    if settings.redis_url is not None:
        app.cleanup_ctx.append(_redis_ctx)
    realtime_link = settings.realtime.enabled and upstream is None
    app.cleanup_ctx.append(functools.partial(_services_ctx, realtime_link=realtime_link))
    if settings.cache.snapshot_interval_seconds > 0:
        app.cleanup_ctx.append(_snapshot_ctx)
    app.cleanup_ctx.append(_usage_ctx)
    app.on_shutdown.append(_stop_accepting_usage)
    if settings.grpc.enabled:
        app.cleanup_ctx.append(_grpc_ctx)
        app.on_shutdown.append(_grpc_unready)
    if settings.redis_url is not None:
        app.cleanup_ctx.append(_replication_ctx)
    if realtime_link:
        app.cleanup_ctx.append(_realtime_ctx)
    app.cleanup_ctx.append(graphql_ws_ctx(STIGG_LINK))
    app.on_shutdown.append(close_graphql_websockets)
    if settings.mcp.enabled:
        # Imported only when enabled: the MCP SDK takes about two seconds to import.
        from sidecar.api.mcp_server import setup_mcp

        setup_mcp(app, settings, lambda: app[SERVICES])
    app.add_routes(
        layer.routes(
            [
                *routes(),
                *usage_routes(),
                *webhook_routes(),
                *edge_routes(app),
                web.post("/graphql", graphql_passthrough),
                web.get("/graphql", graphql_websocket, allow_head=False),
                web.get("/openapi.json", _openapi, allow_head=False),
            ]
        )
    )
    _unwind_on_failed_start(app)
    return app


def _unwind_on_failed_start(app: web.Application) -> None:
    """Close the contexts already entered when a later one fails to start.

    aiohttp's ``run_app`` and test server clean up only after a successful start, so a failed
    one (a taken MCP port, say) left the gRPC server, spool and background tasks open until the
    loop's final sweep closed them in no order, which crashed CPython 3.11 now and then
    (SIGSEGV in an async generator's athrow). ``python -m sidecar`` cleans up its runner
    however the start ends as well; a second cleanup finds nothing left to close."""
    contexts = app.cleanup_ctx

    async def start(app: web.Application) -> None:
        try:
            await contexts._on_startup(app)
        except BaseException:
            with contextlib.suppress(Exception):
                await contexts._on_cleanup(app)
            contexts._exits.clear()
            raise

    app.on_startup[app.on_startup.index(contexts._on_startup)] = start
