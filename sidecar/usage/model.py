"""A usage report as the sidecar accepts it, validated, and as Stigg wants it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sidecar.validation import Fields, ValidationError, check_number, iso

UPDATE_BEHAVIORS = ("DELTA", "SET")
MAX_DIMENSION_VALUE_LENGTH = 1000

_FIELDS = (
    "customerId",
    "featureId",
    "value",
    "resourceId",
    "updateBehavior",
    "idempotencyKey",
    "timestamp",
    "dimensions",
)


@dataclass(frozen=True, slots=True)
class UsageReport:
    """One validated report; ``idempotency_key`` is always set (minted when the app sent none)."""

    customer_id: str
    feature_id: str
    value: float
    update_behavior: str
    idempotency_key: str
    key_from_client: bool
    resource_id: str | None = None
    timestamp: datetime | None = None
    dimensions: dict[str, str | int | float | bool] | None = None

    def to_stigg(self) -> dict[str, Any]:
        """``ReportUsageBaseInput`` (the shape shared by reportUsage and reportUsageBulk)."""
        usage: dict[str, Any] = {
            "customerId": self.customer_id,
            "featureId": self.feature_id,
            "value": self.value,
            "updateBehavior": self.update_behavior,
            "idempotencyKey": self.idempotency_key,
        }
        if self.resource_id is not None:
            usage["resourceId"] = self.resource_id
        if self.timestamp is not None:
            usage["createdAt"] = iso(self.timestamp)
        if self.dimensions:
            usage["dimensions"] = self.dimensions
        return usage


def parse_usage(data: Any, *, path: str = "") -> UsageReport:
    """Validate one report from JSON, raising ``ValidationError`` naming the bad field."""
    fields = Fields(data, path=path, allowed=_FIELDS)
    customer_id = fields.identifier("customerId", required=True)
    feature_id = fields.identifier("featureId", required=True)
    value = fields.number("value", required=True)
    behavior = fields.choice("updateBehavior", UPDATE_BEHAVIORS, default="DELTA")
    key = fields.string("idempotencyKey", max_length=255)
    if key is not None and not key.strip():
        raise ValidationError(
            f"{path}.idempotencyKey" if path else "idempotencyKey", "must not be empty"
        )
    dimensions = fields.object("dimensions")
    if dimensions is not None:
        _check_dimensions(dimensions, f"{path}.dimensions" if path else "dimensions")
    # required=True and a default guarantee these; the asserts tell the type checker.
    assert customer_id is not None
    assert feature_id is not None
    assert value is not None
    assert behavior is not None
    return UsageReport(
        customer_id=customer_id,
        feature_id=feature_id,
        value=value,
        update_behavior=behavior,
        idempotency_key=key if key is not None else f"sidecar-{uuid.uuid4()}",
        key_from_client=key is not None,
        resource_id=fields.identifier("resourceId"),
        timestamp=fields.timestamp("timestamp"),
        dimensions=dimensions,
    )


def _check_dimensions(dimensions: dict[str, Any], name: str) -> None:
    for key, value in dimensions.items():
        if isinstance(value, str):
            if len(value) > MAX_DIMENSION_VALUE_LENGTH:
                raise ValidationError(f"{name}.{key}", "is too long")
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int | float):
            check_number(f"{name}.{key}", value)  # rejects NaN and Infinity
        else:
            raise ValidationError(f"{name}.{key}", "must be a string, number or boolean")
