"""Between Stigg Sidecar's protobuf messages and the services' requests and JSON-shaped answers.

Requests are validated here with the REST API's rules; a ``ValidationError`` names the field
as the ``.proto`` spells it (``options.requested_usage``, ``usages[2].customer_id``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from sidecar.api.grpc import sidecar_v1_pb2 as pb
from sidecar.config import FeatureFallback
from sidecar.entitlements.model import CheckRequest
from sidecar.usage.model import EventReport, UsageReport, parse_event, parse_usage
from sidecar.validation import ValidationError, check_identifier, check_number

Parsed = TypeVar("Parsed")

MAX_REQUESTED_VALUES = 100
_INT32_MAX = 2**31 - 1
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")

# --- requests -------------------------------------------------------------------------------


def snake_field(name: str) -> str:
    """A REST field path (``usages[2].customerId``) as the ``.proto`` names it."""
    return _CAMEL.sub(r"_\1", name).lower()


def _required_id(name: str, value: str) -> str:
    if not value:
        raise ValidationError(name, "is required")
    return check_identifier(name, value)


def optional_id(message: Any, name: str) -> str | None:
    """An optional id field (unset or empty: None)."""
    if not message.HasField(name) or not getattr(message, name):
        return None
    return check_identifier(name, getattr(message, name))


def customer_id(message: Any) -> str:
    """The required ``customer_id`` of a per-customer request."""
    return _required_id("customer_id", message.customer_id)


def _values(name: str, values: Sequence[str]) -> tuple[str, ...] | None:
    if not values:
        return None
    if len(values) > MAX_REQUESTED_VALUES:
        raise ValidationError(name, f"at most {MAX_REQUESTED_VALUES} values")
    return tuple(values)


def check_request(message: Any, options: Any) -> CheckRequest:
    """The ``CheckRequest`` of one of the six Get*Entitlement requests (``options``: its
    options message, whichever of the per-type ones, or None)."""
    fields = options.DESCRIPTOR.fields_by_name if options is not None else {}
    requested_usage = None
    if "requested_usage" in fields and options.HasField("requested_usage"):
        requested_usage = check_number(
            "options.requested_usage", options.requested_usage, minimum=0
        )
    values = options.requested_values if "requested_values" in fields else ()
    return CheckRequest(
        customer_id=_required_id("customer_id", message.customer_id),
        feature_id=_required_id("feature_id", message.feature_id),
        resource_id=optional_id(message, "resource_id"),
        requested_usage=requested_usage,
        requested_values=_values("options.requested_values", values),
    )


def fallback(options: Any, name: str = "options.fallback") -> FeatureFallback | None:
    """A request's own fallback (any of the per-type fallback messages), if it has one."""
    if options is None or not options.HasField("fallback"):
        return None
    given = options.fallback
    fields = given.DESCRIPTOR.fields_by_name

    def optional(field: str) -> Any:
        return getattr(given, field) if field in fields and given.HasField(field) else None

    usage_limit = optional("usage_limit")
    value = optional("value")
    for field, number in (("usage_limit", usage_limit), ("value", value)):
        if number is not None:
            check_number(f"{name}.{field}", number, minimum=0)
    enum_values = (
        _values(f"{name}.enum_values", given.enum_values) if "enum_values" in fields else None
    )
    return FeatureFallback(
        has_access=given.has_access,
        usage_limit=usage_limit,
        value=float(value) if value is not None else None,
        is_unlimited=bool(optional("is_unlimited")),
        enum_values=enum_values,
    )


def options_of(message: Any) -> Any:
    """A check request's options message, None when it has none."""
    return message.options if message.HasField("options") else None


def _iso(timestamp: Timestamp) -> str:
    return timestamp.ToJsonString()


