"""The app-facing REST routes (camelCase JSON, like Stigg's)."""

from __future__ import annotations

from aiohttp import web

from sidecar.api.http import SERVICES, Services, json_response, read_json
from sidecar.entitlements.model import CheckRequest
from sidecar.provisioning import (
    cancel_subscription_input,
    provision_customer_input,
    provision_subscription_input,
)
from sidecar.validation import ValidationError, check_identifier, parse_number

MAX_REQUESTED_VALUES = 100


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


async def check_entitlement(request: web.Request) -> web.Response:
    params = _query(
        request, ("customerId", "featureId", "resourceId", "requestedUsage", "requestedValues")
    )
    requested_usage = None
    if params.get("requestedUsage"):
        requested_usage = parse_number("requestedUsage", params["requestedUsage"], minimum=0)
    requested_values = None
    if params.get("requestedValues"):
        values = [v for v in request.query.getall("requestedValues") for v in v.split(",")]
        requested_values = tuple(v.strip() for v in values if v.strip())
        if len(requested_values) > MAX_REQUESTED_VALUES:
            raise ValidationError("requestedValues", f"at most {MAX_REQUESTED_VALUES} values")
    check = CheckRequest(
        customer_id=_required(params, "customerId"),
        feature_id=_required(params, "featureId"),
        resource_id=_optional_id(params, "resourceId"),
        requested_usage=requested_usage,
        requested_values=requested_values,
    )
    return json_response(await _services(request).entitlements.check(check))


async def list_entitlements(request: web.Request) -> web.Response:
    params = _query(request, ("resourceId",))
    customer_id = _path_id(request, "customerId")
    result = await _services(request).entitlements.list(
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
    ]
