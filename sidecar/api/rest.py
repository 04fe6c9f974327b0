"""The app-facing REST routes (camelCase JSON, like Stigg's)."""

from __future__ import annotations

from aiohttp import web

from sidecar.api.http import json_response, read_json
from sidecar.config import FeatureFallback
from sidecar.entitlements.model import CheckRequest
from sidecar.provisioning import (
    cancel_subscription_input,
    provision_customer_input,
    provision_subscription_input,
)
from sidecar.services import SERVICES, Services
from sidecar.validation import ValidationError, check_identifier, parse_number

MAX_REQUESTED_VALUES = 100
# Longer query strings are answered, but their answers are not kept by query string.
MAX_CACHED_QUERY_LENGTH = 512


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    for key in request.query:
        if key not in allowed:
            raise ValidationError(key, "unknown query parameter")
    return {key: request.query[key] for key in request.query}


def _required(params: dict[str, str], key: str) -> str:
    value = params.get(key, "")
    if not value:
        raise ValidationError(key, "is required")
    return check_identifier(key, value)


def _optional_id(params: dict[str, str], key: str) -> str | None:
    value = params.get(key)
    return check_identifier(key, value) if value else None


def _path_id(request: web.Request, key: str) -> str:
    return check_identifier(key, request.match_info[key])


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def provision_customer(request: web.Request) -> web.Response:
    payload = provision_customer_input(await read_json(request))
    result = await _services(request).provisioning.provision_customer(payload)
    return json_response(result, status=201)


async def get_customer(request: web.Request) -> web.Response:
    customer_id = _path_id(request, "customerId")
    return json_response(await _services(request).provisioning.get_customer(customer_id))


async def provision_subscription(request: web.Request) -> web.Response:
    payload = provision_subscription_input(await read_json(request))
    result = await _services(request).provisioning.provision_subscription(payload)
    return json_response(result, status=201)


async def cancel_subscription(request: web.Request) -> web.Response:
    subscription_id = _path_id(request, "subscriptionId")
    payload = cancel_subscription_input(subscription_id, await read_json(request, optional=True))
    return json_response(await _services(request).provisioning.cancel_subscription(payload))


_CHECK_PARAMS = (
    "customerId",
    "featureId",
    "resourceId",
    "requestedUsage",
    "requestedValues",
    "fallbackHasAccess",
    "fallbackUsageLimit",
    "fallbackValue",
    "fallbackIsUnlimited",
    "fallbackEnumValues",
)


def _values(request: web.Request, key: str) -> tuple[str, ...] | None:
    """A list parameter, given comma-separated and/or repeated."""
    if key not in request.query:
        return None
    values = [v.strip() for raw in request.query.getall(key) for v in raw.split(",")]
    values = [v for v in values if v]
    if len(values) > MAX_REQUESTED_VALUES:
        raise ValidationError(key, f"at most {MAX_REQUESTED_VALUES} values")
    return tuple(values)


def _boolean(params: dict[str, str], key: str) -> bool | None:
    value = params.get(key)
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise ValidationError(key, "must be true or false")
    return value.lower() == "true"


def _number(params: dict[str, str], key: str) -> float | None:
    value = params.get(key)
    return parse_number(key, value, minimum=0) if value else None


def _request_fallback(request: web.Request, params: dict[str, str]) -> FeatureFallback | None:
    """What the app wants answered if neither Stigg nor the cache can (like Stigg's SDKs)."""
    has_access = _boolean(params, "fallbackHasAccess")
    rest = {k for k in params if k.startswith("fallback")} - {"fallbackHasAccess"}
    if has_access is None:
        if rest:
            raise ValidationError(sorted(rest)[0], "needs fallbackHasAccess")
        return None
    return FeatureFallback(
        has_access=has_access,
        usage_limit=_number(params, "fallbackUsageLimit"),
        value=_number(params, "fallbackValue"),
        is_unlimited=bool(_boolean(params, "fallbackIsUnlimited")),
        enum_values=_values(request, "fallbackEnumValues"),
    )


_PLAIN_CHECK_PARAMS = frozenset(("customerId", "featureId", "resourceId"))


async def check_entitlement(request: web.Request) -> web.Response:
    entitlements = request.app[SERVICES].entitlements
    raw_query = request.query_string
    # The hot path: this exact query was answered before from state L1 still holds fresh.
    body = entitlements.answer_cached(raw_query)
    if body is None:
        params = _query(request, _CHECK_PARAMS)
        customer_id, feature_id = _required(params, "customerId"), _required(params, "featureId")
        check = CheckRequest(
            customer_id=customer_id,
            feature_id=feature_id,
            resource_id=_optional_id(params, "resourceId"),
            requested_usage=_number(params, "requestedUsage"),
            requested_values=_values(request, "requestedValues") or None,
        )
        if not params.keys() <= _PLAIN_CHECK_PARAMS:
            fallback = _request_fallback(request, params)
            return json_response(await entitlements.check(check, fallback))
        token = raw_query if len(raw_query) <= MAX_CACHED_QUERY_LENGTH else None
        body = await entitlements.check_json(check, token)
    return web.Response(body=body, content_type="application/json")


async def list_entitlements(request: web.Request) -> web.Response:
    params = _query(request, ("resourceId",))
    customer_id = _path_id(request, "customerId")
    result = await _services(request).entitlements.list(
        customer_id, _optional_id(params, "resourceId")
    )
    return json_response(result)


async def reload_entitlements(request: web.Request) -> web.Response:
    params = _query(request, ("resourceId",))
    customer_id = _path_id(request, "customerId")
    result = await _services(request).entitlements.reload(
        customer_id, _optional_id(params, "resourceId")
    )
    return json_response(result)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/customers", provision_customer),
        web.get("/v1/customers/{customerId}", get_customer, allow_head=False),
        web.post("/v1/subscriptions", provision_subscription),
        web.post("/v1/subscriptions/{subscriptionId}/cancel", cancel_subscription),
        web.get("/v1/entitlements", check_entitlement, allow_head=False),
        web.get("/v1/customers/{customerId}/entitlements", list_entitlements, allow_head=False),
        web.post("/v1/customers/{customerId}/entitlements/reload", reload_entitlements),
    ]
