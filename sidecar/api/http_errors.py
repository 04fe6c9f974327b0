"""Requests that reach no handler: those aiohttp cannot parse get our JSON error shape and one
log line per interval; those no route matches go to the app's ``UNMATCHED`` hook.

aiohttp answers a request it cannot parse (bad request line, line or header over 8,190 bytes,
invalid characters, Content-Length with Transfer-Encoding, duplicate Content-Length) itself,
before any middleware, with a ``text/plain`` 400, and logs it at ERROR with a traceback. It
builds that request with the application's request factory, so a request class of ours can
rewrite the answer's body to ``{"error": {"code": "bad_http_request", ...}}``; the connection
is still closed afterwards (aiohttp forces it), which is what keeps smuggling attempts out.
What aiohttp cannot let us shape: a bad first method on a connection is answered the same
way but logged only at DEBUG; the MCP port is uvicorn's, whose own parser answers such requests
with its ``text/plain`` "Invalid HTTP request received." (see README, Operating it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import ERROR
from aiohttp.web_urldispatcher import MatchInfoError

from sidecar.fault_log import FaultLog
from sidecar.logs import redact

log = logging.getLogger("sidecar.http")

_MAX_DETAIL = 200
_faults = FaultLog(log)


# Told of the answers to requests that matched no route (a 404 or 405 aiohttp made), where an
# app wants them answered its own way (``ApiLayer.unmatched``).
UnmatchedHook = Callable[[web.Request, web.HTTPException], None]
UNMATCHED: web.AppKey[UnmatchedHook] = web.AppKey("unmatched")


class _JsonErrorRequest(web.Request):
    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if isinstance(self._match_info, MatchInfoError) and isinstance(response, web.HTTPException):
            hook = self.app.get(UNMATCHED)
            if hook is not None:
                hook(self, response)
        elif self._message is ERROR and isinstance(response, web.Response):
            detail = redact((response.text or "").strip()[:_MAX_DETAIL])
            body = orjson.dumps(
                {"error": {"code": "bad_http_request", "message": detail or response.reason}}
            )
            response.body = body
            response.content_type = "application/json"
            response.headers["Content-Length"] = str(len(body))
        await super()._prepare_hook(response)


def answer_parse_errors_as_json(app: web.Application) -> None:
    """Make ``app``'s answers to unparseable requests JSON errors like every other one."""
    app._make_request = functools.partial(app._make_request, _cls=_JsonErrorRequest)  # type: ignore[method-assign]


class _ParseErrorFilter(logging.Filter):
    """Turns aiohttp's traceback per malformed request into one counted line per interval."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Error handling request"):
            return True
        exc: Any = record.exc_info[1] if record.exc_info else None
        what = type(exc).__name__ if exc is not None else "error"
        _faults.log(
            what,
            logging.WARNING,
            "rejected a request that is not valid HTTP: %s",
            redact(f"{what}: {getattr(exc, 'message', exc)}"[:_MAX_DETAIL]),
        )
        return False


_FILTER = _ParseErrorFilter()


def rate_limit_parse_error_logs() -> None:
    """Install the filter on aiohttp's server logger (once per process)."""
    logger = logging.getLogger("aiohttp.server")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
