"""The app-facing API's outermost middleware: request id, metrics, access log; and the optional
bearer-token check.

One middleware for the first three keeps the hot path at one extra await: a
``time.perf_counter()`` pair, a dict lookup of pre-resolved metric children, and (when the
access log is on) one log record.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import re
import secrets
import time
from typing import Any

from aiohttp import web

from sidecar.api.errors import Handler, error_response
from sidecar.config import Secret
from sidecar.logs import REQUEST_ID, ROUTE
from sidecar.metrics import UNMATCHED, Metrics

_access_log = logging.getLogger("sidecar.access")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's id is kept if it is a short token; anything else (too long, spaces, quotes,
# control characters) could forge log lines or bloat them, so a fresh id replaces it.
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
# Never logged: probes every few seconds and scrapes would drown the requests that matter.
_QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
# With accessLog "errors", successful requests faster than this are not logged.
SLOW_SECONDS = 1.0
# Request ids: a random per-process prefix and a counter, unique and nearly free to make.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)
# Webhooks authenticate with Stigg's shared secret instead of the bearer token.
_BEARER_EXEMPT = frozenset({"/webhooks/stigg"})


def route_of(request: web.Request) -> str:
    """The route's template (``/v1/customers/{customerId}``), never the raw path."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    return resource.canonical


def observe_middleware(metrics: Metrics, *, access_log: str) -> Any:
    """Request id in and out, per-route metrics, access-log lines (``all``, ``errors``, ``off``)."""
    log_all = access_log == "all"
    log_errors = access_log == "errors"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        given = request.headers.get(REQUEST_ID_HEADER)
        if given is not None and _SANE_ID.fullmatch(given):
            request_id = given
        else:
            request_id = f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"
        route = route_of(request)
        id_token = REQUEST_ID.set(request_id)
        route_token = ROUTE.set(route)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        finally:
            seconds = time.perf_counter() - started
            metrics.observe_http(route, request.method, status, seconds)
            logged = log_all or (log_errors and (status >= 400 or seconds >= SLOW_SECONDS))
            if logged and request.path not in _QUIET_PATHS:
                _access_log.info(
                    "%s %s %d %.2f ms",
                    request.method,
                    request.path,
                    status,
                    seconds * 1000,
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "durationMs": round(seconds * 1000, 3),
                    },
                )
            REQUEST_ID.reset(id_token)
            ROUTE.reset(route_token)

    return middleware


def bearer_middleware(token: Secret) -> Any:
    """Require ``Authorization: Bearer <token>`` (constant-time compare) on the API."""
    expected = token.reveal().encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _BEARER_EXEMPT:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            valid = hmac.compare_digest(given.strip().encode(), expected)
            if not (valid and scheme.lower() == "bearer"):
                return error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (Authorization: Bearer <SIDECAR_AUTH_TOKEN>)",
                    headers={"WWW-Authenticate": 'Bearer realm="stigg-sidecar"'},
                )
        return await handler(request)

    return middleware
