"""Stigg's edge read API, answered by the sidecar: an app using Stigg's official SDK gets its
entitlement reads from the sidecar's cache by setting only its edge URL to the sidecar.

Paths, query parameters and bodies are those of the official clients (``stigg-api-client-v2``
``_edge_utils.py``, ``@stigg/node-server-sdk`` ``EdgeApiClient``): a body is the GraphQL
response of the matching query, ``{"data": {...}}``, or ``{"errors": [...]}``.

- ``/v1/c/{customerId}/entitlements.json`` and ``entitlements-state.json``: rendered from the
  entitlement cache, with its single-flight fetch and its stale fallback.
- ``/v1/c/{customerId}/subscriptions.json``: forwarded to Stigg, concurrent identical reads
  shared (subscriptions are not cached: a change must show at once).
- ``/v1/paywall.json``, ``/v1/p/{productId}/paywall.json``: the catalog, cached for the
  cache's fresh TTL.
- ``/v1/config/server-sdk-configuration.json``: what the Node SDK asks at start-up.

The API key an app sends (``X-API-KEY``) is ignored: the sidecar uses its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

import orjson
from aiohttp import web

from sidecar.api.errors import describe_upstream_error, error_response, upstream_error_response
from sidecar.entitlements.model import (
    CheckRequest,
    EntitlementsState,
    FeatureEntitlement,
    evaluate,
    iso,
)
from sidecar.services import SERVICES, SETTINGS
from sidecar.upstream import documents
from sidecar.upstream.errors import UpstreamError
from sidecar.validation import ValidationError, check_identifier, parse_number


def _body(payload: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _errors(message: str, code: str) -> web.Response:
    """A business answer (e.g. CustomerNotFound): a GraphQL error, as Stigg's edge sends it."""
    return _body({"data": None, "errors": [{"message": message, "extensions": {"code": code}}]})


def _upstream_failed(exc: UpstreamError) -> web.Response:
    failure = describe_upstream_error(exc)
    if failure.stigg_code is not None:
        return _errors(failure.message, failure.stigg_code)
    # The SDKs act on the status alone; the body is the sidecar's usual error.
    return upstream_error_response(exc)


def _unavailable() -> web.Response:
    return error_response(503, "upstream_unavailable", "Stigg is unavailable and nothing is cached")


# --- rendering the cached state as Stigg's objects -------------------------------------------


def _feature(entitlement: FeatureEntitlement) -> dict[str, Any]:
    # The cache keeps what checks need; names and units are not among them.
    return {
        "__typename": "EntitlementFeature",
        "refId": entitlement.feature_id,
        "displayName": entitlement.feature_id,
        "featureType": entitlement.feature_type,
        "meterType": entitlement.meter_type,
        "featureUnits": None,
        "featureUnitsPlural": None,
        "description": None,
        "unitTransformation": None,
    }


def _feature_entitlement(
    state: EntitlementsState, entitlement: FeatureEntitlement, request: CheckRequest, now: float
) -> dict[str, Any]:
    """The fields ``Entitlement`` and ``FeatureEntitlement`` share, decided like a check."""
    answer = evaluate(state, request, now)
    start, end = entitlement.usage_period_start, entitlement.usage_period_end
    return {
        "isGranted": answer["hasAccess"],
        "accessDeniedReason": answer["accessDeniedReason"],
        "usageLimit": entitlement.usage_limit,
        "hasUnlimitedUsage": entitlement.has_unlimited_usage,
        "hasSoftLimit": entitlement.has_soft_limit,
        "currentUsage": answer["currentUsage"] if entitlement.is_metered else None,
        "enumValues": list(entitlement.enum_values) if entitlement.enum_values else None,
        "entitlementUpdatedAt": iso(state.fetched_at),
        "usageUpdatedAt": None,
        # The cache keeps the current period, whose start anchors the following ones.
        "usagePeriodAnchor": iso(start),
        "usagePeriodStart": iso(start),
        "usagePeriodEnd": iso(end),
        "resetPeriod": entitlement.reset_period,
        "resetPeriodConfiguration": None,
        "feature": _feature(entitlement),
        "creditRate": None,
        "validUntil": None,
    }


