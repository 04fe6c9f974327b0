"""Root resolvers for the catalog: the SDKs' start-up configuration, the paywall, and the
plans, features, add-ons and products lists (filters and cursor paging as Stigg has them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.emulator.fields import Info, Resolver, connection, matches, state_of, stigg_errors
from sidecar.emulator.state import EmulatorError

# Stigg's SDK configuration for an environment: nothing to report to, no widget watermark.
SDK_CONFIGURATION = {
    "__typename": "SdkConfiguration",
    "sentryDsn": None,
    "isWidgetWatermarkEnabled": False,
    "showWatermark": False,
}


def _sdk_configuration(_root: object, _info: Info, **_args: Any) -> Any:
    return SDK_CONFIGURATION


@stigg_errors
def _paywall(_root: object, info: Info, **args: Any) -> Any:
    params = args["input"]
    state = state_of(info)
    product_id = params.get("productId")
    if product_id is not None and product_id != state.catalog.product_id:
        raise EmulatorError("ProductNotFoundError", f"Product {product_id} not found")
    customer: Any = None
    active: list[Any] | None = None
    customer_id = params.get("customerId")
    if customer_id is not None:
        customer = state.get_customer(customer_id)
        resource_id = params.get("resourceId")
        active = [
            state.subscription_dict(s)
            for s in state.subscriptions_of(customer_id)
            if s.is_active and (resource_id is None or s.resource_id == resource_id)
        ]
    return {
        "__typename": "Paywall",
        "plans": [state.shapes.plan(plan_id) for plan_id in state.catalog.plans],
        "currency": {"code": "USD", "symbol": "$"},
        "configuration": None,
        "customer": customer,
        "activeSubscriptions": active,
        "resource": None,
        "paywallCalculatedPricePoints": [],
    }


def _listing(nodes: list[Any], args: Mapping[str, Any]) -> Any:
    return connection([n for n in nodes if matches(n, args.get("filter"))], args.get("paging"))


@stigg_errors
def _plans(_root: object, info: Info, **args: Any) -> Any:
    state = state_of(info)
    return _listing([state.shapes.plan(plan_id) for plan_id in state.catalog.plans], args)


@stigg_errors
def _features(_root: object, info: Info, **args: Any) -> Any:
    state = state_of(info)
    nodes = [state.shapes.feature(feature_id) for feature_id in state.catalog.features]
    return _listing(nodes, args)


@stigg_errors
def _addons(_root: object, _info: Info, **args: Any) -> Any:
    # A catalog file has no add-ons: the list is empty, not an error.
    return _listing([], args)


@stigg_errors
def _products(_root: object, info: Info, **args: Any) -> Any:
    return _listing([state_of(info).shapes.product], args)


CATALOG_RESOLVERS: Mapping[str, Resolver] = {
    "sdkConfiguration": _sdk_configuration,
    "paywall": _paywall,
    "plans": _plans,
    "features": _features,
    "addons": _addons,
    "products": _products,
}
