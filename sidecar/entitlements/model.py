"""A customer's entitlement state and the local evaluation of a check against it.

Stigg answers ``entitlementsState`` once per customer (and resource); every per-feature check,
including ``requestedUsage`` and ``requestedValues``, is then evaluated here, the way Stigg does.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sidecar.timestamps import format_epoch, parse_timestamp

# Stigg's AccessDeniedReason enum names (a subset is produced locally).
CUSTOMER_NOT_FOUND = "CustomerNotFound"
NO_ACTIVE_SUBSCRIPTION = "NoActiveSubscription"
NO_FEATURE_ENTITLEMENT = "NoFeatureEntitlementInSubscription"
REQUESTED_USAGE_EXCEEDING_LIMIT = "RequestedUsageExceedingLimit"
REQUESTED_VALUES_MISMATCH = "RequestedValuesMismatch"

METERED = ("Incremental", "Fluctuating")


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _intern(value: Any) -> str | None:
    return None if value is None else sys.intern(str(value))


@dataclass(frozen=True, slots=True, weakref_slot=True)
class FeatureEntitlement:
    """One feature's entitlement; small and slotted, many thousands live in the cache."""

    feature_id: str
    feature_type: str  # BOOLEAN | NUMBER | ENUM
    meter_type: str | None  # None | Incremental | Fluctuating
    is_granted: bool
    usage_limit: float | None
    has_unlimited_usage: bool
    has_soft_limit: bool
    current_usage: float | None
    enum_values: tuple[str, ...] | None
    reset_period: str | None
    usage_period_start: float | None
    usage_period_end: float | None

    @property
    def is_metered(self) -> bool:
        return self.feature_type == "NUMBER" and self.meter_type in METERED

    def with_usage(self, current_usage: float) -> FeatureEntitlement:
        """This entitlement with another usage figure. Every accepted report makes one, so it
        is built directly: ``dataclasses.replace`` costs twice as much."""
        return FeatureEntitlement(
            self.feature_id,
            self.feature_type,
            self.meter_type,
            self.is_granted,
            self.usage_limit,
            self.has_unlimited_usage,
            self.has_soft_limit,
            current_usage,
            self.enum_values,
            self.reset_period,
            self.usage_period_start,
            self.usage_period_end,
        )

    @classmethod
    def from_stigg(cls, raw: Mapping[str, Any]) -> FeatureEntitlement:
        """Build from one ``Entitlement`` object of Stigg's ``entitlementsState``."""
        feature = raw.get("feature") or {}
        enum_values = raw.get("enumValues")
        return canonical(
            cls(
                # Interned: the same few names repeat across every cached customer.
                feature_id=sys.intern(str(feature.get("refId"))),
                feature_type=sys.intern(str(feature.get("featureType") or "BOOLEAN")),
                meter_type=_intern(feature.get("meterType")),
                is_granted=bool(raw.get("isGranted")),
                usage_limit=_number(raw.get("usageLimit")),
                has_unlimited_usage=bool(raw.get("hasUnlimitedUsage")),
                has_soft_limit=bool(raw.get("hasSoftLimit")),
                current_usage=_number(raw.get("currentUsage")),
                enum_values=(
                    tuple(sys.intern(str(v)) for v in enum_values)
                    if enum_values is not None
                    else None
                ),
                reset_period=_intern(raw.get("resetPeriod")),
                usage_period_start=parse_timestamp(raw.get("usagePeriodStart")),
                usage_period_end=parse_timestamp(raw.get("usagePeriodEnd")),
            )
        )


# Measured with bench/check_inprocess.py (RSS growth: ~204 bytes per entitlement), rounded up.
STATE_OVERHEAD_BYTES = 400
ENTITLEMENT_BYTES = 180


def _entitlement_to_json(e: FeatureEntitlement) -> list[Any]:
    return [
        e.feature_id,
        e.feature_type,
        e.meter_type,
        e.is_granted,
        e.usage_limit,
        e.has_unlimited_usage,
        e.has_soft_limit,
        e.current_usage,
        e.enum_values,
        e.reset_period,
        e.usage_period_start,
        e.usage_period_end,
    ]


