"""In-memory Stigg: customers, subscriptions, usage and events, seeded from a catalog.

Pure logic, no HTTP, no asyncio: each method takes the (already GraphQL-coerced) input of one
root field and returns the dict the GraphQL layer serves, or raises ``EmulatorError`` with the
Stigg ``ErrorCode`` a real environment would answer. The clock is injectable so tests can
cross usage-period boundaries.
"""

from __future__ import annotations

import logging
import math
import secrets
import string
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sidecar.emulator.catalog import Catalog, Feature
from sidecar.emulator.periods import Clock, current_period, iso, parse_iso
from sidecar.emulator.promotions import Promotion, new_promotion, promotion_dict
from sidecar.emulator.shapes import (
    JsonDict,
    Lazy,
    Shapes,
    feature_entitlements_v2,
    lazy,
    reset_period_configuration,
)

log = logging.getLogger(__name__)

# Stigg's published limits.
MAX_BULK_USAGES = 100
MAX_EVENTS_PER_CALL = 1000
# Points of usage history kept per customer, feature and resource (benchmarks report a lot).
USAGE_HISTORY = 1000

# ("entitlements", customerId, resourceId) or ("usage", customerId, featureId, resourceId)
StateEvent = tuple[str | None, ...]
Listener = Callable[[StateEvent], None]

UsageKey = tuple[str, str, str | None]


class EmulatorError(Exception):
    """A business error Stigg would report with ``extensions.code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class SubscriptionRecord:
    ref_id: str
    uuid: str
    customer_id: str
    plan_id: str
    resource_id: str | None
    billing_period: str | None
    start_date: datetime
    created_at: datetime
    status: str = "ACTIVE"
    unit_quantity: float | None = None
    additional_meta_data: Any = None
    cancellation_date: datetime | None = None
    end_date: datetime | None = None

    @property
    def is_active(self) -> bool:
        return self.status == "ACTIVE"


@dataclass
class CustomerRecord:
    customer_id: str
    uuid: str
    name: str | None
    email: str | None
    additional_meta_data: Any
    billing_id: str | None
    created_at: datetime
    updated_at: datetime
    entitlements_updated_at: datetime
    subscriptions: list[SubscriptionRecord] = field(default_factory=list)

    def active_subscriptions(self, resource_id: str | None) -> list[SubscriptionRecord]:
        return [s for s in self.subscriptions if s.is_active and s.resource_id == resource_id]


@dataclass
class UsageRecord:
    value: float
    # Start of the usage period the value belongs to; None when the feature never resets.
    period_start: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class Grant:
    """A customer's effective entitlement to one feature, merged over active subscriptions."""

    feature: Feature
    usage_limit: float | None
    has_unlimited_usage: bool
    has_soft_limit: bool
    reset_period: str | None
    enum_values: tuple[str, ...] | None
    # Usage periods count from the start of the subscription that grants the entitlement.
    anchor: datetime


@dataclass
class StateCounters:
    usages_applied: int = 0
    duplicate_keys: int = 0
    events_accepted: int = 0
    entitlement_checks: int = 0
    duplicate_events: int = 0
    bulk_sizes: list[int] = field(default_factory=list)
    event_batch_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _PlannedUsage:
    """One usage report, validated and computed but not yet applied (bulk is atomic)."""

    key: UsageKey
    value: float
    new_usage: float | None  # None: a duplicate idempotency key, nothing changes
    current_usage: float
    period: tuple[datetime, datetime] | None
    timestamp: datetime
    idempotency_key: str | None


