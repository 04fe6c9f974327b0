"""``POST /webhooks/stigg``: Stigg's webhooks invalidate the customers they name."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from cachetools import TTLCache

from sidecar.api.errors import ApiError
from sidecar.api.http import json_response, read_json
from sidecar.api.mentions import customer_ids
from sidecar.services import SERVICES, SETTINGS

log = logging.getLogger(__name__)

SECRET_HEADER = "Stigg-Webhooks-Secret"  # noqa: S105 - a header name, not a secret
# Stigg retries deliveries; a messageId seen within a day is acknowledged and ignored.
_SEEN_FOR_SECONDS = 24 * 3600
_SEEN_MAX = 100_000


class Webhooks:
    """Verifies the shared secret in constant time and de-duplicates on ``messageId``."""

    def __init__(self) -> None:
        self._seen: TTLCache[str, bool] = TTLCache(maxsize=_SEEN_MAX, ttl=_SEEN_FOR_SECONDS)

    async def receive(self, request: web.Request) -> web.Response:
        secret = request.app[SETTINGS].webhook_secret
        given = request.headers.get(SECRET_HEADER, "")
        if not given:
            raise ApiError(401, "unauthorized", f"missing {SECRET_HEADER} header")
        if secret is None:
            raise ApiError(
                404, "not_found", "webhooks are not enabled (set SIDECAR_WEBHOOK_SECRET)"
            )
        if not hmac.compare_digest(given.encode(), secret.reveal().encode()):
            log.warning("rejected a webhook with a wrong or missing %s header", SECRET_HEADER)
            raise ApiError(401, "unauthorized", f"missing or wrong {SECRET_HEADER} header")
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid_request", "webhook body must be a JSON object")
        message_id = payload.get("messageId")
        if not isinstance(message_id, str) or not message_id:
            raise ApiError(400, "invalid_request", "messageId: is required", field="messageId")
        if message_id in self._seen:
            return json_response({"messageId": message_id, "duplicate": True, "invalidated": []})
        customers = sorted(set(customer_ids(payload)))
        entitlements = request.app[SERVICES].entitlements
        for customer_id in customers:
            await entitlements.invalidate(customer_id)
        self._seen[message_id] = True
        return json_response(
            {"messageId": message_id, "duplicate": False, "invalidated": customers}
        )


def webhook_routes() -> list[web.RouteDef]:
    return [web.post("/webhooks/stigg", Webhooks().receive)]