def _entitlement(
    state: EntitlementsState, entitlement: FeatureEntitlement, request: CheckRequest, now: float
) -> dict[str, Any]:
    rendered = _feature_entitlement(state, entitlement, request, now)
    rendered.update(
        {
            "__typename": "Entitlement",
            "customerId": state.customer_id,
            "resourceId": state.resource_id,
            "requestedUsage": request.requested_usage,
            "requestedValues": list(request.requested_values or ()) or None,
            "nextResetDate": rendered["usagePeriodEnd"],
        }
    )
    return rendered


def _denied(state: EntitlementsState, request: CheckRequest, now: float) -> dict[str, Any]:
    answer = evaluate(state, request, now)
    return {
        "__typename": "Entitlement",
        "isGranted": False,
        "accessDeniedReason": answer["accessDeniedReason"],
        "customerId": state.customer_id,
        "resourceId": state.resource_id,
        "hasUnlimitedUsage": False,
        "requestedUsage": request.requested_usage,
        **dict.fromkeys(
            (
                "usageLimit",
                "hasSoftLimit",
                "currentUsage",
                "requestedValues",
                "enumValues",
                "entitlementUpdatedAt",
                "usageUpdatedAt",
                "usagePeriodAnchor",
                "usagePeriodStart",
                "usagePeriodEnd",
                "nextResetDate",
                "resetPeriod",
                "resetPeriodConfiguration",
                "feature",
                "creditRate",
                "validUntil",
            )
        ),
    }


# --- routes -------------------------------------------------------------------------------


def _ids(request: web.Request) -> tuple[str, str | None]:
    customer_id = check_identifier("customerId", request.match_info["customerId"])
    resource_id = request.query.get("resourceId") or None
    if resource_id is not None:
        check_identifier("resourceId", resource_id)
    return customer_id, resource_id


async def _state(request: web.Request) -> EntitlementsState | None:
    customer_id, resource_id = _ids(request)
    state, _source = await request.app[SERVICES].entitlements.snapshot(customer_id, resource_id)
    return state


async def entitlements_json(request: web.Request) -> web.Response:
    """Every entitlement of a customer, or with ``featureId`` one (Python client)."""
    # The query is checked before anything is fetched: bad input is a 400 whatever Stigg says.
    feature_id = request.query.get("featureId") or None
    if feature_id is not None:
        check_identifier("featureId", feature_id)
    usage = request.query.get("requestedUsage")
    requested = parse_number("requestedUsage", usage, minimum=0) if usage else None
    state = await _state(request)
    if state is None:
        return _unavailable()
    if state.access_denied_reason == "CustomerNotFound":
        return _errors(f"Customer {state.customer_id} not found", "CustomerNotFound")
    now = time.time()
    if feature_id is not None:
        check = CheckRequest(state.customer_id, feature_id, state.resource_id, requested)
        entitlement = state.entitlements.get(feature_id)
        rendered = (
            _entitlement(state, entitlement, check, now)
            if entitlement is not None and not state.access_denied_reason
            else _denied(state, check, now)
        )
        return _body({"data": {"entitlement": rendered}})
    listed = [
        _entitlement(
            state, e, CheckRequest(state.customer_id, e.feature_id, state.resource_id), now
        )
        for e in state.entitlements.values()
    ]
    return _body({"data": {"entitlements": listed}})


async def entitlements_state_json(request: web.Request) -> web.Response:
    """``entitlementsState``: denials (CustomerNotFound, NoActiveSubscription) are data."""
    state = await _state(request)
    if state is None:
        return _unavailable()
    now = time.time()
    requests = {
        e.feature_id: CheckRequest(state.customer_id, e.feature_id, state.resource_id)
        for e in state.entitlements.values()
    }
    entitlements = [
        _entitlement(state, e, requests[e.feature_id], now) for e in state.entitlements.values()
    ]
    v2 = [
        {
            **_feature_entitlement(state, e, requests[e.feature_id], now),
            "__typename": "FeatureEntitlement",
        }
        for e in state.entitlements.values()
    ]
    return _body(
        {
            "data": {
                "entitlementsState": {
                    "__typename": "EntitlementsState",
                    "accessDeniedReason": state.access_denied_reason,
                    "entitlements": entitlements,
                    "entitlementsV2": v2,
                }
            }
        }
    )


