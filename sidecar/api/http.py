"""What every route shares: the services they call, JSON in and out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sidecar.api.errors import ApiError
from sidecar.api.json_limits import json_depth_exceeds, too_deep_message
from sidecar.config import Settings
from sidecar.entitlements.service import EntitlementService
from sidecar.provisioning import ProvisioningService
from sidecar.upstream.client import Upstream
from sidecar.usage.service import UsageService


@dataclass(frozen=True)
class Services:
    """What the routes call; built once the upstream is ready (see ``app.py``)."""

    entitlements: EntitlementService
    usage: UsageService
    provisioning: ProvisioningService
    upstream: Upstream


SERVICES = web.AppKey("services", Services)
SETTINGS = web.AppKey("settings", Settings)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    """The request body as JSON; a body over the size limit raises 413 in ``read()``."""
    body = await request.read()
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
