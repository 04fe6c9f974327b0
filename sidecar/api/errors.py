"""Every failure leaves the API as ``{"error": {"code", "message"}}`` JSON with a 4xx/5xx status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sidecar.fault_log import FaultLog
from sidecar.upstream.errors import (
    StiggError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify,
)
from sidecar.validation import ValidationError

log = logging.getLogger(__name__)
_faults = FaultLog(log)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Status and code by the kind of Stigg error (upstream.errors.classify).
_STIGG_ERRORS = {
    "not_found": (404, "not_found"),
    "conflict": (409, "conflict"),
    "invalid": (422, "rejected_by_stigg"),
    "other": (502, "upstream_error"),
}


def route_of(request: web.Request) -> str:
    """The route's template (``/v1/customers/{customerId}``), never the raw path;
    ``unmatched`` when no route took the request."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


class ApiError(Exception):
    """An error the API answers as it is."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    error.update({k: v for k, v in extra.items() if v is not None})
    return web.Response(
        status=status,
        body=orjson.dumps({"error": error}),
        content_type="application/json",
        headers=headers,
    )


@dataclass(frozen=True)
class UpstreamFailure:
    """How a failed Stigg call is reported, to REST clients and MCP agents alike."""

    status: int
    code: str
    message: str
    stigg_code: str | None = None
    retry_after: str | None = None


def describe_upstream_error(exc: UpstreamError) -> UpstreamFailure:
    """Map a failed Stigg call to the status a client can act on, and a message for it."""
    if isinstance(exc, StiggError):
        status, code = _STIGG_ERRORS[classify(exc)]
        return UpstreamFailure(status, code, exc.message, exc.stigg_code)
    if isinstance(exc, UpstreamTimeout):
        return UpstreamFailure(504, exc.code, "Stigg did not answer in time")
    if isinstance(exc, UpstreamRateLimited):
        return UpstreamFailure(
            503, exc.code, "Stigg's rate limit was reached; retry shortly", retry_after="1"
        )
    if isinstance(exc, UpstreamUnavailable):
        return UpstreamFailure(503, exc.code, "Stigg is unavailable: " + exc.message)
    if isinstance(exc, UpstreamAuthError):
        # The sidecar's own key is wrong: the client cannot fix that, the operator can.
        return UpstreamFailure(
            502, exc.code, "Stigg rejected the sidecar's API key; check STIGG_API_KEY"
        )
    return UpstreamFailure(502, exc.code, exc.message)


def upstream_error_response(exc: UpstreamError) -> web.Response:
    """Map a failed Stigg call to the status a client can act on."""
    failure = describe_upstream_error(exc)
    headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
    return error_response(
        failure.status,
        failure.code,
        failure.message,
        headers=headers,
        stiggCode=failure.stigg_code,
    )


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_middleware(max_body_bytes: int) -> Any:
    """Exceptions become JSON error answers: no HTML page, no stack trace, ever (the
    management port's; the API's own layer does this and more, see ``api.layer``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - error_answer re-raises what it does not answer
            return error_answer(request, exc, max_body_bytes)

    return middleware


def error_answer(request: web.Request, exc: Exception, max_body_bytes: int) -> web.Response:
    """The answer to a handler's exception; re-raises a non-error HTTP exception (a redirect)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, **exc.extra)
    if isinstance(exc, ValidationError):
        return error_response(400, "invalid_request", str(exc), field=exc.field or None)
    if isinstance(exc, UpstreamError):
        log.warning("stigg %s failed: %s (%s)", exc.operation, exc.code, exc.message)
        return upstream_error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 404:
            message = f"no route {request.method} {request.path}"
        elif exc.status == 413:
            message = f"request body is larger than {max_body_bytes} bytes"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, message, headers=headers)
    _faults.unhandled(f"{request.method} {route_of(request)}", exc)
    return error_response(500, "internal_error", "internal error; see the sidecar's log")
