"""Usage reports and raw events as the sidecar accepts them, validated, as they are spooled,
and as Stigg wants them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sidecar.timestamps import format_iso as iso
from sidecar.validation import Fields, ValidationError, check_number

Kind = Literal["usage", "event"]
KINDS: tuple[Kind, ...] = ("usage", "event")

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

    def to_record(self) -> dict[str, Any]:
        """The spooled form: the API's field names, so dead letters read like the request."""
        record: dict[str, Any] = {
            "customerId": self.customer_id,
            "featureId": self.feature_id,
            "value": self.value,
            "updateBehavior": self.update_behavior,
            "idempotencyKey": self.idempotency_key,
            "keyFromClient": self.key_from_client,
        }
        if self.resource_id is not None:
            record["resourceId"] = self.resource_id
        if self.timestamp is not None:
            record["timestamp"] = iso(self.timestamp)
        if self.dimensions:
            record["dimensions"] = self.dimensions
        return record


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


def parse_usage_request(data: Any, *, max_reports: int) -> tuple[list[UsageReport], bool]:
    """One report or ``{"usages": [...]}``; the reports and whether the body was a list.

    All or nothing: the first bad field anywhere fails the whole request."""
    if isinstance(data, dict) and "usages" in data:
        return _parse_list(data, "usages", max_reports, parse_usage), True
    return [parse_usage(data)], False


# --- raw events (reportEvent) ---------------------------------------------------------------

_EVENT_FIELDS = (
    "eventName",
    "customerId",
    "idempotencyKey",
    "resourceId",
    "timestamp",
    "dimensions",
)
MAX_EVENT_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class EventReport:
    """One validated raw event for Stigg's meters; ``idempotency_key`` is always set."""

    event_name: str
    customer_id: str
    idempotency_key: str
    key_from_client: bool
    resource_id: str | None = None
    timestamp: datetime | None = None
    dimensions: dict[str, str | int | float | bool] | None = None

    def to_stigg(self) -> dict[str, Any]:
        """``UsageEventReportInput``."""
        event: dict[str, Any] = {
            "eventName": self.event_name,
            "customerId": self.customer_id,
            "idempotencyKey": self.idempotency_key,
        }
        if self.resource_id is not None:
            event["resourceId"] = self.resource_id
        if self.timestamp is not None:
            event["timestamp"] = iso(self.timestamp)
        if self.dimensions:
            event["dimensions"] = self.dimensions
        return event

    def to_record(self) -> dict[str, Any]:
        return {**self.to_stigg(), "keyFromClient": self.key_from_client}


def parse_event(data: Any, *, path: str = "") -> EventReport:
    """Validate one raw event, raising ``ValidationError`` naming the bad field."""
    fields = Fields(data, path=path, allowed=_EVENT_FIELDS)
    name = fields.string("eventName", required=True, max_length=MAX_EVENT_NAME_LENGTH)
    customer_id = fields.identifier("customerId", required=True)
    key = fields.string("idempotencyKey", max_length=255)
    if key is not None and not key.strip():
        raise ValidationError(
            f"{path}.idempotencyKey" if path else "idempotencyKey", "must not be empty"
        )
    dimensions = fields.object("dimensions")
    if dimensions is not None:
        _check_dimensions(dimensions, f"{path}.dimensions" if path else "dimensions")
    assert name is not None
    assert customer_id is not None
    return EventReport(
        event_name=name,
        customer_id=customer_id,
        idempotency_key=key if key is not None else f"sidecar-{uuid.uuid4()}",
        key_from_client=key is not None,
        resource_id=fields.identifier("resourceId"),
        timestamp=fields.timestamp("timestamp"),
        dimensions=dimensions,
    )


def parse_event_request(data: Any, *, max_reports: int) -> tuple[list[EventReport], bool]:
    """One event or ``{"events": [...]}``; all or nothing like usage."""
    if isinstance(data, dict) and "events" in data:
        return _parse_list(data, "events", max_reports, parse_event), True
    return [parse_event(data)], False


def _parse_list(data: dict[str, Any], name: str, max_reports: int, parse: Any) -> list[Any]:
    extra = sorted(set(data) - {name})
    if extra:
        raise ValidationError(extra[0], f"unknown field (a batch has only {name!r})")
    items = data[name]
    if not isinstance(items, list):
        raise ValidationError(name, "must be a JSON array")
    if not items:
        raise ValidationError(name, "must not be empty")
    if len(items) > max_reports:
        raise ValidationError(name, f"must have at most {max_reports} items, got {len(items)}")
    return [parse(item, path=f"{name}[{index}]") for index, item in enumerate(items)]