def _dimensions(dimensions: Mapping[str, pb.EventDimensionValue]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in dimensions.items():
        kind = value.WhichOneof("value")
        values[key] = getattr(value, kind) if kind is not None else None
    return values


_BEHAVIORS = {
    pb.USAGE_UPDATE_BEHAVIOR_UNSPECIFIED: "DELTA",
    pb.USAGE_UPDATE_BEHAVIOR_DELTA: "DELTA",
    pb.USAGE_UPDATE_BEHAVIOR_SET: "SET",
}


def usage_report(message: pb.ReportUsageRequest, path: str = "") -> UsageReport:
    """One report, validated as ``POST /v1/usage`` validates it (the idempotency key is minted:
    Stigg's request has none)."""
    data: dict[str, Any] = {
        "customerId": message.customer_id or None,
        "featureId": message.feature_id or None,
        "value": message.value,
    }
    if message.HasField("update_behavior"):
        behavior = _BEHAVIORS.get(message.update_behavior)
        if behavior is None:
            where = f"{path}.update_behavior" if path else "update_behavior"
            raise ValidationError(where, "must be DELTA or SET")
        data["updateBehavior"] = behavior
    if message.HasField("resource_id") and message.resource_id:
        data["resourceId"] = message.resource_id
    if message.HasField("timestamp"):
        data["timestamp"] = _iso(message.timestamp)
    if message.dimensions:
        data["dimensions"] = _dimensions(message.dimensions)
    return _snake_errors(lambda: parse_usage(data, path=path))


def event_report(message: pb.Event, path: str) -> EventReport:
    """One raw event; its ``idempotency_key`` is required, as Stigg requires it."""
    if not message.idempotency_key.strip():
        raise ValidationError(f"{path}.idempotency_key", "is required")
    data: dict[str, Any] = {
        "eventName": message.event_name or None,
        "customerId": message.customer_id or None,
        "idempotencyKey": message.idempotency_key,
    }
    if message.HasField("resource_id") and message.resource_id:
        data["resourceId"] = message.resource_id
    if message.HasField("timestamp"):
        data["timestamp"] = _iso(message.timestamp)
    if message.dimensions:
        data["dimensions"] = _dimensions(message.dimensions)
    return _snake_errors(lambda: parse_event(data, path=path))


def _snake_errors(parse: Callable[[], Parsed]) -> Parsed:
    try:
        return parse()
    except ValidationError as exc:
        raise ValidationError(snake_field(exc.field), exc.message) from None


# --- answers --------------------------------------------------------------------------------

_REASONS = {
    name.removeprefix("ACCESS_DENIED_REASON_"): number
    for name, number in pb.AccessDeniedReason.items()
}


def reason(name: str | None) -> int | None:
    """Stigg's GraphQL enum name (``CustomerNotFound``) as the protobuf enum."""
    if name is None:
        return None
    return _REASONS.get(snake_field(name).upper(), pb.ACCESS_DENIED_REASON_UNKNOWN)


_RESET_PERIODS = {
    name.removeprefix("ENTITLEMENT_RESET_PERIOD_"): number
    for name, number in pb.EntitlementResetPeriod.items()
}
_FEATURE_TYPES = {
    "BOOLEAN": pb.FEATURE_TYPE_BOOLEAN,
    "NUMERIC": pb.FEATURE_TYPE_NUMBER,
    "METERED": pb.FEATURE_TYPE_NUMBER,
    "ENUM": pb.FEATURE_TYPE_ENUM,
}


_METER_TYPES = {
    "Incremental": pb.METER_TYPE_INCREMENTAL,
    "Fluctuating": pb.METER_TYPE_FLUCTUATING,
}


@functools.lru_cache(maxsize=4096)
def _seconds_and_nanos(iso: str) -> tuple[int, int]:
    """Cached: the same few period boundaries come with every check (parsing costs 30 us)."""
    stamp = Timestamp()
    stamp.FromJsonString(iso)
    return stamp.seconds, stamp.nanos


def timestamp(iso: str | None) -> Timestamp | None:
    """An answer's ISO 8601 time as a protobuf Timestamp."""
    if iso is None:
        return None
    seconds, nanos = _seconds_and_nanos(iso)
    return Timestamp(seconds=seconds, nanos=nanos)


def _feature(answer: Mapping[str, Any], feature: pb.EntitlementFeature) -> None:
    feature.id = answer["featureId"]
    kind = answer["type"]
    feature.feature_type = _FEATURE_TYPES.get(kind, pb.FEATURE_TYPE_UNSPECIFIED)
    feature.is_metered = kind == "METERED"
    if kind in ("BOOLEAN", "NUMERIC", "ENUM"):
        feature.meter_type = pb.METER_TYPE_NONE
    elif kind == "METERED":
        feature.meter_type = _METER_TYPES.get(answer["meterType"], pb.METER_TYPE_UNSPECIFIED)


def boolean(answer: Mapping[str, Any], out: pb.BooleanEntitlement) -> None:
    _feature(answer, out.feature)


def numeric(answer: Mapping[str, Any], out: pb.NumericEntitlement) -> None:
    _feature(answer, out.feature)
    value = answer["value"] if answer["value"] is not None else answer["usageLimit"]
    if value is not None:
        out.value = min(int(value), _INT32_MAX)
    out.is_unlimited = answer["isUnlimited"]


def metered(answer: Mapping[str, Any], out: pb.MeteredEntitlement) -> None:
    _feature(answer, out.feature)
    if answer["usageLimit"] is not None:
        out.usage_limit = answer["usageLimit"]
    out.is_unlimited = answer["isUnlimited"]
    out.current_usage = answer["currentUsage"] or 0.0
    out.has_soft_limit = answer["hasSoftLimit"]
    period = answer["resetPeriod"]
    if period is not None and period.upper() in _RESET_PERIODS:
        out.reset_period = _RESET_PERIODS[period.upper()]  # type: ignore[assignment]
    for name, key in (
        ("usage_period_start", "usagePeriodStart"),
        ("usage_period_end", "usagePeriodEnd"),
    ):
        stamp = timestamp(answer[key])
        if stamp is not None:
            getattr(out, name).CopyFrom(stamp)


def enum(answer: Mapping[str, Any], out: pb.EnumEntitlement) -> None:
    _feature(answer, out.feature)
    out.enum_values.extend(answer["enumValues"] or ())


_ONEOF: dict[str, tuple[str, Callable[[Mapping[str, Any], Any], None]]] = {
    "BOOLEAN": ("boolean", boolean),
    "NUMERIC": ("numeric", numeric),
    "METERED": ("metered", metered),
    "ENUM": ("enum", enum),
}


def decision(answer: Mapping[str, Any], out: Any) -> Any:
    """``has_access``, ``is_fallback`` and ``access_denied_reason`` of any answer message."""
    out.has_access = answer["hasAccess"]
    out.is_fallback = answer["isFallback"]
    denied = reason(answer["accessDeniedReason"])
    if denied is not None:
        out.access_denied_reason = denied
    return out


def any_entitlement(answer: Mapping[str, Any], out: Any) -> Any:
    """The ``oneof entitlement`` of GetEntitlementResponse / EntitlementV2 / Entitlement, chosen
    by the feature's type (none when the customer has no such entitlement)."""
    chosen = _ONEOF.get(answer["type"])
    if chosen is not None:
        name, fill = chosen
        fill(answer, getattr(out, name))
    return out