def _entitlement_from_json(item: list[Any]) -> FeatureEntitlement:
    (
        feature_id,
        feature_type,
        meter_type,
        granted,
        limit,
        unlimited,
        soft,
        usage,
        enum_values,
        reset_period,
        start,
        end,
    ) = item
    return canonical(
        FeatureEntitlement(
            feature_id=sys.intern(feature_id),
            feature_type=sys.intern(feature_type),
            meter_type=_intern(meter_type),
            is_granted=granted,
            usage_limit=limit,
            has_unlimited_usage=unlimited,
            has_soft_limit=soft,
            current_usage=usage,
            enum_values=tuple(sys.intern(v) for v in enum_values)
            if enum_values is not None
            else None,
            reset_period=_intern(reset_period),
            usage_period_start=start,
            usage_period_end=end,
        )
    )


# Entitlements without usage are the same for every customer on a plan: share one object.
# Weak values, so an entitlement no cached state refers to any more is dropped from here too.
_SHARED: weakref.WeakValueDictionary[FeatureEntitlement, FeatureEntitlement] = (
    weakref.WeakValueDictionary()
)


def canonical(entitlement: FeatureEntitlement) -> FeatureEntitlement:
    """The shared instance equal to ``entitlement`` (metered ones are not shared: usage varies)."""
    if entitlement.current_usage is not None:
        return entitlement
    return _SHARED.setdefault(entitlement, entitlement)


@dataclass(frozen=True, slots=True)
class EntitlementsState:
    """Everything Stigg says about one customer (and resource) at ``fetched_at``."""

    customer_id: str
    resource_id: str | None
    access_denied_reason: str | None  # customer-level: CustomerNotFound, NoActiveSubscription…
    entitlements: Mapping[str, FeatureEntitlement]
    fetched_at: float

    def to_json(self) -> list[Any]:
        """A compact JSON form for the shared (Redis) cache."""
        return [
            self.customer_id,
            self.resource_id,
            self.access_denied_reason,
            self.fetched_at,
            [_entitlement_to_json(e) for e in self.entitlements.values()],
        ]

    @classmethod
    def from_json(cls, data: list[Any]) -> EntitlementsState:
        customer_id, resource_id, reason, fetched_at, items = data
        entitlements = (_entitlement_from_json(item) for item in items)
        return cls(
            customer_id=customer_id,
            resource_id=resource_id,
            access_denied_reason=reason,
            entitlements={e.feature_id: e for e in entitlements},
            fetched_at=fetched_at,
        )

    def with_entitlement(self, updated: FeatureEntitlement) -> EntitlementsState:
        """This state with ``updated`` in place of its feature's entitlement."""
        entitlements = dict(self.entitlements)
        entitlements[updated.feature_id] = updated
        return EntitlementsState(
            self.customer_id,
            self.resource_id,
            self.access_denied_reason,
            entitlements,
            self.fetched_at,
        )

    def approx_bytes(self) -> int:
        """An estimate of the memory this state holds, for the L1 byte budget (see bench)."""
        return STATE_OVERHEAD_BYTES + ENTITLEMENT_BYTES * len(self.entitlements)

    @classmethod
    def from_stigg(
        cls, customer_id: str, resource_id: str | None, raw: Mapping[str, Any], fetched_at: float
    ) -> EntitlementsState:
        items = (FeatureEntitlement.from_stigg(e) for e in raw.get("entitlements") or ())
        return cls(
            customer_id=customer_id,
            resource_id=resource_id,
            access_denied_reason=raw.get("accessDeniedReason"),
            entitlements={e.feature_id: e for e in items},
            fetched_at=fetched_at,
        )


class CheckRequest(NamedTuple):
    """One entitlement check as an app asks it (a tuple: built on every check, cheaply)."""

    customer_id: str
    feature_id: str
    resource_id: str | None = None
    requested_usage: float | None = None
    requested_values: tuple[str, ...] | None = None


@functools.lru_cache(maxsize=4096)
def iso(epoch: float | None) -> str | None:
    """Epoch seconds as Stigg's DateTime; cached: the same few period boundaries are
    formatted for every check."""
    return None if epoch is None else format_epoch(epoch)


