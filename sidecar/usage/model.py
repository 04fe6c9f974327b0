"""Usage reports and raw events: the request models (the one definition validation, OpenAPI and
the MCP tool schema come from), the validated reports, as they are spooled and as Stigg wants
them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from sidecar.timestamps import format_iso as iso
from sidecar.validation import (
    Id,
    Model,
    PastTimestamp,
    ValidationError,
    check_number,
    checked,
    validate,
)

Kind = Literal["usage", "event"]
KINDS: tuple[Kind, ...] = ("usage", "event")

UPDATE_BEHAVIORS = ("DELTA", "SET")
MAX_DIMENSION_VALUE_LENGTH = 1000
MAX_EVENT_NAME_LENGTH = 255


def _dimension(value: Any) -> str | float | bool | None:
    if isinstance(value, str):
        if len(value) > MAX_DIMENSION_VALUE_LENGTH:
            raise ValidationError("", "is too long")
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        check_number("", value)  # rejects NaN, Infinity and integers beyond a float
        return value
    raise ValidationError("", "must be a string, number or boolean")


Dimensions = Annotated[
    dict[
        str,
        Annotated[
            str | float | bool | None,
            checked(_dimension),
            WithJsonSchema({"type": ["string", "number", "boolean", "null"]}),
        ],
    ],
    Field(max_length=50, description="Extra attributes of the usage (at most 50)."),
]
IdempotencyKey = Annotated[
    str,
    Field(
        max_length=255,
        pattern=r"\S",
        description="Repeat it to retry safely (remembered for 24 h); minted by the sidecar"
        " (`sidecar-<uuid>`) when absent.",
    ),
]


class Usage(Model):
    """One usage report as ``POST /v1/usage``, gRPC and the ``report-usage`` tool take it."""

    customer_id: Id
    feature_id: Id
    value: Annotated[float, Field(description="Finite; added (DELTA) or set (SET).")]
    resource_id: Id | None = None
    update_behavior: Annotated[
        Literal["DELTA", "SET"] | None, Field(json_schema_extra={"default": "DELTA"})
    ] = None
    idempotency_key: IdempotencyKey | None = None
    timestamp: Annotated[
        PastTimestamp | None,
        Field(description="When the usage happened; default: when the sidecar accepted it."),
    ] = None
    dimensions: Dimensions | None = None

    def report(self) -> UsageReport:
        """The validated report, its idempotency key minted when the app sent none."""
        key = self.idempotency_key
        return UsageReport(
            customer_id=self.customer_id,
            feature_id=self.feature_id,
            value=float(self.value),
            update_behavior=self.update_behavior or "DELTA",
            idempotency_key=key if key is not None else f"sidecar-{uuid.uuid4()}",
            key_from_client=key is not None,
            resource_id=self.resource_id,
            timestamp=self.timestamp,
            dimensions=self.dimensions,  # type: ignore[arg-type]
        )


class UsageReportBatch(Model):
    """Up to 1,000 reports (``maxReportsPerRequest``), stored all or none."""

    usages: Annotated[list[Usage], Field(min_length=1, max_length=1000)]


class Event(Model):
    """One raw event for Stigg's meters, as ``POST /v1/events`` takes it."""

    event_name: Annotated[str, Field(max_length=MAX_EVENT_NAME_LENGTH, pattern=r"\S")]
    customer_id: Id
    idempotency_key: IdempotencyKey | None = None
    resource_id: Id | None = None
    timestamp: PastTimestamp | None = None
    dimensions: Dimensions | None = None

    def report(self) -> EventReport:
        key = self.idempotency_key
        return EventReport(
            event_name=self.event_name,
            customer_id=self.customer_id,
            idempotency_key=key if key is not None else f"sidecar-{uuid.uuid4()}",
            key_from_client=key is not None,
            resource_id=self.resource_id,
            timestamp=self.timestamp,
            dimensions=self.dimensions,  # type: ignore[arg-type]
        )


class EventBatch(Model):
    """Up to 1,000 events, stored all or none."""

    events: Annotated[list[Event], Field(min_length=1, max_length=1000)]


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
    try:
        return validate(Usage, data).report()
    except ValidationError as exc:
        raise exc.under(path) from None


def parse_usage_request(data: bytes | Any, *, max_reports: int) -> tuple[list[UsageReport], bool]:
    """One report or ``{"usages": [...]}`` (JSON bytes, or parsed); the reports and whether the
    body was a list. All or nothing: the first bad field anywhere fails the whole request."""
    if _is_batch(data, b'"usages"', "usages"):
        batch = validate(UsageReportBatch, data)
        _check_size("usages", batch.usages, max_reports)
        return [usage.report() for usage in batch.usages], True
    return [validate(Usage, data).report()], False


# --- raw events (reportEvent) -----------------------------------------------


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
    try:
        return validate(Event, data).report()
    except ValidationError as exc:
        raise exc.under(path) from None


def parse_event_request(data: bytes | Any, *, max_reports: int) -> tuple[list[EventReport], bool]:
    """One event or ``{"events": [...]}``; all or nothing like usage."""
    if _is_batch(data, b'"events"', "events"):
        batch = validate(EventBatch, data)
        _check_size("events", batch.events, max_reports)
        return [event.report() for event in batch.events], True
    return [validate(Event, data).report()], False


def _is_batch(data: bytes | Any, quoted: bytes, name: str) -> bool:
    """A batch is an object with the list's key. In bytes a guess: a key spelled with escapes
    is missed, a report mentioning the word is taken for a batch; both then fail validation,
    and the caller retries with the parsed body, which decides exactly."""
    if isinstance(data, bytes):
        return quoted in data
    return isinstance(data, dict) and name in data


def _check_size(name: str, items: list[Any], max_reports: int) -> None:
    if len(items) > max_reports:
        raise ValidationError(name, f"must have at most {max_reports} items, got {len(items)}")