class EdgeReads:
    """Single-flight (and, for the catalog, a short cache) for the forwarded edge reads."""

    def __init__(self, catalog_ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._ttl = catalog_ttl_seconds
        self._clock = clock
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self._catalog: dict[Hashable, tuple[float, Any]] = {}

    async def shared(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> Any:
        """``fetch()``'s result; concurrent callers with the same key share one call."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(fetch())
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def catalog(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> Any:
        cached = self._catalog.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        value = await self.shared(key, fetch)
        self._catalog[key] = (self._clock() + self._ttl, value)
        return value


EDGE_READS = web.AppKey("edge_reads", EdgeReads)


async def subscriptions_json(request: web.Request) -> web.Response:
    customer_id, resource_id = _ids(request)
    query: dict[str, Any] = {"customerId": customer_id}
    resource_ids = request.query.getall("resourceIds", [])
    if resource_ids:
        query["resourceIds"] = [check_identifier("resourceIds", r) for r in resource_ids]
    elif resource_id is not None:
        query["resourceId"] = resource_id
    upstream = request.app[SERVICES].upstream
    key = ("subscriptions", customer_id, resource_id, tuple(resource_ids))
    try:
        data = await request.app[EDGE_READS].shared(
            key, lambda: upstream.execute(documents.GET_ACTIVE_SUBSCRIPTIONS, {"input": query})
        )
    except UpstreamError as exc:
        return _upstream_failed(exc)
    return _body({"data": {"getActiveSubscriptions": data}})


_PAYWALL_FLAGS = ("fetchAllCountriesPrices", "includeHiddenPlans")


async def paywall_json(request: web.Request) -> web.Response:
    params: dict[str, Any] = {}
    product_id = request.match_info.get("productId")
    if product_id is not None:
        params["productId"] = check_identifier("productId", product_id)
    country = request.query.get("billingCountryCode")
    if country:
        params["billingCountryCode"] = check_identifier("billingCountryCode", country)
    for flag in _PAYWALL_FLAGS:
        value = request.query.get(flag, "").lower()
        if value not in ("", "true", "false", "undefined"):
            raise ValidationError(flag, "must be true or false")
        if value in ("true", "false"):
            params[flag] = value == "true"
    upstream = request.app[SERVICES].upstream
    key = ("paywall", *sorted(params.items()))
    try:
        data = await request.app[EDGE_READS].catalog(
            key, lambda: upstream.execute(documents.GET_PAYWALL, {"input": params})
        )
    except UpstreamError as exc:
        return _upstream_failed(exc)
    return _body({"data": {"paywall": data}})


async def sdk_configuration_json(request: web.Request) -> web.Response:
    upstream = request.app[SERVICES].upstream
    try:
        data = await request.app[EDGE_READS].catalog(
            "sdk-configuration", lambda: upstream.execute(documents.GET_SDK_CONFIGURATION, {})
        )
    except UpstreamError as exc:
        return _upstream_failed(exc)
    return _body({"data": {"sdkConfiguration": data}})


def edge_routes(app: web.Application) -> list[web.RouteDef]:
    """The edge paths; call after ``SETTINGS`` is set (the catalog TTL comes from it)."""
    app[EDGE_READS] = EdgeReads(app[SETTINGS].cache.fresh_ttl_seconds)
    return [
        web.get("/v1/c/{customerId}/entitlements.json", entitlements_json, allow_head=False),
        web.get(
            "/v1/c/{customerId}/entitlements-state.json", entitlements_state_json, allow_head=False
        ),
        web.get("/v1/c/{customerId}/subscriptions.json", subscriptions_json, allow_head=False),
        web.get("/v1/paywall.json", paywall_json, allow_head=False),
        web.get("/v1/p/{productId}/paywall.json", paywall_json, allow_head=False),
        web.get(
            "/v1/config/server-sdk-configuration.json", sdk_configuration_json, allow_head=False
        ),
    ]
