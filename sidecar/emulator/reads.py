"""Root resolvers for what Stigg's official SDKs read and change beyond provisioning and
usage: per-feature entitlements, subscriptions, usage history, promotional entitlements,
customer and subscription updates. Semantics come from the catalog-backed state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sidecar.emulator.fields import Info, JsonDict, Resolver, connection, matches, state_of
from sidecar.emulator.fields import stigg_errors as _errors
from sidecar.emulator.periods import iso, parse_iso
from sidecar.emulator.shapes import feature_entitlement_v2
from sidecar.emulator.state import EmulatorError, EmulatorState, SubscriptionRecord

# --- entitlements ---------------------------------------------------------------------------


@_errors
def _cached_entitlements(_root: object, info: Info, **args: Any) -> Any:
    query = args["query"]
    state = state_of(info)
    customer_id, resource_id = query["customerId"], query.get("resourceId")
    if state.customer(customer_id) is None:
        raise EmulatorError("CustomerNotFound", f"Customer {customer_id} not found")
    return state.entitlements_state(customer_id, resource_id)["entitlements"]


@_errors
def _entitlements(_root: object, info: Info, **args: Any) -> Any:
    entitlements = _cached_entitlements(_root, info, **args)
    return [{**e, "__typename": "EntitlementWithSummary", "summaries": []} for e in entitlements]


def feature_entitlement(state: EmulatorState, query: Mapping[str, Any]) -> JsonDict:
    """One feature's ``Entitlement``, with ``options.requestedUsage``/``requestedValues``
    decided the way Stigg does; a denial is data, not an error."""
    customer_id, feature_id = query["customerId"], query["featureId"]
    resource_id = query.get("resourceId")
    options = query.get("options") or {}
    requested_usage = options.get("requestedUsage")
    requested_values = options.get("requestedValues")
    snapshot = state.entitlements_state(customer_id, resource_id)
    found = next((e for e in snapshot["entitlements"] if e["feature"]["refId"] == feature_id), None)
    if found is None:
        feature = state.catalog.features.get(feature_id)
        reason = snapshot["accessDeniedReason"] or "NoFeatureEntitlementInSubscription"
        return {
            "__typename": "Entitlement",
            "isGranted": False,
            "accessDeniedReason": reason,
            "customerId": customer_id,
            "resourceId": resource_id,
            "hasUnlimitedUsage": False,
            "requestedUsage": requested_usage,
            "requestedValues": requested_values,
            "feature": state.shapes.entitlement_feature(feature_id) if feature else None,
        }
    entitlement = {
        **found,
        "requestedUsage": requested_usage,
        "requestedValues": requested_values,
    }
    if requested_values:
        granted = set(found.get("enumValues") or ())
        if not set(requested_values) <= granted:
            entitlement.update(isGranted=False, accessDeniedReason="RequestedValuesMismatch")
    elif requested_usage is not None and found.get("currentUsage") is not None:
        limit = found.get("usageLimit")
        unlimited = found["hasUnlimitedUsage"] or found.get("hasSoftLimit")
        if not unlimited and (limit is None or found["currentUsage"] + requested_usage > limit):
            entitlement.update(isGranted=False, accessDeniedReason="RequestedUsageExceedingLimit")
        else:
            entitlement.update(isGranted=True, accessDeniedReason=None)
    return entitlement


@_errors
def _entitlement(_root: object, info: Info, **args: Any) -> Any:
    return feature_entitlement(state_of(info), args["query"])


@_errors
def _entitlement_v2(_root: object, info: Info, **args: Any) -> Any:
    query = args["query"]
    if not query.get("featureId"):
        # Credit entitlements (by currencyId) are not modelled.
        raise EmulatorError("BadUserInput", "featureId is required (credits are not emulated)")
    return feature_entitlement_v2(feature_entitlement(state_of(info), query))


@_errors
def _report_entitlement_check_requested(_root: object, info: Info, **args: Any) -> Any:
    check = args["entitlementCheckRequested"]
    state_of(info).counters.entitlement_checks += 1
    return bool(check["customerId"])


# --- subscriptions --------------------------------------------------------------------------


def _active(state: EmulatorState, params: Mapping[str, Any]) -> list[JsonDict]:
    subscriptions = [s for s in state.subscriptions_of(params["customerId"]) if s.is_active]
    wanted: set[str | None] | None = None
    if params.get("resourceIds"):
        wanted = set(params["resourceIds"])
    elif params.get("resourceId") is not None:
        wanted = {params["resourceId"]}
    if wanted is not None:
        subscriptions = [s for s in subscriptions if s.resource_id in wanted]
    return [state.subscription_dict(s) for s in subscriptions]


@_errors
def _get_active_subscriptions(_root: object, info: Info, **args: Any) -> Any:
    return _active(state_of(info), args["input"])


@_errors
def _get_subscription(_root: object, info: Info, **args: Any) -> Any:
    state = state_of(info)
    ref_id = args["input"]["subscriptionId"]
    subscription = state.subscription(ref_id)
    if subscription is None or state.customer(subscription.customer_id) is None:
        raise EmulatorError("SubscriptionNotFound", f"Subscription {ref_id} not found")
    return state.subscription_dict(subscription)


def _queryable(state: EmulatorState, subscription: SubscriptionRecord) -> JsonDict:
    """A subscription with the flat fields ``SubscriptionQueryFilter`` compares."""
    rendered = state.subscription_dict(subscription)
    return {
        **rendered,
        "__typename": "SubscriptionQuery",
        "customerId": subscription.customer_id,
        "resourceId": subscription.resource_id,
        "productId": state.catalog.product_id,
        "billingId": None,
        "syncStates": [],
    }


@_errors
def _subscriptions(_root: object, info: Info, **args: Any) -> Any:
    state = state_of(info)
    nodes = [_queryable(state, s) for s in state.all_subscriptions()]
    nodes = [n for n in nodes if matches(n, args.get("filter"))]
    return connection(nodes, args.get("paging"))


# --- usage history --------------------------------------------------------------------------


def _points(
    state: EmulatorState, key: tuple[str, str, str | None], start: datetime, end: datetime | None
) -> list[tuple[datetime, float]]:
    state.current_usage(*key)  # CustomerNotFound / FeatureNotFound as Stigg answers them
    return [
        (moment, value)
        for moment, value in state.usage_history.get(key, [])
        if moment >= start and (end is None or moment <= end)
    ]


@_errors
def _usage_history(_root: object, info: Info, **args: Any) -> Any:
    params = args["usageHistoryInput"]
    state = state_of(info)
    start, end = params["startDate"], params.get("endDate")
    key = (params["customerRefId"], params["featureRefId"], params.get("resourceRefId"))
    points = _points(state, key, _moment(start), _moment(end))
    return {
        "startDate": start,
        "endDate": end,
        "markers": [],
        "groups": None,
        "usageMeasurements": [
            {"date": iso(moment), "value": value, "isResetPoint": False} for moment, value in points
        ],
    }


@_errors
def _usage_history_v2(_root: object, info: Info, **args: Any) -> Any:
    params = args["input"]
    state = state_of(info)
    key = (params["customerId"], params["featureId"], params.get("resourceId"))
    points = _points(state, key, _moment(params["startDate"]), _moment(params.get("endDate")))
    series = {
        "tags": [],
        "points": [
            {"timestamp": iso(moment), "value": value, "isResetPoint": False}
            for moment, value in points
        ],
    }
    return {"markers": [], "series": [series], "pageInfo": connection([], None)["pageInfo"]}


def _moment(value: Any) -> Any:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return parse_iso(str(value))
    except ValueError:
        raise EmulatorError("BadUserInput", f"{value!r} is not an ISO-8601 date-time") from None


# --- changes --------------------------------------------------------------------------------


@_errors
def _grant_promotional(_root: object, info: Info, **args: Any) -> Any:
    params = args["input"]
    return state_of(info).grant_promotions(params["customerId"], params["promotionalEntitlements"])


@_errors
def _revoke_promotional(_root: object, info: Info, **args: Any) -> Any:
    params = args["input"]
    return state_of(info).revoke_promotion(params["customerId"], params["featureId"])


@_errors
def _update_customer(_root: object, info: Info, **args: Any) -> Any:
    return state_of(info).update_customer(args["input"])


@_errors
def _update_subscription(_root: object, info: Info, **args: Any) -> Any:
    return state_of(info).update_subscription(args["input"])


@_errors
def _archive_customer(_root: object, info: Info, **args: Any) -> Any:
    return state_of(info).archive_customer(args["input"]["customerId"])


READ_RESOLVERS: Mapping[str, Resolver] = {
    "cachedEntitlements": _cached_entitlements,
    "entitlements": _entitlements,
    "entitlement": _entitlement,
    "entitlementV2": _entitlement_v2,
    "reportEntitlementCheckRequested": _report_entitlement_check_requested,
    "getActiveSubscriptions": _get_active_subscriptions,
    "getSubscription": _get_subscription,
    "subscriptions": _subscriptions,
    "usageHistory": _usage_history,
    "usageHistoryV2": _usage_history_v2,
    "grantPromotionalEntitlements": _grant_promotional,
    "revokePromotionalEntitlement": _revoke_promotional,
    "updateOneCustomer": _update_customer,
    "updateOneSubscription": _update_subscription,
    "archiveCustomer": _archive_customer,
}

__all__: Sequence[str] = ("READ_RESOLVERS", "feature_entitlement")