class EmulatorState:
    """The emulated Stigg environment. Not thread-safe: the server runs it on one event loop."""

    def __init__(self, catalog: Catalog, clock: Clock | None = None) -> None:
        self.catalog = catalog
        self.clock = clock or Clock()
        self._listeners: list[Listener] = []
        self.shapes = Shapes(catalog, self.clock.now())
        # Set per request by the nullForMissing fault: nullable lookups answer an unknown
        # entity with null instead of an error (Stigg may do either).
        self.null_for_missing = False
        self._seed()

    # --- lifecycle and observation ------------------------------------------------------------

    def reset(self) -> None:
        """Back to the catalog: its customers and usage, zero counters, the real time."""
        before = self._resource_keys()
        self.clock.reset()
        self._seed()
        for customer_id, resource_id in sorted(
            before | self._resource_keys(), key=lambda k: (k[0], k[1] or "")
        ):
            self._notify(("entitlements", customer_id, resource_id))

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after every change; returns a function that unsubscribes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def customer(self, customer_id: str) -> CustomerRecord | None:
        return self._customers.get(customer_id)

    def subscription(self, ref_id: str) -> SubscriptionRecord | None:
        return self._subscriptions.get(ref_id)

    def current_usage(self, customer_id: str, feature_id: str, resource_id: str | None) -> float:
        customer = self._require_customer(customer_id)
        feature = self._require_feature(feature_id)
        grant = self._grants(customer, resource_id).get(feature.id)
        period = self._period(grant, self.clock.now())
        return self._effective_usage(
            self._usage.get((customer_id, feature_id, resource_id)), period
        )

    # --- queries ------------------------------------------------------------------------------

    def entitlements_state(self, customer_id: str, resource_id: str | None = None) -> JsonDict:
        """``entitlementsState``: denial reasons are data here, never GraphQL errors."""
        customer = self._customers.get(customer_id)
        reason: str | None = None
        entitlements: list[JsonDict] = []
        if customer is None:
            reason = "CustomerNotFound"
        elif not customer.active_subscriptions(resource_id) and not self._promotions_of(customer):
            reason = "NoActiveSubscription"
        else:
            entitlements = self.entitlements(customer, resource_id)
        return {
            "__typename": "EntitlementsState",
            "accessDeniedReason": reason,
            "entitlements": entitlements,
            "entitlementsV2": feature_entitlements_v2(entitlements),
        }

    def entitlements(self, customer: CustomerRecord, resource_id: str | None) -> list[JsonDict]:
        now = self.clock.now()
        return [
            self._entitlement(customer, resource_id, grant, now)
            for grant in self._grants(customer, resource_id).values()
        ]

    def get_customer(self, customer_id: str) -> JsonDict:
        return self._customer_dict(self._require_customer(customer_id))

    # --- customers and subscriptions ----------------------------------------------------------

    def provision_customer(self, params: Mapping[str, Any]) -> JsonDict:
        customer_id = params.get("customerId") or params.get("refId") or f"customer-{uuid.uuid4()}"
        if customer_id in self._customers:
            raise EmulatorError(
                "DuplicatedEntityNotAllowed", f"Customer with id {customer_id} already exists"
            )
        sub_params = params.get("subscriptionParams")
        start: datetime | None = None
        if sub_params is not None:
            # Checked before anything is created, so a failed call leaves no customer behind.
            self._require_plan(sub_params["planId"])
            self._check_new_subscription_id(sub_params)
            start = self._start_date(sub_params)
        now = self.clock.now()
        created_at = self._parse_date(params.get("createdAt"), "createdAt") or now
        customer = CustomerRecord(
            customer_id=customer_id,
            uuid=str(uuid.uuid4()),
            name=params.get("name"),
            email=params.get("email"),
            additional_meta_data=params.get("additionalMetaData"),
            billing_id=params.get("billingId"),
            created_at=created_at,
            updated_at=now,
            entitlements_updated_at=now,
        )
        self._customers[customer_id] = customer
        subscription: SubscriptionRecord | None = None
        resource_id: str | None = None
        if sub_params is not None:
            subscription = self._create_subscription(customer, sub_params, start, now)
            resource_id = subscription.resource_id
        self._notify(("entitlements", customer_id, resource_id))
        customer_dict = self._customer_dict(customer)
        entitlements = self.entitlements(customer, resource_id)
        strategy = "REQUESTED_PLAN" if subscription else "SKIPPED_SUBSCRIPTION_CREATION"
        return {
            "__typename": "ProvisionedCustomer",
            "customer": customer_dict,
            "subscription": self._subscription_dict(subscription, lazy(lambda: customer_dict))
            if subscription
            else None,
            "subscriptionDecisionStrategy": strategy,
            "subscriptionStrategyDecision": strategy,
            "entitlements": entitlements,
            "entitlementsV2": feature_entitlements_v2(entitlements),
        }

    def provision_subscription(self, params: Mapping[str, Any]) -> JsonDict:
        """Subscribe; an active subscription of the same customer and resource is replaced."""
        customer = self._require_customer(params["customerId"])
        self._require_plan(params["planId"])
        self._check_new_subscription_id(params)
        start = self._start_date(params)
        now = self.clock.now()
        subscription = self._create_subscription(customer, params, start, now)
        self._notify(("entitlements", customer.customer_id, subscription.resource_id))
        entitlements = self.entitlements(customer, subscription.resource_id)
        return {
            "__typename": "ProvisionSubscriptionResult",
            "id": subscription.uuid,
            "status": "SUCCESS",
            "isScheduled": False,
            "checkoutUrl": None,
            "checkoutBillingId": None,
            "subscription": self._subscription_dict(subscription),
            "entitlements": entitlements,
            "entitlementsV2": feature_entitlements_v2(entitlements),
        }

    def cancel_subscription(self, params: Mapping[str, Any]) -> JsonDict:
        """Cancel now, whatever cancellation time is asked: the emulator has no billing cycle."""
        ref_id = params["subscriptionRefId"]
        subscription = self._subscriptions.get(ref_id)
        if subscription is None:
            raise EmulatorError("SubscriptionNotFound", f"Subscription {ref_id} not found")
        if not subscription.is_active:
            raise EmulatorError(
                "SubscriptionAlreadyCanceledOrExpired",
                f"Subscription {ref_id} is already canceled or expired",
            )
        now = self.clock.now()
        self._end(subscription, now)
        customer = self._customers[subscription.customer_id]
        customer.updated_at = customer.entitlements_updated_at = now
        self._notify(("entitlements", subscription.customer_id, subscription.resource_id))
        return self._subscription_dict(subscription)

    def update_customer(self, params: Mapping[str, Any]) -> JsonDict:
        """``updateOneCustomer``: the fields given replace the stored ones."""
        customer = self._require_customer(params.get("customerId") or params.get("refId") or "")
        for key, attr in (
            ("name", "name"),
            ("email", "email"),
            ("billingId", "billing_id"),
            ("additionalMetaData", "additional_meta_data"),
        ):
            if key in params:
                setattr(customer, attr, params[key])
        customer.updated_at = self.clock.now()
        return self._customer_dict(customer)

    def archive_customer(self, customer_id: str) -> JsonDict:
        """``archiveCustomer``: its subscriptions end and it is no longer found."""
        customer = self._require_customer(customer_id)
        now = self.clock.now()
        resources = {s.resource_id for s in customer.subscriptions} | {None}
        for subscription in customer.subscriptions:
            if subscription.is_active:
                self._end(subscription, now)
        result = self._customer_dict(customer)
        del self._customers[customer_id]
        self._promotions.pop(customer_id, None)
        for resource_id in sorted(resources, key=lambda r: r or ""):
            self._notify(("entitlements", customer_id, resource_id))
        return result

    def update_subscription(self, params: Mapping[str, Any]) -> JsonDict:
        """``updateOneSubscription``: metadata, billing period and unit quantity."""
        ref_id = params.get("subscriptionId") or params.get("refId") or ""
        subscription = self._subscriptions.get(ref_id)
        if subscription is None or subscription.customer_id not in self._customers:
            raise EmulatorError("SubscriptionNotFound", f"Subscription {ref_id} not found")
        if not subscription.is_active:
            raise EmulatorError(
                "SubscriptionAlreadyCanceledOrExpired",
                f"Subscription {ref_id} is already canceled or expired",
            )
        for key, attr in (
            ("additionalMetaData", "additional_meta_data"),
            ("billingPeriod", "billing_period"),
            ("unitQuantity", "unit_quantity"),
        ):
            if params.get(key) is not None:
                setattr(subscription, attr, params[key])
        return self._subscription_dict(subscription)

    def subscriptions_of(self, customer_id: str) -> list[SubscriptionRecord]:
        return list(self._require_customer(customer_id).subscriptions)

    def all_subscriptions(self) -> list[SubscriptionRecord]:
        return [s for s in self._subscriptions.values() if s.customer_id in self._customers]

    def subscription_dict(self, subscription: SubscriptionRecord) -> JsonDict:
        return self._subscription_dict(subscription)

    def grant_promotions(
        self, customer_id: str, grants: Sequence[Mapping[str, Any]]
    ) -> list[JsonDict]:
        """``grantPromotionalEntitlements``: a new grant of a feature replaces the previous one."""
        customer = self._require_customer(customer_id)
        now = self.clock.now()
        promotions: list[Promotion] = []
        for grant in grants:
            feature = self._require_feature(grant["featureId"])
            if grant["period"] == "CUSTOM" and not grant.get("customEndDate"):
                raise EmulatorError("BadUserInput", "customEndDate is required for a CUSTOM period")
            if (
                feature.type == "NUMBER"
                and grant.get("usageLimit") is None
                and not grant.get("hasUnlimitedUsage")
            ):
                raise EmulatorError(
                    "BadUserInput", f"usageLimit or hasUnlimitedUsage is required for {feature.id}"
                )
            custom_end = self._parse_date(grant.get("customEndDate"), "customEndDate")
            promotions.append(new_promotion(grant, now, custom_end))
        granted = self._promotions.setdefault(customer_id, {})
        for promotion in promotions:
            granted[promotion.feature_id] = promotion
        self._entitlements_changed(customer, now)
        back_reference = lazy(lambda: self._customer_dict(customer))
        return [self._promotion_dict(p, back_reference) for p in promotions]

    def revoke_promotion(self, customer_id: str, feature_id: str) -> JsonDict:
        """``revokePromotionalEntitlement``."""
        customer = self._require_customer(customer_id)
        promotion = self._promotions.get(customer_id, {}).pop(feature_id, None)
        if promotion is None:
            raise EmulatorError(
                "PromotionalEntitlementNotFoundError",
                f"No promotional entitlement of {feature_id} for customer {customer_id}",
            )
        promotion.status = "Expired"
        now = self.clock.now()
        self._entitlements_changed(customer, now)
        return self._promotion_dict(promotion, lazy(lambda: self._customer_dict(customer)))

    def _entitlements_changed(self, customer: CustomerRecord, now: datetime) -> None:
        customer.updated_at = customer.entitlements_updated_at = now
        resources = {s.resource_id for s in customer.subscriptions} | {None}
        for resource_id in sorted(resources, key=lambda r: r or ""):
            self._notify(("entitlements", customer.customer_id, resource_id))

    # --- usage and events ---------------------------------------------------------------------

    def report_usage(self, usage: Mapping[str, Any]) -> JsonDict:
        return self._apply_usages([usage])[0]

    def report_usage_bulk(self, usages: Sequence[Mapping[str, Any]]) -> list[JsonDict]:
        """All or nothing: one invalid usage and none is applied."""
        self.counters.bulk_sizes.append(len(usages))
        if len(usages) > MAX_BULK_USAGES:
            raise EmulatorError(
                "InvalidArgumentError",
                f"reportUsageBulk accepts at most {MAX_BULK_USAGES} usages, got {len(usages)}",
            )
        return self._apply_usages(usages)

    def report_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        self.counters.event_batch_sizes.append(len(events))
        if len(events) > MAX_EVENTS_PER_CALL:
            raise EmulatorError(
                "InvalidArgumentError",
                f"reportEvent accepts at most {MAX_EVENTS_PER_CALL} events, got {len(events)}",
            )
        for index, event in enumerate(events):
            for key in ("eventName", "customerId", "idempotencyKey"):
                if not event.get(key):
                    raise EmulatorError(
                        "InvalidArgumentError", f"usageEvents[{index}].{key} must not be empty"
                    )
        for event in events:
            if event["idempotencyKey"] in self._event_keys:
                self.counters.duplicate_events += 1
                continue
            self._event_keys.add(event["idempotencyKey"])
            self.counters.events_accepted += 1
            self.events.append(dict(event))

    # --- internals: seeding -------------------------------------------------------------------

    def _seed(self) -> None:
        now = self.clock.now()
        self.counters = StateCounters()
        self._customers: dict[str, CustomerRecord] = {}
        self._subscriptions: dict[str, SubscriptionRecord] = {}
        self._usage: dict[UsageKey, UsageRecord] = {}
        self._usage_keys: set[str] = set()
        self._event_keys: set[str] = set()
        self._promotions: dict[str, dict[str, Promotion]] = {}
        # The latest changes of each usage value, for usageHistory.
        self.usage_history: dict[UsageKey, deque[tuple[datetime, float]]] = {}
        # The last accepted events, for tests and for curl users to look at.
        self.events: deque[JsonDict] = deque(maxlen=10_000)
        for seed in self.catalog.customers:
            customer = CustomerRecord(
                customer_id=seed.id,
                uuid=str(uuid.uuid4()),
                name=seed.name,
                email=seed.email,
                additional_meta_data=dict(seed.additional_meta_data) or None,
                billing_id=None,
                created_at=now,
                updated_at=now,
                entitlements_updated_at=now,
            )
            self._customers[seed.id] = customer
            for sub in seed.subscriptions:
                record = SubscriptionRecord(
                    ref_id=sub.id,
                    uuid=str(uuid.uuid4()),
                    customer_id=seed.id,
                    plan_id=sub.plan_id,
                    resource_id=sub.resource_id,
                    billing_period=sub.billing_period or self._default_billing(sub.plan_id),
                    start_date=sub.start_date or now,
                    created_at=now,
                )
                customer.subscriptions.append(record)
                self._subscriptions[sub.id] = record
            seeded = [(fid, value, None) for fid, value in seed.usage] + [
                (fid, value, sub.resource_id)
                for sub in seed.subscriptions
                for fid, value in sub.usage
            ]
            for feature_id, value, resource_id in seeded:
                grant = self._grants(customer, resource_id).get(feature_id)
                period = self._period(grant, now)
                self._usage[(seed.id, feature_id, resource_id)] = UsageRecord(
                    value=value, period_start=period[0] if period else None, updated_at=now
                )

    def _resource_keys(self) -> set[tuple[str, str | None]]:
        keys: set[tuple[str, str | None]] = set()
        for customer in self._customers.values():
            keys.add((customer.customer_id, None))
            keys.update((customer.customer_id, s.resource_id) for s in customer.subscriptions)
        return keys

    # --- internals: entitlements --------------------------------------------------------------

    def _grants(self, customer: CustomerRecord, resource_id: str | None) -> dict[str, Grant]:
        grants: dict[str, Grant] = {}
        for subscription in customer.active_subscriptions(resource_id):
            plan = self.catalog.plans[subscription.plan_id]
            for ent in plan.entitlements:
                candidate = Grant(
                    feature=self.catalog.features[ent.feature_id],
                    usage_limit=ent.usage_limit,
                    has_unlimited_usage=ent.has_unlimited_usage,
                    has_soft_limit=ent.has_soft_limit,
                    reset_period=ent.reset_period,
                    enum_values=ent.enum_values,
                    anchor=subscription.start_date,
                )
                grants[ent.feature_id] = _merge(grants.get(ent.feature_id), candidate)
        # Promotional grants are the customer's, whatever the resource.
        for promotion in self._promotions_of(customer):
            candidate = Grant(
                feature=self.catalog.features[promotion.feature_id],
                usage_limit=promotion.usage_limit,
                has_unlimited_usage=promotion.has_unlimited_usage,
                has_soft_limit=promotion.has_soft_limit,
                reset_period=promotion.reset_period,
                enum_values=promotion.enum_values,
                anchor=promotion.start,
            )
            grants[promotion.feature_id] = _merge(grants.get(promotion.feature_id), candidate)
        return grants

    def _promotions_of(self, customer: CustomerRecord) -> list[Promotion]:
        now = self.clock.now()
        granted = self._promotions.get(customer.customer_id, {})
        return [p for p in granted.values() if p.is_active(now)]

    def _period(self, grant: Grant | None, now: datetime) -> tuple[datetime, datetime] | None:
        if grant is None or grant.reset_period is None:
            return None
        if grant.feature.meter_type != "Incremental":
            return None
        return current_period(grant.anchor, grant.reset_period, now)

    @staticmethod
    def _effective_usage(
        record: UsageRecord | None, period: tuple[datetime, datetime] | None
    ) -> float:
        # Resetting is lazy: usage stored for an earlier period reads as zero.
        if record is None:
            return 0.0
        if period is not None and record.period_start != period[0]:
            return 0.0
        return record.value

    def _entitlement(
        self, customer: CustomerRecord, resource_id: str | None, grant: Grant, now: datetime
    ) -> JsonDict:
        feature = grant.feature
        current_usage: float | None = None
        usage_updated_at: str | None = None
        period = self._period(grant, now)
        is_granted = True
        if feature.is_metered:
            record = self._usage.get((customer.customer_id, feature.id, resource_id))
            current_usage = self._effective_usage(record, period)
            usage_updated_at = iso(record.updated_at) if record is not None else None
            limit = grant.usage_limit
            if not (grant.has_unlimited_usage or grant.has_soft_limit):
                is_granted = limit is not None and current_usage < limit
        numeric = feature.type == "NUMBER"
        return {
            "__typename": "Entitlement",
            "isGranted": is_granted,
            "accessDeniedReason": None if is_granted else "RequestedUsageExceedingLimit",
            "customerId": customer.customer_id,
            "resourceId": resource_id,
            "usageLimit": grant.usage_limit if numeric else None,
            "hasUnlimitedUsage": grant.has_unlimited_usage,
            "hasSoftLimit": grant.has_soft_limit if numeric else None,
            "currentUsage": current_usage,
            "enumValues": list(grant.enum_values) if grant.enum_values is not None else None,
            "requestedUsage": None,
            "requestedValues": None,
            "entitlementUpdatedAt": iso(customer.entitlements_updated_at),
            "usageUpdatedAt": usage_updated_at,
            "usagePeriodAnchor": iso(grant.anchor) if period else None,
            "usagePeriodStart": iso(period[0]) if period else None,
            "usagePeriodEnd": iso(period[1]) if period else None,
            "nextResetDate": iso(period[1]) if period else None,
            "resetPeriod": grant.reset_period,
            "resetPeriodConfiguration": reset_period_configuration(grant.reset_period),
            "validUntil": None,
            "displayNameOverride": None,
            "hiddenFromWidgets": None,
            "meterId": None,
            "creditRate": None,
            "feature": self.shapes.entitlement_feature(feature.id),
        }

    # --- internals: usage ---------------------------------------------------------------------

    def _apply_usages(self, usages: Sequence[Mapping[str, Any]]) -> list[JsonDict]:
        now = self.clock.now()
        planned = self._plan_usages(usages, now)
        for item in planned:
            if item.new_usage is None:
                self.counters.duplicate_keys += 1
                continue
            self._usage[item.key] = UsageRecord(
                value=item.new_usage,
                period_start=item.period[0] if item.period else None,
                updated_at=now,
            )
            history = self.usage_history.setdefault(item.key, deque(maxlen=USAGE_HISTORY))
            history.append((now, item.new_usage))
            if item.idempotency_key:
                self._usage_keys.add(item.idempotency_key)
            self.counters.usages_applied += 1
        changed = dict.fromkeys(item.key for item in planned if item.new_usage is not None)
        for customer_id, feature_id, resource_id in changed:
            self._notify(("usage", customer_id, feature_id, resource_id))
        return [
            self.shapes.usage_measurement(
                customer_id=item.key[0],
                feature_id=item.key[1],
                resource_id=item.key[2],
                value=item.value,
                current_usage=item.current_usage,
                timestamp=item.timestamp,
                created_at=now,
                period=item.period,
            )
            for item in planned
        ]

    def _plan_usages(
        self, usages: Sequence[Mapping[str, Any]], now: datetime
    ) -> list[_PlannedUsage]:
        """Validate every usage and compute its outcome, in order, without changing anything."""
        pending: dict[UsageKey, float] = {}
        pending_keys: set[str] = set()
        planned: list[_PlannedUsage] = []
        many = len(usages) > 1
        for index, usage in enumerate(usages):
            where = f"usages[{index}]: " if many else ""
            try:
                planned.append(self._plan_usage(usage, now, pending, pending_keys))
            except EmulatorError as exc:
                raise EmulatorError(exc.code, where + exc.message) from None
        return planned

    def _plan_usage(
        self,
        usage: Mapping[str, Any],
        now: datetime,
        pending: dict[UsageKey, float],
        pending_keys: set[str],
    ) -> _PlannedUsage:
        customer = self._require_customer(usage["customerId"])
        feature = self._require_feature(usage["featureId"])
        if not feature.is_metered:
            raise EmulatorError(
                "MeteringNotAvailableForFeatureType",
                f"Feature {feature.id} is not metered; usage cannot be reported for it",
            )
        value = usage["value"]
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise EmulatorError("BadUserInput", "value must be a finite number")
        behavior = usage.get("updateBehavior") or "DELTA"
        if behavior not in ("DELTA", "SET"):
            raise EmulatorError("BadUserInput", f"unknown updateBehavior {behavior}")
        resource_id = usage.get("resourceId")
        key: UsageKey = (customer.customer_id, feature.id, resource_id)
        period = self._period(self._grants(customer, resource_id).get(feature.id), now)
        timestamp = self._parse_date(usage.get("createdAt"), "createdAt") or now
        current = pending.get(key)
        if current is None:
            current = self._effective_usage(self._usage.get(key), period)
        idempotency_key = usage.get("idempotencyKey") or None
        if idempotency_key is not None and (
            idempotency_key in self._usage_keys or idempotency_key in pending_keys
        ):
            return _PlannedUsage(key, float(value), None, current, period, timestamp, None)
        new_usage = current + value if behavior == "DELTA" else float(value)
        if not math.isfinite(new_usage):
            raise EmulatorError("BadUserInput", "resulting usage is not a finite number")
        pending[key] = new_usage
        if idempotency_key is not None:
            pending_keys.add(idempotency_key)
        return _PlannedUsage(
            key, float(value), new_usage, new_usage, period, timestamp, idempotency_key
        )

    # --- internals: subscriptions -------------------------------------------------------------

    def _create_subscription(
        self,
        customer: CustomerRecord,
        params: Mapping[str, Any],
        start: datetime | None,
        now: datetime,
    ) -> SubscriptionRecord:
        plan_id = params["planId"]
        resource_id = params.get("resourceId")
        for previous in customer.active_subscriptions(resource_id):
            self._end(previous, now)
        ref_id = params.get("subscriptionId") or params.get("refId") or _subscription_ref(plan_id)
        subscription = SubscriptionRecord(
            ref_id=ref_id,
            uuid=str(uuid.uuid4()),
            customer_id=customer.customer_id,
            plan_id=plan_id,
            resource_id=resource_id,
            billing_period=params.get("billingPeriod") or self._default_billing(plan_id),
            start_date=start or now,
            created_at=now,
            unit_quantity=params.get("unitQuantity"),
            additional_meta_data=params.get("additionalMetaData"),
        )
        customer.subscriptions.append(subscription)
        customer.updated_at = customer.entitlements_updated_at = now
        self._subscriptions[ref_id] = subscription
        return subscription

    def _default_billing(self, plan_id: str) -> str | None:
        return None if self.catalog.plans[plan_id].pricing_type == "FREE" else "MONTHLY"

    @staticmethod
    def _end(subscription: SubscriptionRecord, now: datetime) -> None:
        subscription.status = "CANCELED"
        subscription.cancellation_date = now
        subscription.end_date = now

    def _check_new_subscription_id(self, params: Mapping[str, Any]) -> None:
        ref_id = params.get("subscriptionId") or params.get("refId")
        if ref_id and ref_id in self._subscriptions:
            raise EmulatorError(
                "DuplicatedEntityNotAllowed", f"Subscription with id {ref_id} already exists"
            )

    def _start_date(self, params: Mapping[str, Any]) -> datetime | None:
        return self._parse_date(params.get("startDate"), "startDate")

    @staticmethod
    def _parse_date(value: object, name: str) -> datetime | None:
        if value is None:
            return None
        try:
            return parse_iso(str(value))
        except ValueError:
            raise EmulatorError("BadUserInput", f"{name} is not an ISO-8601 date-time") from None

    # --- internals: lookups and rendering -----------------------------------------------------

    def _require_customer(self, customer_id: str) -> CustomerRecord:
        customer = self._customers.get(customer_id)
        if customer is None:
            raise EmulatorError("CustomerNotFound", f"Customer {customer_id} not found")
        return customer

    def _require_feature(self, feature_id: str) -> Feature:
        feature = self.catalog.features.get(feature_id)
        if feature is None:
            raise EmulatorError("FeatureNotFound", f"Feature {feature_id} not found")
        return feature

    def _require_plan(self, plan_id: str) -> None:
        if plan_id not in self.catalog.plans:
            raise EmulatorError("PlanNotFound", f"Plan {plan_id} not found")

    def _customer_dict(self, customer: CustomerRecord) -> JsonDict:
        active = [s for s in customer.subscriptions if s.is_active]
        result: JsonDict = {
            "__typename": "Customer",
            "id": customer.uuid,
            "customerId": customer.customer_id,
            "refId": customer.customer_id,
            "name": customer.name,
            "email": customer.email,
            "billingId": customer.billing_id,
            "additionalMetaData": customer.additional_meta_data,
            "createdAt": iso(customer.created_at),
            "updatedAt": iso(customer.updated_at),
            "environmentId": self.shapes.environment_id,
            "environment": self.shapes.environment,
            "hasActiveSubscription": bool(active),
            "hasActiveResource": any(s.resource_id is not None for s in active),
            "hasPaymentMethod": False,
            "totalActiveSubscription": float(len(active)),
            "totalActivePromotionalEntitlements": float(len(self._promotions_of(customer))),
            "eligibleForTrial": [],
            "trialedPlans": [],
            "syncStates": [],
        }
        back_reference = lazy(lambda: result)
        result["subscriptions"] = [
            self._subscription_dict(s, back_reference) for s in customer.subscriptions
        ]
        result["promotionalEntitlements"] = [
            self._promotion_dict(p, back_reference) for p in self._promotions_of(customer)
        ]
        return result

    def _promotion_dict(self, promotion: Promotion, customer: Lazy) -> JsonDict:
        feature = self.shapes.feature(promotion.feature_id)
        return promotion_dict(promotion, feature, customer, self.shapes.environment_id)

    def _subscription_dict(
        self, subscription: SubscriptionRecord, customer: Lazy | None = None
    ) -> JsonDict:
        if customer is None:
            record = self._customers[subscription.customer_id]
            customer = lazy(lambda: self._customer_dict(record))
        plan = self.catalog.plans[subscription.plan_id]
        billing_start = billing_end = None
        if subscription.is_active:
            cycle = "YEAR" if subscription.billing_period == "ANNUALLY" else "MONTH"
            start, end = current_period(subscription.start_date, cycle, self.clock.now())
            billing_start, billing_end = iso(start), iso(end)
        end_date = iso(subscription.end_date) if subscription.end_date else None
        return {
            "__typename": "CustomerSubscription",
            "id": subscription.uuid,
            "subscriptionId": subscription.ref_id,
            "refId": subscription.ref_id,
            "status": subscription.status,
            "startDate": iso(subscription.start_date),
            "createdAt": iso(subscription.created_at),
            "endDate": end_date,
            "cancellationDate": iso(subscription.cancellation_date)
            if subscription.cancellation_date
            else None,
            "effectiveEndDate": end_date,
            "trialEndDate": None,
            "currentBillingPeriodStart": billing_start,
            "currentBillingPeriodEnd": billing_end,
            "billingPeriod": subscription.billing_period,
            "billingId": None,
            "additionalMetaData": subscription.additional_meta_data,
            "customer": customer,
            "payingCustomer": None,
            "plan": self.shapes.plan(plan.id),
            "pricingType": plan.pricing_type,
            "paymentCollection": "NOT_REQUIRED",
            "environment": self.shapes.environment,
            "environmentId": self.shapes.environment_id,
            "resource": self.shapes.customer_resource(
                subscription.resource_id, subscription.created_at, customer
            )
            if subscription.resource_id is not None
            else None,
            "futureUpdates": [],
            "scheduledUpdates": [],
            "addons": [],
            "prices": [],
            "coupons": [],
            "wasInTrial": False,
        }

    def _notify(self, event: StateEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                # A broken listener must not undo or block a change that already happened.
                log.exception("emulator state listener failed on %s", event[0])


def _merge(current: Grant | None, candidate: Grant) -> Grant:
    """Combine two subscriptions' grants of one feature: the more generous one wins."""
    if current is None:
        return candidate
    feature = candidate.feature
    if feature.type == "BOOLEAN":
        return current
    if feature.type == "ENUM":
        granted = set(current.enum_values or ()) | set(candidate.enum_values or ())
        ordered = tuple(value for value in feature.enum_values if value in granted)
        return Grant(
            feature=feature,
            usage_limit=None,
            has_unlimited_usage=False,
            has_soft_limit=False,
            reset_period=None,
            enum_values=ordered,
            anchor=min(current.anchor, candidate.anchor),
        )
    if current.has_unlimited_usage:
        return current
    if candidate.has_unlimited_usage:
        return candidate
    current_limit = current.usage_limit or 0.0
    candidate_limit = candidate.usage_limit or 0.0
    if candidate_limit > current_limit or (
        candidate_limit == current_limit and candidate.has_soft_limit and not current.has_soft_limit
    ):
        return candidate
    return current


_REF_ALPHABET = string.ascii_lowercase + string.digits


def _subscription_ref(plan_id: str) -> str:
    """Stigg-like generated id: ``subscription-<plan>-<random>``."""
    suffix = "".join(secrets.choice(_REF_ALPHABET) for _ in range(9))
    return f"subscription-{plan_id}-{suffix}"
