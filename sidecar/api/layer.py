"""The app-facing API's one layer around every handler: the bearer token, errors as JSON, the
per-route metrics, request ids and the access log.

Each handler is wrapped once, when its route is registered, instead of passing through
middleware: aiohttp chains a middleware (and, once there is one, its own
``_fix_request_current_app``) as a call and a coroutine per request, about a tenth of a
warm check's CPU. What a wrapped handler does per request is only what a warm check needs:
a ``perf_counter`` pair, the route's counts (resolved when it was wrapped) and one header
lookup. A request id is made only when the client sent one (it is echoed) or the answer is an
error, slow or logged; nothing is put in context variables. Requests no route matches never
reach a handler: ``unmatched`` answers them, from the request's prepare hook
(``api.http_errors``).
"""

from __future__ import annotations

import hmac
import itertools
import logging
import re
import secrets
import time
from collections.abc import Iterable

from aiohttp import web

from sidecar.api.errors import Handler, error_answer, error_response, route_of
from sidecar.config import Secret
from sidecar.metrics import Metrics

_access_log = logging.getLogger("sidecar.access")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's id is kept if it is a short token; anything else (too long, spaces, quotes,
# control characters) could forge log lines or bloat them, so a fresh id replaces it.
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
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
# Every status aiohttp lets a response have (100 to 999), as its label text.
_STATUS_TEXT = {status: str(status) for status in range(100, 1000)}


class ApiLayer:
    """Wraps the API's handlers; ``access_log`` is ``all``, ``errors`` or ``off``; ``token``,
    when set, is required as ``Authorization: Bearer <token>``."""

    def __init__(
        self, metrics: Metrics, *, access_log: str, token: Secret | None, max_body_bytes: int
    ) -> None:
        self._metrics = metrics
        self._log_all = access_log == "all"
        self._log_errors = access_log == "errors"
        self._expected = token.reveal().encode() if token is not None else None
        self._max_body_bytes = max_body_bytes

    def routes(self, defs: Iterable[web.RouteDef]) -> list[web.RouteDef]:
        """``defs`` with their handlers wrapped."""
        return [
            web.RouteDef(d.method, d.path, self._wrap(d.handler, d.method, d.path), d.kwargs)
            for d in defs
        ]

    def _wrap(self, handler: Handler, method: str, template: str) -> Handler:
        counts = self._metrics.http.counts(template, method)
        expected = self._expected
        max_body_bytes = self._max_body_bytes

        async def layered(request: web.Request) -> web.StreamResponse:
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
            outcome = _STATUS_TEXT[status]
            if request.method == method:
                counts.observe(outcome, seconds)
            else:  # HEAD on a GET route
                self._metrics.http.counts(template, request.method).observe(outcome, seconds)
            given = request.headers.get(REQUEST_ID_HEADER)
            if given is None and status < 400 and seconds < SLOW_SECONDS and not self._log_all:
                return response  # the hot path ends here
            request_id = self._note(request, status, given, seconds)
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            return response

        return layered

    def unmatched(self, request: web.Request, response: web.HTTPException) -> None:
        """A request no route took (404, 405), answered by aiohttp with the HTTP exception:
        made our JSON error in place, counted and noted like any other answer."""
        answer = error_answer(request, response, self._max_body_bytes)
        assert isinstance(answer.body, bytes)
        response.body = answer.body
        response.headers["Content-Type"] = "application/json"
        response.headers["Content-Length"] = str(len(answer.body))
        method = request.method if request.method in _KNOWN_METHODS else "other"
        # No handler ran: counted as answered at once (aiohttp keeps the start time to itself).
        self._metrics.http.counts(route_of(request), method).observe(str(response.status), 0.0)
        # Headers are still written after this hook, though the answer counts as prepared.
        given = request.headers.get(REQUEST_ID_HEADER)
        response.headers[REQUEST_ID_HEADER] = self._note(request, response.status, given, 0.0)

    def _note(self, request: web.Request, status: int, given: str | None, seconds: float) -> str:
        """Off the hot path: the access log line when one is due; the request id."""
        request_id = given if given is not None and _SANE_ID.fullmatch(given) else _new_id()
        noted = status >= 400 or seconds >= SLOW_SECONDS
        if self._log_all or (self._log_errors and noted):
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
        return request_id


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
