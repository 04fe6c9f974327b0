"""Tolerant readers of Stigg's answers: one per document the sidecar sends.

Stigg's schema allows more than our emulator happens to send: nullable fields may be null,
lists may be empty, enums grow values, objects grow fields. Each reader takes the root field's
data as ``StiggClient.execute`` returned it and gives its caller a clean shape with only the
fields it selected. A value of the wrong type, an unknown enum value or a missing non-null
field becomes a safe default and is counted (``stigg_sidecar_upstream_unexpected_answers_total``)
with one rate-limited WARNING per operation and kind, so an operator sees at once when Stigg
changes something. An answer that cannot be used at all raises ``UpstreamProtocolError``
(502 ``upstream_invalid_answer``); a null customer is ``CustomerNotFound``, as Stigg's SDKs
treat it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.upstream.errors import StiggError, UpstreamProtocolError

log = logging.getLogger(__name__)

# Stigg's enums as of the schema in sidecar/emulator/schema (a contract test keeps them equal).
ACCESS_DENIED_REASONS = frozenset(
    {"CustomerIsArchived", "CustomerNotFound", "NoActiveSubscription"}
)  # EntitlementsStateAccessDeniedReason
FEATURE_TYPES = frozenset({"BOOLEAN", "ENUM", "NUMBER"})
METER_TYPES = frozenset({"Fluctuating", "Incremental", "None"})
RESET_PERIODS = frozenset({"DAY", "HOUR", "MONTH", "WEEK", "YEAR"})
SUBSCRIPTION_STATUSES = frozenset(
    {"ACTIVE", "CANCELED", "EXPIRED", "IN_TRIAL", "NOT_STARTED", "PAYMENT_PENDING"}
)
BILLING_PERIODS = frozenset({"ANNUALLY", "MONTHLY"})
DECISION_STRATEGIES = frozenset(
    {
        "PREDEFINED_FREE_PLAN",
        "PREDEFINED_TRIAL_PLAN",
        "REQUESTED_PLAN",
        "SKIPPED_SUBSCRIPTION_CREATION",
    }
)
PROVISION_STATUSES = frozenset({"PAYMENT_REQUIRED", "SUCCESS"})

# A customer-level denial we cannot name still denies: Stigg's AccessDeniedReason "Unknown".
UNKNOWN_REASON = "Unknown"
# An unknown meter type is enforced against its limit, without assuming a periodic reset.
UNKNOWN_METER = "Fluctuating"
WARNING_INTERVAL_SECONDS = 300.0


class AnswerDrift:
    """Counts answers that differ from the schema, per operation; warns once per interval per
    (operation, kind), so a changed Stigg API is one log line, not one per request."""

    def __init__(
        self,
        interval_seconds: float = WARNING_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts: Counter[str] = Counter()
        self._interval = interval_seconds
        self._clock = clock
        self._warned: dict[tuple[str, str], float] = {}

    def record(self, operation: str, kind: str, detail: str) -> None:
        """One unexpected value in ``operation``'s answer (``detail`` names the field)."""
        self.counts[operation] += 1
        now = self._clock()
        last = self._warned.get((operation, kind))
        if last is not None and now - last < self._interval:
            return
        self._warned[operation, kind] = now
        log.warning(
            "stigg %s answered unexpectedly (%s: %s); a safe default was used."
            " Has Stigg's API changed? (counted in"
            " stigg_sidecar_upstream_unexpected_answers_total)",
            operation,
            kind,
            detail,
        )


# Process-wide, like the log: every reader reports here and /metrics reads it.
DRIFT = AnswerDrift()


def invalid(operation: str, what: str) -> UpstreamProtocolError:
    """The error for an answer that cannot be used at all (502 upstream_invalid_answer)."""
    return UpstreamProtocolError(
        f"Stigg's answer to {operation} could not be understood: {what}", operation=operation
    )


