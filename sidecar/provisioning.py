"""Customers and subscriptions: input validation and the calls to Stigg."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import Field

from sidecar.timestamps import format_iso as iso
from sidecar.upstream import answers, documents
from sidecar.upstream.client import Upstream
from sidecar.validation import Id, MetaData, Model, PlanTimestamp, validate


class CustomerRef(Model):
    """The customer a request is about."""

    customer_id: Annotated[Id, Field(description="The customer's id in Stigg.")]


class SubscriptionParams(Model):
    """What a new subscription is: shared by provisionCustomer and provisionSubscriptionV2."""

    plan_id: Annotated[Id, Field(description="The plan to subscribe to, e.g. plan-pro.")]
    billing_period: Literal["MONTHLY", "ANNUALLY"] | None = None
    unit_quantity: Annotated[float, Field(ge=1, description="Seats or units.")] | None = None
    resource_id: Annotated[
        Id | None, Field(description="The resource (e.g. a workspace) it is for.")
    ] = None
    subscription_id: Annotated[
        Id | None,
        Field(description="Your id for the new subscription; Stigg makes one up if omitted."),
    ] = None
    additional_meta_data: MetaData | None = None
    start_date: Annotated[PlanTimestamp | None, Field(description="When it starts.")] = None

    def subscription_input(self) -> dict[str, Any]:
        """The subscription part of Stigg's input (camelCase, absent fields left out)."""
        params = self.model_dump(by_alias=True, exclude_none=True)
        if self.start_date is not None:
            params["startDate"] = iso(self.start_date)
        return params


class ProvisionCustomerRequest(CustomerRef):
    """`POST /v1/customers` and the `provision-customer` tool."""

    name: Annotated[str, Field(max_length=500)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    billing_id: Annotated[
        str | None, Field(max_length=255, description="The customer's id in the billing system.")
    ] = None
    additional_meta_data: MetaData | None = None
    subscription_params: Annotated[
        SubscriptionParams | None, Field(description="Subscribe the new customer to a plan now.")
    ] = None


class ProvisionSubscriptionRequest(SubscriptionParams, CustomerRef):
    """`POST /v1/subscriptions` and the `create-subscription` tool."""


class CancelSubscriptionRequest(Model):
    """The optional body of `POST /v1/subscriptions/{subscriptionId}/cancel`."""

    cancellation_time: Literal["IMMEDIATE", "END_OF_BILLING_PERIOD", "SPECIFIC_DATE"] | None = None
    end_date: Annotated[
        PlanTimestamp | None, Field(description="The end when cancellationTime is SPECIFIC_DATE.")
    ] = None


def provision_customer_input(body: bytes | Any) -> dict[str, Any]:
    """``ProvisionCustomerInput`` from a ``POST /v1/customers`` body."""
    request = validate(ProvisionCustomerRequest, body)
    payload = request.model_dump(by_alias=True, exclude_none=True)
    if request.subscription_params is not None:
        payload["subscriptionParams"] = request.subscription_params.subscription_input()
    return payload


def provision_subscription_input(body: bytes | Any) -> dict[str, Any]:
    """``ProvisionSubscriptionInput`` from a ``POST /v1/subscriptions`` body."""
    request = validate(ProvisionSubscriptionRequest, body)
    return {"customerId": request.customer_id, **request.subscription_input()}


def cancel_subscription_input(subscription_id: str, body: bytes | Any) -> dict[str, Any]:
    """``SubscriptionCancellationInput`` from the path and an optional body."""
    request = validate(CancelSubscriptionRequest, body if body is not None else {})
    payload: dict[str, Any] = {"subscriptionRefId": subscription_id}
    if request.cancellation_time is not None:
        payload["subscriptionCancellationTime"] = request.cancellation_time
    if request.end_date is not None:
        payload["endDate"] = iso(request.end_date)
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
