"""The GraphQL documents the sidecar sends, loaded once from the ``graphql/`` folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

DOCUMENTS_PACKAGE = "sidecar.upstream.graphql"


def _never(_: Mapping[str, Any]) -> bool:
    return False


def _always(_: Mapping[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Operation:
    """One document plus what the client needs to know to send it safely."""

    name: str
    root_field: str
    document: str
    # Whether a retry after an ambiguous failure (timeout, 5xx) cannot apply the call twice.
    retry_safe: Callable[[Mapping[str, Any]], bool]


def _load(name: str, root_field: str, retry_safe: Callable[[Mapping[str, Any]], bool]) -> Operation:
    text = resources.files(DOCUMENTS_PACKAGE).joinpath(f"{name}.graphql").read_text("utf-8")
    return Operation(name=name, root_field=root_field, document=text, retry_safe=retry_safe)


def _bulk_has_keys(variables: Mapping[str, Any]) -> bool:
    return all(usage.get("idempotencyKey") for usage in variables["input"]["usages"])


ENTITLEMENTS_STATE = _load("EntitlementsState", "entitlementsState", _always)
GET_CUSTOMER = _load("GetCustomer", "getCustomerByRefId", _always)
PROVISION_CUSTOMER = _load("ProvisionCustomer", "provisionCustomer", _never)
PROVISION_SUBSCRIPTION = _load("ProvisionSubscription", "provisionSubscriptionV2", _never)
# Cancelling twice ends in the same state; Stigg answers the repeat with an error we map.
CANCEL_SUBSCRIPTION = _load("CancelSubscription", "cancelSubscription", _never)
REPORT_USAGE_BULK = _load("ReportUsageBulk", "reportUsageBulk", _bulk_has_keys)
# Every event carries a required idempotency key, so a resend is never counted twice.
REPORT_EVENT = _load("ReportEvent", "reportEvent", _always)

# What the edge read API (sidecar/api/edge.py) forwards: the official clients' own documents.
GET_ACTIVE_SUBSCRIPTIONS = _load("GetActiveSubscriptionsList", "getActiveSubscriptions", _always)
GET_PAYWALL = _load("GetPaywall", "paywall", _always)
GET_SDK_CONFIGURATION = _load("GetSdkConfiguration", "sdkConfiguration", _always)

# Realtime subscriptions (graphql-transport-ws); never sent over HTTP.
ON_ENTITLEMENTS_UPDATED = _load("OnEntitlementsUpdated", "entitlementsUpdated", _never)
ON_USAGE_UPDATED = _load("OnUsageUpdated", "usageUpdated", _never)

ALL_OPERATIONS = (
    ENTITLEMENTS_STATE,
    GET_CUSTOMER,
    PROVISION_CUSTOMER,
    PROVISION_SUBSCRIPTION,
    CANCEL_SUBSCRIPTION,
    REPORT_USAGE_BULK,
    REPORT_EVENT,
    GET_ACTIVE_SUBSCRIPTIONS,
    GET_PAYWALL,
    GET_SDK_CONFIGURATION,
    ON_ENTITLEMENTS_UPDATED,
    ON_USAGE_UPDATED,
)
