"""Customers and subscriptions: input validation and the calls to Stigg."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from sidecar.timestamps import format_iso as iso
from sidecar.upstream import answers, documents
from sidecar.upstream.client import Upstream
from sidecar.validation import Fields

BILLING_PERIODS = ("MONTHLY", "ANNUALLY")
CANCELLATION_TIMES = ("IMMEDIATE", "END_OF_BILLING_PERIOD", "SPECIFIC_DATE")
# Subscriptions may be scheduled ahead, unlike usage timestamps.
# Dates before 2100, as the OpenAPI document says: a year like 5471 is a typo, not a plan.
_FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC) - datetime.now(UTC)

_SUBSCRIPTION_FIELDS = (
    "planId",
    "billingPeriod",
    "unitQuantity",
    "resourceId",
    "subscriptionId",
    "additionalMetaData",
    "startDate",
)


def _subscription_input(fields: Fields) -> dict[str, Any]:
    """The subscription part shared by provisionCustomer and provisionSubscriptionV2."""
    params: dict[str, Any] = {"planId": fields.identifier("planId", required=True)}
    optional = {
        "billingPeriod": fields.choice("billingPeriod", BILLING_PERIODS),
        "unitQuantity": fields.number("unitQuantity", minimum=1),
        "resourceId": fields.identifier("resourceId"),
        "subscriptionId": fields.identifier("subscriptionId"),
        "additionalMetaData": fields.object("additionalMetaData"),
    }
    start = fields.timestamp("startDate", max_future=_FAR_FUTURE)
    if start is not None:
        optional["startDate"] = iso(start)
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def provision_customer_input(body: Any) -> dict[str, Any]:
    """``ProvisionCustomerInput`` from a ``POST /v1/customers`` body."""
    fields = Fields(
        body,
        allowed=(
            "customerId",
            "name",
            "email",
            "billingId",
            "additionalMetaData",
            "subscriptionParams",
        ),
    )
    payload: dict[str, Any] = {"customerId": fields.identifier("customerId", required=True)}
    optional = {
        "name": fields.string("name", max_length=500),
        "email": fields.string("email", max_length=320),
        "billingId": fields.string("billingId", max_length=255),
        "additionalMetaData": fields.object("additionalMetaData"),
    }
    payload.update({k: v for k, v in optional.items() if v is not None})
    subscription = fields.nested("subscriptionParams", _SUBSCRIPTION_FIELDS)
    if subscription is not None:
        payload["subscriptionParams"] = _subscription_input(subscription)
    return payload


def provision_subscription_input(body: Any) -> dict[str, Any]:
    """``ProvisionSubscriptionInput`` from a ``POST /v1/subscriptions`` body."""
    fields = Fields(body, allowed=("customerId", *_SUBSCRIPTION_FIELDS))
    payload = {"customerId": fields.identifier("customerId", required=True)}
    payload.update(_subscription_input(fields))
    return payload


def cancel_subscription_input(subscription_id: str, body: Any) -> dict[str, Any]:
    """``SubscriptionCancellationInput`` from the path and an optional body."""
    fields = Fields(body if body is not None else {}, allowed=("cancellationTime", "endDate"))
    payload: dict[str, Any] = {"subscriptionRefId": subscription_id}
    when = fields.choice("cancellationTime", CANCELLATION_TIMES)
    if when is not None:
        payload["subscriptionCancellationTime"] = when
    end = fields.timestamp("endDate", max_future=_FAR_FUTURE)
    if end is not None:
        payload["endDate"] = iso(end)
    return payload


class Invalidator(Protocol):
    """Drops (and refetches) a customer's cached entitlements after a change."""

    async def invalidate(self, customer_id: str) -> None: ...


class ProvisioningService:
    """Creates and reads customers and subscriptions in Stigg; changes invalidate the cache."""

    def __init__(self, upstream: Upstream, cache: Invalidator) -> None:
        self._upstream = upstream
        self._cache = cache

    async def provision_customer(self, payload: dict[str, Any]) -> dict[str, Any]:
        raw = await self._upstream.execute(documents.PROVISION_CUSTOMER, {"input": payload})
        await self._cache.invalidate(payload["customerId"])
        return answers.provisioned_customer(raw, payload["customerId"])

    async def get_customer(self, customer_id: str) -> dict[str, Any]:
        raw = await self._upstream.execute(
            documents.GET_CUSTOMER, {"input": {"customerId": customer_id}}
        )
        return answers.customer(raw, customer_id)

    async def provision_subscription(self, payload: dict[str, Any]) -> dict[str, Any]:
        raw = await self._upstream.execute(documents.PROVISION_SUBSCRIPTION, {"input": payload})
        await self._cache.invalidate(payload["customerId"])
        return answers.provisioned_subscription(raw, payload["customerId"])

    async def cancel_subscription(self, payload: dict[str, Any]) -> dict[str, Any]:
        raw = await self._upstream.execute(documents.CANCEL_SUBSCRIPTION, {"input": payload})
        subscription = answers.cancelled_subscription(raw)
        if subscription["customerId"]:
            await self._cache.invalidate(subscription["customerId"])
        return subscription