def _current_usage(entitlement: FeatureEntitlement, now: float) -> float | None:
    """Usage as of ``now``: a metered period that has ended starts again from zero."""
    if entitlement.current_usage is None:
        return None
    end = entitlement.usage_period_end
    if end is not None and now >= end and entitlement.meter_type == "Incremental":
        return 0.0
    return entitlement.current_usage


def blank_answer(request: CheckRequest) -> dict[str, Any]:
    """Every key of an answer, as a denial; evaluation fills in what applies."""
    return {
        "customerId": request.customer_id,
        "featureId": request.feature_id,
        "resourceId": request.resource_id,
        "hasAccess": False,
        "isFallback": False,
        "accessDeniedReason": None,
        "source": None,
        "type": None,
        "usageLimit": None,
        "currentUsage": None,
        "isUnlimited": False,
        "hasSoftLimit": False,
        "requestedUsage": request.requested_usage,
        "value": None,
        "enumValues": None,
        "requestedValues": list(request.requested_values) if request.requested_values else None,
        "resetPeriod": None,
        "meterType": None,
        "usagePeriodStart": None,
        "usagePeriodEnd": None,
    }


def evaluate(
    state: EntitlementsState, request: CheckRequest, now: float, source: str = "cache"
) -> dict[str, Any]:
    """The answer to ``request`` from ``state``, as the REST/MCP JSON object (camelCase).

    ``source`` says where the state came from: cache, upstream or stale.
    """
    answer = blank_answer(request)
    answer["source"] = source
    if state.access_denied_reason:
        answer["accessDeniedReason"] = state.access_denied_reason
        return answer
    entitlement = state.entitlements.get(request.feature_id)
    if entitlement is None:
        answer["accessDeniedReason"] = NO_FEATURE_ENTITLEMENT
        return answer
    answer["hasAccess"], answer["accessDeniedReason"] = _decide(entitlement, request, now)
    _describe(answer, entitlement, now)
    return answer


def _describe(fields: dict[str, Any], entitlement: FeatureEntitlement, now: float) -> None:
    """Fill in the feature-dependent fields of an answer."""
    fields["isUnlimited"] = entitlement.has_unlimited_usage
    fields["hasSoftLimit"] = entitlement.has_soft_limit
    if entitlement.feature_type == "ENUM":
        fields["type"] = "ENUM"
        fields["enumValues"] = list(entitlement.enum_values or ())
    elif entitlement.feature_type == "NUMBER" and entitlement.is_metered:
        fields["type"] = "METERED"
        fields["usageLimit"] = entitlement.usage_limit
        fields["currentUsage"] = _current_usage(entitlement, now) or 0.0
        fields["resetPeriod"] = entitlement.reset_period
        fields["meterType"] = entitlement.meter_type
        start, end = entitlement.usage_period_start, entitlement.usage_period_end
        fields["usagePeriodStart"] = iso(start)
        fields["usagePeriodEnd"] = iso(end)
    elif entitlement.feature_type == "NUMBER":
        fields["type"] = "NUMERIC"
        fields["usageLimit"] = entitlement.usage_limit
        fields["value"] = entitlement.usage_limit
    else:
        fields["type"] = "BOOLEAN"


def _decide(
    entitlement: FeatureEntitlement, request: CheckRequest, now: float
) -> tuple[bool, str | None]:
    if entitlement.feature_type == "ENUM":
        allowed = set(entitlement.enum_values or ())
        wanted: Sequence[str] = request.requested_values or ()
        if any(value not in allowed for value in wanted):
            return False, REQUESTED_VALUES_MISMATCH
        return True, None
    if not entitlement.is_metered:
        return True, None
    if entitlement.has_unlimited_usage or entitlement.has_soft_limit:
        return True, None
    limit = entitlement.usage_limit or 0.0
    current = _current_usage(entitlement, now) or 0.0
    # Without requestedUsage the question is "may I use it now", i.e. is any headroom left;
    # with it, "may I use this much more", denied when current + requested > limit.
    if request.requested_usage is None:
        granted = current < limit
    else:
        granted = current + request.requested_usage <= limit
    return (True, None) if granted else (False, REQUESTED_USAGE_EXCEEDING_LIMIT)
