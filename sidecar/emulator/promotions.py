"""Promotional entitlements: a feature granted to one customer on top of its plans, for a
period (``ONE_MONTH``, ``LIFETIME``, ...), as Stigg's ``grantPromotionalEntitlements`` does."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sidecar.emulator.periods import add_months, iso

# Stigg's PromotionalEntitlementPeriod: how long a grant lasts from its start.
_MONTHS = {"ONE_MONTH": 1, "SIX_MONTH": 6, "ONE_YEAR": 12}


@dataclass
class Promotion:
    """One customer's promotional grant of one feature."""

    feature_id: str
    uuid: str
    period: str
    start: datetime
    end: datetime | None
    usage_limit: float | None
    has_unlimited_usage: bool
    has_soft_limit: bool
    reset_period: str | None
    enum_values: tuple[str, ...] | None
    is_visible: bool
    status: str = "Active"

    def is_active(self, now: datetime) -> bool:
        return self.status == "Active" and (self.end is None or now < self.end)


def new_promotion(
    params: Mapping[str, Any], now: datetime, custom_end: datetime | None
) -> Promotion:
    """A promotion from one ``GrantPromotionalEntitlementInput`` (already GraphQL-coerced)."""
    period = params["period"]
    end: datetime | None = None
    if period == "CUSTOM":
        end = custom_end
    elif period == "ONE_WEEK":
        end = now + timedelta(weeks=1)
    elif period in _MONTHS:
        end = add_months(now, _MONTHS[period])
    enum_values = params.get("enumValues")
    return Promotion(
        feature_id=params["featureId"],
        uuid=str(uuid.uuid4()),
        period=period,
        start=now,
        end=end,
        usage_limit=params.get("usageLimit"),
        has_unlimited_usage=bool(params.get("hasUnlimitedUsage")),
        has_soft_limit=bool(params.get("hasSoftLimit")),
        reset_period=params.get("resetPeriod"),
        enum_values=tuple(enum_values) if enum_values is not None else None,
        is_visible=params.get("isVisible") is not False,
    )


def promotion_dict(
    promotion: Promotion, feature: Mapping[str, Any], customer: Any, environment_id: str
) -> dict[str, Any]:
    """Stigg's ``PromotionalEntitlement`` object."""
    return {
        "__typename": "PromotionalEntitlement",
        "id": promotion.uuid,
        "status": promotion.status,
        "period": promotion.period,
        "startDate": iso(promotion.start),
        "endDate": iso(promotion.end) if promotion.end else None,
        "createdAt": iso(promotion.start),
        "updatedAt": iso(promotion.start),
        "usageLimit": promotion.usage_limit,
        "hasUnlimitedUsage": promotion.has_unlimited_usage,
        "unlimited": promotion.has_unlimited_usage,
        "hasSoftLimit": promotion.has_soft_limit,
        "resetPeriod": promotion.reset_period,
        "enumValues": list(promotion.enum_values) if promotion.enum_values is not None else None,
        "isVisible": promotion.is_visible,
        "description": None,
        "featureId": feature["id"],
        "feature": feature,
        "customer": customer,
        "environmentId": environment_id,
    }
