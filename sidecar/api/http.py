"""What every route shares: JSON in and out."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sidecar.api.errors import ApiError
from sidecar.api.json_limits import json_depth_exceeds, too_deep_message


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def read_body(request: web.Request) -> bytes:
    """The request body; one over the size limit raises 413 in ``read()``."""
    return await request.read()


def parse_json(body: bytes, *, optional: bool = False) -> Any:
    """``body`` as JSON, or a 400 saying why not (empty, not JSON, nested too deep)."""
    if not body.strip():
        if optional:
            return None
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if json_depth_exceeds(value, body):
        raise ApiError(400, "json_too_deep", "request body: " + too_deep_message())
    return value


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    """The request body as JSON; a body over the size limit raises 413 in ``read()``."""
    return parse_json(await read_body(request), optional=optional)
