"""The application factory: wires settings, the upstream and the services into one aiohttp app."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from sidecar.api.errors import error_middleware
from sidecar.api.graphql import graphql_passthrough
from sidecar.api.http import SERVICES, Services
from sidecar.api.openapi import openapi_document
from sidecar.api.rest import routes
from sidecar.api.usage import usage_routes
from sidecar.config import Secret, Settings
from sidecar.entitlements.service import EntitlementService
from sidecar.provisioning import ProvisioningService
from sidecar.upstream.client import StiggClient, Upstream
from sidecar.usage.service import UsageService

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)


def build_services(upstream: Upstream, settings: Settings) -> Services:
    return Services(
        entitlements=EntitlementService(upstream),
        usage=UsageService.from_settings(upstream, settings),
        provisioning=ProvisioningService(upstream),
        upstream=upstream,
    )


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the Stigg client (and, with --local, the embedded emulator it talks to)."""
    settings = app[SETTINGS]
    emulator: Any = None
    stigg = settings.stigg
    api_key = settings.api_key
    if settings.local_catalog is not None:
        # Imported here so a production start never loads the emulator and its schema.
        from dataclasses import replace

        from sidecar.emulator import EmulatorServer, load_catalog

        api_key = Secret(secrets.token_urlsafe(32))
        emulator = EmulatorServer(load_catalog(settings.local_catalog), api_key.reveal())
        await emulator.start()
        stigg = replace(stigg, api_url=emulator.url)
        log.info(
            "local mode: Stigg emulator at %s seeded from %s", emulator.url, settings.local_catalog
        )
    assert api_key is not None  # load_settings refuses to start without one
    client = StiggClient(stigg, api_key)
    app[SERVICES] = build_services(client, settings)
    try:
        yield
    finally:
        await client.aclose()
        if emulator is not None:
            await emulator.stop()


async def _usage_ctx(app: web.Application) -> AsyncIterator[None]:
    """The usage pipeline: spool opened and flushers started after the upstream, drained and
    closed before it (cleanup runs in reverse)."""
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


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def create_app(settings: Settings, *, upstream: Upstream | None = None) -> web.Application:
    """The sidecar's app; pass ``upstream`` to run it against a fake instead of Stigg."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[error_middleware(settings.server.max_body_bytes)],
    )
    app[SETTINGS] = settings
    if upstream is None:
        app.cleanup_ctx.append(_upstream_ctx)
    else:
        app[SERVICES] = build_services(upstream, settings)
    app.cleanup_ctx.append(_usage_ctx)
    app.on_shutdown.append(_stop_accepting_usage)
    app.add_routes(routes())
    app.add_routes(usage_routes())
    app.router.add_post("/graphql", graphql_passthrough)
    app.router.add_get("/openapi.json", _openapi, allow_head=False)
    return app
