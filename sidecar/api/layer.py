"""The app-facing API's one layer around every handler: the bearer token, errors as JSON, the
per-route metrics, request ids and the access log.

One middleware, because each one aiohttp chains costs a call and a coroutine per request, and
the work in it is only what a warm check needs: a ``perf_counter`` pair, a dict lookup of the
route's counts (made once per route) and one header lookup. A request id is made only when
the client sent one (it is echoed) or the answer is an error, slow, or logged; nothing is put
in context variables.
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
from aiohttp.web_urldispatcher import AbstractRoute

from sidecar.api.errors import Handler, error_answer, error_response, route_of
from sidecar.config import Secret
from sidecar.metrics import HttpCounts, Metrics

_access_log = logging.getLogger("sidecar.access")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's id is kept if it is a short token; anything else (too long, spaces, quotes,
# control characters) could forge log lines or bloat them, so a fresh id replaces it.
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
# Never logged: probes every few seconds and scrapes would drown the requests that matter.
_QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
# With accessLog "errors", successful requests slower than this are logged too.
SLOW_SECONDS = 1.0
# Request ids: a random per-process prefix and a counter, unique and nearly free to make.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)
# Webhooks authenticate with Stigg's shared secret instead of the bearer token.
_BEARER_EXEMPT = frozenset({"/webhooks/stigg"})
# Methods counted under their own name on unmatched paths; any other is "other", so a client
# cannot make up label values.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def api_layer(
    metrics: Metrics, *, access_log: str, token: Secret | None, max_body_bytes: int
) -> Any:
    """The middleware; ``access_log`` is ``all``, ``errors`` or ``off``; ``token``, when set,
    is required as ``Authorization: Bearer <token>``."""
    log_all = access_log == "all"
    log_errors = access_log == "errors"
    expected = token.reveal().encode() if token is not None else None
    counts_by_route: dict[AbstractRoute, HttpCounts] = {}

    def counts_of(request: web.Request) -> HttpCounts:
        route = request.match_info.route
        counts = counts_by_route.get(route)
        if counts is not None:
            return counts
        if route.resource is None:  # no route matched: aiohttp makes a new one per request
            method = request.method if request.method in _KNOWN_METHODS else "other"
            return metrics.http_counts(route_of(request), method)
        counts = counts_by_route[route] = metrics.http_counts(route_of(request), request.method)
        return counts

    @web.middleware
    async def layer(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            if expected is not None and not _authorized(request, expected):
                response: web.StreamResponse = _unauthorized()
            else:
                response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - error_answer re-raises what it does not answer
            response = error_answer(request, exc, max_body_bytes)
        seconds = time.perf_counter() - started
        status = response.status
        counts_of(request).observe(status, seconds)
        given = request.headers.get(REQUEST_ID_HEADER)
        noted = status >= 400 or seconds >= SLOW_SECONDS
        if given is None and not noted and not log_all:
            return response  # the hot path ends here
        request_id = given if given is not None and _SANE_ID.fullmatch(given) else _new_id()
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        if (log_all or (log_errors and noted)) and request.path not in _QUIET_PATHS:
            _log_access(request, request_id, status, seconds)
        return response

    return layer


def _authorized(request: web.Request, expected: bytes) -> bool:
    if request.path in _BEARER_EXEMPT:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    valid = hmac.compare_digest(given.strip().encode(), expected)
    return valid and scheme.lower() == "bearer"


def _unauthorized() -> web.Response:
    return error_response(
        401,
        "unauthorized",
        "missing or wrong bearer token (Authorization: Bearer <SIDECAR_AUTH_TOKEN>)",
        headers={"WWW-Authenticate": 'Bearer realm="stigg-sidecar"'},
    )


def _new_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def _log_access(request: web.Request, request_id: str, status: int, seconds: float) -> None:
    _access_log.info(
        "%s %s %d %.2f ms",
        request.method,
        request.path,
        status,
        seconds * 1000,
        extra={
            "requestId": request_id,
            "route": route_of(request),
            "method": request.method,
            "path": request.path,
            "status": status,
            "durationMs": round(seconds * 1000, 3),
        },
    )
