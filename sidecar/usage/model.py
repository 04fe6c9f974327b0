"""Usage reports and raw events: the one definition of each (validated straight from the
request's JSON bytes, and the source of the OpenAPI and MCP schemas), as they are spooled and
as Stigg wants them."""

from __future__ import annotations

import itertools
import os
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, Strict, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from sidecar.timestamps import format_iso as iso
from sidecar.validation import (
    MODEL_CONFIG,
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
            str | int | float | bool,
            checked(_dimension),
            WithJsonSchema({"type": ["string", "number", "boolean", "null"]}),
        ],
    ],
    Field(max_length=50, description="Extra attributes (at most 50)."),
]


class _KeyMinter:
    """``sidecar-<uuid>`` keys at a tenth of ``uuid4``'s cost (one is minted per report on the
    intake path): 96 random bits drawn once per process (and again in a forked child) and a
    32-bit counter as the uuid's last 8 hex digits. Unique as long as a uuid4 would be."""

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = f"sidecar-{str(uuid.uuid4())[:-8]}"
        self._counter = itertools.count()

    def __call__(self) -> str:
        n = next(self._counter)
        if n > 0xFFFFFFFF:
            self._reseed()
            n = next(self._counter)
        return f"{self._prefix}{n:08x}"


_mint_key = _KeyMinter()


# The key the app sent, or one minted for it (also for null); ``KeyFromClient`` reads the same
# input key, so both fields come out of the one pass over the JSON.
IdempotencyKey = Annotated[
    str,
    Strict(),
    Field(
        max_length=255,
        pattern=r"\S",
        description="Repeat it to retry safely (remembered for 24 h); minted by the sidecar"
        " (`sidecar-<uuid>`) when absent.",
    ),
    BeforeValidator(lambda value: _mint_key() if value is None else value),
]
KeyFromClient = Annotated[
    SkipJsonSchema[bool],
    BeforeValidator(lambda value: value is not None),
    Field(validation_alias="idempotencyKey"),
]
# Lax, so a dict (MCP arguments, gRPC) makes a report, not only an instance; the fields that
# strictness guards (a number given as "1" or true) say Strict themselves.
REPORT_CONFIG = MODEL_CONFIG | ConfigDict(strict=False)
UpdateBehavior = Annotated[
    Literal["DELTA", "SET"], BeforeValidator(lambda value: "DELTA" if value is None else value)
]


@dataclass(frozen=True, slots=True)
class UsageReport:
    """One usage report, as `POST /v1/usage`, gRPC and the `report-usage` tool take it;
    `idempotencyKey` is minted when the app sent none."""

    __pydantic_config__ = REPORT_CONFIG

    customer_id: Id
    feature_id: Id
    value: Annotated[float, Strict(), Field(description="Finite; added (DELTA) or set (SET).")]
    update_behavior: UpdateBehavior = "DELTA"
    idempotency_key: IdempotencyKey = field(default_factory=_mint_key)
    key_from_client: KeyFromClient = False
    resource_id: Id | None = None
    timestamp: Annotated[
        PastTimestamp | None,
        Field(description="When the usage happened; default: when the sidecar accepted it."),
    ] = None
    dimensions: Dimensions | None = None

    def to_record(self, accepted: str) -> dict[str, Any]:
        """The spooled form: the API's field names, so dead letters read like the request.
        ``accepted`` (ISO-8601) stands in for a missing timestamp: "when it happened" defaults
        to acceptance, so a delivery delayed by an outage counts in the period it belongs to."""
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
        record["timestamp"] = accepted if self.timestamp is None else iso(self.timestamp)
        if self.dimensions:
            record["dimensions"] = self.dimensions
        return record


class UsageReportBatch(Model):
    """Up to 1,000 reports (`usage.maxReportsPerRequest`), stored all or none."""

    usages: Annotated[list[UsageReport], Field(min_length=1, max_length=1000)]


def parse_usage(data: Any, *, path: str = "") -> UsageReport:
    """Validate one report from JSON, raising ``ValidationError`` naming the bad field."""
    try:
        return validate(UsageReport, data)
    except ValidationError as exc:
        raise exc.under(path) from None


def parse_usage_request(data: bytes | Any, *, max_reports: int) -> tuple[list[UsageReport], bool]:
    """One report or ``{"usages": [...]}`` (JSON bytes, or parsed); the reports and whether the
    body was a list. All or nothing: the first bad field anywhere fails the whole request."""
    if _is_batch(data, b'"usages"', "usages"):
        usages = validate(UsageReportBatch, data).usages
        _check_size("usages", usages, max_reports)
        return usages, True
    return [validate(UsageReport, data)], False


# --- raw events (reportEvent) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventReport:
    """One raw event for Stigg's meters, as `POST /v1/events` takes it; `idempotencyKey` is
    minted when the app sent none."""

    __pydantic_config__ = REPORT_CONFIG

    event_name: Annotated[str, Strict(), Field(max_length=MAX_EVENT_NAME_LENGTH, pattern=r"\S")]
    customer_id: Id
    idempotency_key: IdempotencyKey = field(default_factory=_mint_key)
    key_from_client: KeyFromClient = False
    resource_id: Id | None = None
    timestamp: PastTimestamp | None = None
    dimensions: Dimensions | None = None

    def to_record(self, accepted: str) -> dict[str, Any]:
        """The spooled form, ``UsageEventReportInput`` plus whether the client chose the key;
        ``accepted`` stands in for a missing timestamp as for usage."""
        event: dict[str, Any] = {
            "eventName": self.event_name,
            "customerId": self.customer_id,
            "idempotencyKey": self.idempotency_key,
            "keyFromClient": self.key_from_client,
        }
        if self.resource_id is not None:
            event["resourceId"] = self.resource_id
        event["timestamp"] = accepted if self.timestamp is None else iso(self.timestamp)
        if self.dimensions:
            event["dimensions"] = self.dimensions
        return event


class EventBatch(Model):
    """Up to 1,000 events, stored all or none."""

    events: Annotated[list[EventReport], Field(min_length=1, max_length=1000)]


def parse_event(data: Any, *, path: str = "") -> EventReport:
    """Validate one raw event, raising ``ValidationError`` naming the bad field."""
    try:
        return validate(EventReport, data)
    except ValidationError as exc:
        raise exc.under(path) from None


def parse_event_request(data: bytes | Any, *, max_reports: int) -> tuple[list[EventReport], bool]:
    """One event or ``{"events": [...]}``; all or nothing like usage."""
    if _is_batch(data, b'"events"', "events"):
        events = validate(EventBatch, data).events
        _check_size("events", events, max_reports)
        return events, True
    return [validate(EventReport, data)], False


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
