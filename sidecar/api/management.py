"""The management port: ``/livez``, ``/readyz`` and ``/metrics`` for kubelet and Prometheus.

A second aiohttp app on its own listener (default ``0.0.0.0:8081``), so probes and scrapes
reach it from outside the pod while the app-facing API stays on loopback. It is started by a
cleanup context of the main app, before the services, and stopped after them: ``/livez``
answers through the whole start and the whole drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from redis.exceptions import RedisClusterException, RedisError

from sidecar.api.errors import error_middleware
from sidecar.api.http import json_response
from sidecar.api.http_errors import answer_parse_errors_as_json
from sidecar.config import StartupError
from sidecar.listeners import CappedTCPSite
from sidecar.metrics import CONTENT_TYPE, Metrics
from sidecar.redis_connect import RedisClient
from sidecar.services import SERVICES, SETTINGS
from sidecar.upstream.client import Upstream
from sidecar.upstream.documents import ENTITLEMENTS_STATE
from sidecar.upstream.errors import UpstreamError

log = logging.getLogger(__name__)

METRICS = web.AppKey("metrics", Metrics)
_MAIN = web.AppKey("main_app", web.Application)
L2_PROBE_TIMEOUT_SECONDS = 0.5
UPSTREAM_PROBE_TIMEOUT_SECONDS = 2.0
PROBE_CUSTOMER_ID = "stigg-sidecar-readiness-probe"


@dataclass
class Management:
    """The management listener of one main app, and the readiness it has latched."""

    runner: web.AppRunner | None = None
    port: int | None = None
    ready_since: float | None = None
    shutting_down: bool = False
    reasons: dict[str, Any] = field(default_factory=dict)


MANAGEMENT = web.AppKey("management", Management)


async def _livez(request: web.Request) -> web.Response:
    # Answering at all is the point: the process and its event loop are alive. Nothing here
    # touches Stigg or Redis, so their outages never get the pod restarted.
    # "UP" as Stigg's Sidecar answers, so probes and checks written for it keep working.
    return json_response({"status": "UP"})


async def _readyz(request: web.Request) -> web.Response:
    main = request.app[_MAIN]
    ready, details = await readiness(main)
    # Said, not failed on: an unready sidecar would take the app's whole pod out of service.
    if SERVICES in main and main[SERVICES].usage.spool.disk_full:
        details["usageSpool"] = "diskFull"
    # Stigg Sidecar's body ({"status": "UP"}) with this sidecar's details beside it.
    return json_response(
        {"status": "UP" if ready else "DOWN", "ready": ready, **details},
        status=200 if ready else 503,
    )


async def _metrics(request: web.Request) -> web.Response:
    body = await request.app[_MAIN][METRICS].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def readiness(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """Ready once the services run and checks can be answered with real data: Stigg answered
    since start, or there is cached state (L1, L2) or configured fallbacks to answer from.
    Latched: once ready, Stigg (or Redis) going down never makes it unready, since pulling the
    app's pod out of service would turn a Stigg outage into the app's own outage."""
    state = app[MANAGEMENT]
    if state.shutting_down:
        return False, {"reasons": {"shuttingDown": True}}
    if SERVICES not in app:
        return False, {"reasons": {"services": "starting"}}
    services = app[SERVICES]
    settings = app[SETTINGS]
    if state.ready_since is not None:
        return True, {"since": state.ready_since, "reasons": state.reasons}
    entitlements = services.entitlements
    answered_at = services.upstream.health().last_answer_at
    if answered_at is None:
        # An unready pod gets no traffic, so no check would ever reach Stigg: ask it now.
        await _probe_upstream(services.upstream)
        answered_at = services.upstream.health().last_answer_at
    reasons: dict[str, Any] = {
        "upstreamAnswered": answered_at is not None,
        "cachedStates": len(entitlements.l1),
        "fallbacksConfigured": bool(settings.entitlements.fallback)
        or settings.entitlements.default_has_access,
    }
    ready = reasons["upstreamAnswered"] or reasons["cachedStates"] > 0
    ready = ready or reasons["fallbacksConfigured"]
    if not ready and app.get(_REDIS_KEY) is not None:
        reasons["sharedCache"] = await _l2_has_state(app)
        ready = reasons["sharedCache"]
    if ready:
        state.ready_since = time.time()
        state.reasons = reasons
        log.info("ready: %s", reasons)
    return ready, {"reasons": reasons}


async def _probe_upstream(upstream: Upstream) -> None:
    """One cheap read (a customer that does not exist answers with an error: Stigg is up)."""
    query = {"query": {"customerId": PROBE_CUSTOMER_ID}}
    try:
        async with asyncio.timeout(UPSTREAM_PROBE_TIMEOUT_SECONDS):
            await upstream.execute(ENTITLEMENTS_STATE, query)
    except (UpstreamError, TimeoutError):
        pass


_REDIS_KEY = web.AppKey[RedisClient]("management_redis")
_PREFIX = web.AppKey("management_l2_prefix", str)


async def _l2_has_state(app: web.Application) -> bool:
    """Whether Redis holds any cached entitlement state of this environment (other replicas'
    fetches): a restarted pod can serve from it while Stigg is down."""
    client = app[_REDIS_KEY]
    try:
        async with asyncio.timeout(L2_PROBE_TIMEOUT_SECONDS):
            async for _ in client.scan_iter(match=app[_PREFIX] + "*", count=1000):
                return True
    except (RedisError, RedisClusterException, OSError, TimeoutError):
        return False
    return False


def use_redis_for_readiness(app: web.Application, client: RedisClient, prefix: str) -> None:
    """Let readiness count state other replicas left in Redis (L2)."""
    app[_REDIS_KEY] = client
    app[_PREFIX] = prefix


def management_app(main: web.Application) -> web.Application:
    app = web.Application(middlewares=[error_middleware(1024)])
    answer_parse_errors_as_json(app)
    app[_MAIN] = main
    app.router.add_get("/livez", _livez, allow_head=True)
    app.router.add_get("/readyz", _readyz, allow_head=True)
    app.router.add_get("/metrics", _metrics, allow_head=False)
    return app


def management_ctx() -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """A cleanup context serving the management port for as long as the main app runs."""

    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS].management
        state = app[MANAGEMENT]
        runner = web.AppRunner(
            management_app(app),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=settings.idle_timeout_seconds,
        )
        await runner.setup()
        site = CappedTCPSite(
            runner,
            settings.host,
            settings.port,
            max_connections=settings.max_connections,
            name="management",
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            where = f"{settings.host}:{settings.port}"
            raise StartupError(
                f"management port cannot listen on {where}: {exc.strerror}; set "
                "management.port (SIDECAR_MANAGEMENT_PORT) to a free port, or "
                "management.enabled: false"
            ) from None
        state.runner = runner
        for address in runner.addresses:
            state.port = int(address[1])
            break
        log.info("management port (/livez, /readyz, /metrics) on %s:%s", settings.host, state.port)
        try:
            yield
        finally:
            await runner.cleanup()

    return lambda app: ctx(app)


async def begin_shutdown(app: web.Application) -> None:
    """SIGTERM: unready at once, so no new traffic is routed here while in-flight work drains."""
    app[MANAGEMENT].shutting_down = True