class _Reader:
    """Typed access to one answer; every surprise is recorded against ``operation``."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def drift(self, kind: str, path: str, detail: str) -> None:
        DRIFT.record(self.operation, kind, f"{path} {detail}")

    def _missing(self, value: Any, path: str, required: bool) -> bool:
        if value is None:
            if required:
                self.drift("missing_field", path, "is null or absent")
            return True
        return False

    def _wrong(self, value: Any, path: str, expected: str) -> None:
        self.drift("wrong_type", path, f"is {type(value).__name__}, expected {expected}")

    def obj(self, value: Any, path: str, *, required: bool = False) -> Mapping[str, Any] | None:
        if self._missing(value, path, required):
            return None
        if isinstance(value, Mapping):
            return value
        self._wrong(value, path, "an object")
        return None

    def text(self, value: Any, path: str, *, required: bool = False) -> str | None:
        if self._missing(value, path, required):
            return None
        if isinstance(value, str):
            return value
        self._wrong(value, path, "a string")
        return None

    def number(self, value: Any, path: str, *, required: bool = False) -> float | None:
        if self._missing(value, path, required):
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        self._wrong(value, path, "a number")
        return None

    def flag(self, value: Any, path: str, *, required: bool = False) -> bool:
        if self._missing(value, path, required):
            return False
        if isinstance(value, bool):
            return value
        self._wrong(value, path, "a boolean")
        return False

    def moment(self, value: Any, path: str, *, required: bool = False) -> str | float | None:
        """A DateTime (ISO string); epoch numbers are kept, ``parse_timestamp`` reads both."""
        if self._missing(value, path, required):
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        self._wrong(value, path, "a date-time")
        return None

    def enum(
        self,
        value: Any,
        path: str,
        known: frozenset[str],
        default: str | None = None,
        *,
        required: bool = False,
    ) -> str | None:
        if self._missing(value, path, required):
            return None if not required else default
        if isinstance(value, str) and value in known:
            return value
        self.drift("unknown_enum", path, f"value {str(value)[:64]!r}")
        return default

    def items(self, value: Any, path: str, *, required: bool = False) -> list[Any]:
        if self._missing(value, path, required):
            return []
        if isinstance(value, list):
            return value
        self._wrong(value, path, "a list")
        return []

    def root(self, value: Any) -> Mapping[str, Any]:
        """The root object of a non-null root field: anything else is unusable."""
        if isinstance(value, Mapping):
            return value
        what = "no data" if value is None else f"{type(value).__name__} instead of an object"
        raise invalid(self.operation, what)


# --- customers and subscriptions -------------------------------------------------------------


def customer_not_found(customer_id: str, operation: str) -> StiggError:
    """What a null customer means: the same error Stigg may send instead, so callers answer
    both alike (404 ``not_found``, ``stiggCode`` CustomerNotFound)."""
    return StiggError(
        f"Customer {customer_id} not found", stigg_code="CustomerNotFound", operation=operation
    )


def _customer_fields(r: _Reader, raw: Mapping[str, Any], customer_id: str) -> dict[str, Any]:
    return {
        "customerId": r.text(raw.get("customerId"), "customerId", required=True) or customer_id,
        "name": r.text(raw.get("name"), "name"),
        "email": r.text(raw.get("email"), "email"),
        "createdAt": r.moment(raw.get("createdAt"), "createdAt"),
        "updatedAt": r.moment(raw.get("updatedAt"), "updatedAt"),
        "billingId": r.text(raw.get("billingId"), "billingId"),
        "additionalMetaData": raw.get("additionalMetaData"),
    }


def _subscription(
    r: _Reader, raw: Mapping[str, Any], path: str, customer_id: str | None
) -> dict[str, Any]:
    """Stigg's nested subscription flattened into the sidecar's camelCase shape."""
    customer = r.obj(raw.get("customer"), f"{path}.customer") or {}
    plan = r.obj(raw.get("plan"), f"{path}.plan") or {}
    resource = r.obj(raw.get("resource"), f"{path}.resource") or {}
    return {
        "subscriptionId": r.text(
            raw.get("subscriptionId"), f"{path}.subscriptionId", required=True
        ),
        "customerId": r.text(customer.get("customerId"), f"{path}.customer.customerId")
        or customer_id,
        "planId": r.text(plan.get("refId"), f"{path}.plan.refId"),
        "planName": r.text(plan.get("displayName"), f"{path}.plan.displayName"),
        "resourceId": r.text(resource.get("resourceId"), f"{path}.resource.resourceId"),
        "status": r.enum(raw.get("status"), f"{path}.status", SUBSCRIPTION_STATUSES),
        "billingPeriod": r.enum(raw.get("billingPeriod"), f"{path}.billingPeriod", BILLING_PERIODS),
        "startDate": r.moment(raw.get("startDate"), f"{path}.startDate"),
        "endDate": r.moment(raw.get("endDate"), f"{path}.endDate"),
        "cancellationDate": r.moment(raw.get("cancellationDate"), f"{path}.cancellationDate"),
        "currentBillingPeriodEnd": r.moment(
            raw.get("currentBillingPeriodEnd"), f"{path}.currentBillingPeriodEnd"
        ),
        "additionalMetaData": raw.get("additionalMetaData"),
    }


def customer(raw: Any, customer_id: str) -> dict[str, Any]:
    """``getCustomerByRefId``: the customer and their subscriptions; null is CustomerNotFound."""
    r = _Reader("getCustomerByRefId")
    if raw is None:
        raise customer_not_found(customer_id, r.operation)
    data = r.root(raw)
    result = _customer_fields(r, data, customer_id)
    result["hasActiveSubscription"] = r.flag(
        data.get("hasActiveSubscription"), "hasActiveSubscription"
    )
    subscriptions = []
    for index, item in enumerate(r.items(data.get("subscriptions"), "subscriptions")):
        path = f"subscriptions[{index}]"
        if (sub := r.obj(item, path, required=True)) is not None:
            subscriptions.append(_subscription(r, sub, path, customer_id))
    result["subscriptions"] = subscriptions
    return result


def provisioned_customer(raw: Any, customer_id: str) -> dict[str, Any]:
    """``provisionCustomer``: the customer, the subscription made (if any), and why."""
    r = _Reader("provisionCustomer")
    data = r.root(raw)
    created = r.obj(data.get("customer"), "customer", required=True) or {}
    fields = _customer_fields(r, created, customer_id)
    sub = r.obj(data.get("subscription"), "subscription")
    return {
        "customer": fields,
        "subscription": _subscription(r, sub, "subscription", fields["customerId"])
        if sub is not None
        else None,
        "subscriptionDecisionStrategy": r.enum(
            data.get("subscriptionDecisionStrategy"),
            "subscriptionDecisionStrategy",
            DECISION_STRATEGIES,
        ),
    }


def provisioned_subscription(raw: Any, customer_id: str) -> dict[str, Any]:
    """``provisionSubscriptionV2``: the outcome, a checkout URL, the subscription."""
    r = _Reader("provisionSubscriptionV2")
    data = r.root(raw)
    sub = r.obj(data.get("subscription"), "subscription")
    return {
        "status": r.enum(data.get("status"), "status", PROVISION_STATUSES),
        "checkoutUrl": r.text(data.get("checkoutUrl"), "checkoutUrl"),
        "subscription": _subscription(r, sub, "subscription", customer_id)
        if sub is not None
        else None,
    }


def cancelled_subscription(raw: Any) -> dict[str, Any]:
    """``cancelSubscription``: the subscription as it is now, with its effective end."""
    r = _Reader("cancelSubscription")
    data = r.root(raw)
    result = _subscription(r, data, "cancelSubscription", None)
    result["effectiveEndDate"] = r.moment(data.get("effectiveEndDate"), "effectiveEndDate")
    return result


# --- entitlements ----------------------------------------------------------------------------


def _entitlement(r: _Reader, raw: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """One ``Entitlement``; None when it names no feature (no check could match it)."""
    feature = r.obj(raw.get("feature"), f"{path}.feature")
    if feature is None:
        return None
    ref_id = r.text(feature.get("refId"), f"{path}.feature.refId", required=True)
    if ref_id is None:
        return None
    meter = feature.get("meterType")
    values = raw.get("enumValues")
    enum_values: list[str] | None = None
    if values is not None:
        enum_values = [
            v
            for v in r.items(values, f"{path}.enumValues")
            if r.text(v, f"{path}.enumValues[]", required=True) is not None
        ]
    return {
        "isGranted": r.flag(raw.get("isGranted"), f"{path}.isGranted", required=True),
        "usageLimit": r.number(raw.get("usageLimit"), f"{path}.usageLimit"),
        "hasUnlimitedUsage": r.flag(raw.get("hasUnlimitedUsage"), f"{path}.hasUnlimitedUsage"),
        "hasSoftLimit": r.flag(raw.get("hasSoftLimit"), f"{path}.hasSoftLimit"),
        "currentUsage": r.number(raw.get("currentUsage"), f"{path}.currentUsage"),
        "enumValues": enum_values,
        "resetPeriod": r.enum(raw.get("resetPeriod"), f"{path}.resetPeriod", RESET_PERIODS),
        "usagePeriodStart": r.moment(raw.get("usagePeriodStart"), f"{path}.usagePeriodStart"),
        "usagePeriodEnd": r.moment(raw.get("usagePeriodEnd"), f"{path}.usagePeriodEnd"),
        "feature": {
            "refId": ref_id,
            # An unknown feature type is answered by isGranted alone, like a boolean feature.
            "featureType": r.enum(
                feature.get("featureType"),
                f"{path}.feature.featureType",
                FEATURE_TYPES,
                "BOOLEAN",
                required=True,
            ),
            "meterType": None
            if meter is None
            else r.enum(meter, f"{path}.feature.meterType", METER_TYPES, UNKNOWN_METER),
        },
    }


def _state(r: _Reader, data: Mapping[str, Any]) -> dict[str, Any]:
    entitlements = []
    for index, item in enumerate(r.items(data.get("entitlements"), "entitlements", required=True)):
        path = f"entitlements[{index}]"
        raw = r.obj(item, path, required=True)
        if raw is not None and (entitlement := _entitlement(r, raw, path)) is not None:
            entitlements.append(entitlement)
    return {
        "accessDeniedReason": r.enum(
            data.get("accessDeniedReason"),
            "accessDeniedReason",
            ACCESS_DENIED_REASONS,
            UNKNOWN_REASON,
        ),
        "entitlements": entitlements,
    }


def entitlements_state(raw: Any) -> dict[str, Any]:
    """``entitlementsState``, in the shape ``EntitlementsState.from_stigg`` reads."""
    r = _Reader("entitlementsState")
    return _state(r, r.root(raw))


def entitlements_update(raw: Any) -> dict[str, Any]:
    """A pushed ``entitlementsUpdated``: the state plus whose it is."""
    r = _Reader("entitlementsUpdated")
    data = r.root(raw)
    customer_id = r.text(data.get("customerId"), "customerId", required=True)
    if customer_id is None:
        raise invalid(r.operation, "no customerId")
    result = _state(r, data)
    result["customerId"] = customer_id
    result["resourceId"] = r.text(data.get("resourceId"), "resourceId")
    return result


# --- usage -----------------------------------------------------------------------------------


def _measurement(r: _Reader, raw: Any, path: str) -> dict[str, Any] | None:
    item = r.obj(raw, path, required=True)
    if item is None:
        return None
    customer_id = r.text(item.get("customerId"), f"{path}.customerId", required=True)
    feature_id = r.text(item.get("featureId"), f"{path}.featureId", required=True)
    if customer_id is None or feature_id is None:
        return None
    return {
        "customerId": customer_id,
        "featureId": feature_id,
        "resourceId": r.text(item.get("resourceId"), f"{path}.resourceId"),
        "currentUsage": r.number(item.get("currentUsage"), f"{path}.currentUsage"),
        "usagePeriodStart": r.moment(item.get("usagePeriodStart"), f"{path}.usagePeriodStart"),
        "usagePeriodEnd": r.moment(item.get("usagePeriodEnd"), f"{path}.usagePeriodEnd"),
    }


def measurements(raw: Any) -> list[dict[str, Any]]:
    """What ``reportUsageBulk`` answered for a delivered batch; items that name no customer
    or feature are skipped (they only refresh cached usage)."""
    r = _Reader("reportUsageBulk")
    if not isinstance(raw, list):
        raise invalid(r.operation, f"{type(raw).__name__} instead of a list of measurements")
    found = (_measurement(r, item, f"reportUsageBulk[{i}]") for i, item in enumerate(raw))
    return [m for m in found if m is not None]


def usage_update(raw: Any) -> dict[str, Any]:
    """A pushed ``usageUpdated``: one feature's current usage."""
    r = _Reader("usageUpdated")
    usage = r.obj(r.root(raw).get("usage"), "usage", required=True)
    measurement = _measurement(r, usage, "usage")
    if measurement is None:
        raise invalid(r.operation, "no usage")
    if measurement["currentUsage"] is None:
        r.drift("missing_field", "usage.currentUsage", "is null or absent")
        raise invalid(r.operation, "no currentUsage")
    return measurement
