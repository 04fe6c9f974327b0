"""Untrusted input: the one definition of every request model, and errors that name the field.

Each request type is one pydantic model (camelCase on the wire, unknown keys rejected, null read
as absent). REST bodies and MCP arguments are validated by it, and the OpenAPI components and
MCP tool schemas are generated from it, so the three cannot drift apart."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar, cast

import pydantic
from pydantic import ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from sidecar.timestamps import parse_iso

MAX_ID_LENGTH = 255
# Stigg ids are refIds chosen by the app: keep them printable and free of separators we use.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]*$"
_ID_PATTERN = re.compile(ID_PATTERN)


def id_schema(description: str | None = None) -> dict[str, Any]:
    """The JSON schema of an id, as ``check_identifier`` enforces it (OpenAPI and MCP)."""
    schema: dict[str, Any] = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_LENGTH,
        "pattern": ID_PATTERN,
    }
    if description is not None:
        schema["description"] = description
    return schema


class ValidationError(Exception):
    """Input is wrong; ``field`` says where (dotted path), ``message`` what."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def under(self, path: str) -> ValidationError:
        """The same error inside ``path`` (an item of a list, say)."""
        if not path:
            return self
        field = f"{path}.{self.field}" if self.field else path
        return ValidationError(field, self.message)


def check_identifier(name: str, value: str) -> str:
    if not _is_identifier(value):
        if len(value) > MAX_ID_LENGTH:
            raise ValidationError(name, f"must be at most {MAX_ID_LENGTH} characters")
        raise ValidationError(
            name, "must start with a letter or digit and use only letters, digits and _.:@+-"
        )
    return value


@functools.lru_cache(maxsize=65536)
def _is_identifier(value: str) -> bool:
    """Cached: the same customer and feature ids arrive on every check."""
    return len(value) <= MAX_ID_LENGTH and _ID_PATTERN.match(value) is not None


def check_number(name: str, value: Any, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(name, "must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond 1e308 (JSON-RPC parsers keep big ints exact)
        raise ValidationError(name, "must be a finite number") from None
    if not math.isfinite(number):
        raise ValidationError(name, "must be a finite number")
    if minimum is not None and number < minimum:
        raise ValidationError(name, f"must be at least {minimum:g}")
    return number


def parse_number(name: str, text: str, *, minimum: float | None = None) -> float:
    """A number from a query-string parameter."""
    try:
        number = float(text)
    except ValueError:
        raise ValidationError(name, "must be a number") from None
    return check_number(name, number, minimum=minimum)


def check_timestamp(name: str, text: str, *, max_future: timedelta) -> datetime:
    try:
        moment = parse_iso(text)
    except ValueError:
        raise ValidationError(name, "must be an ISO-8601 date-time string") from None
    if moment.tzinfo is None:
        raise ValidationError(name, "must include a time zone (e.g. 2026-01-31T12:00:00Z)")
    if moment - datetime.now(UTC) > max_future:
        raise ValidationError(name, "must not be in the future")
    return moment.astimezone(UTC)


# --- request models ---------------------------------------------------------------------------


MODEL_CONFIG = ConfigDict(
    strict=True,
    extra="forbid",
    allow_inf_nan=False,
    alias_generator=to_camel,
)
"""How every request model reads: camelCase keys, strict types, no unknown keys (also the
``__pydantic_config__`` of the report dataclasses validated straight into)."""


class Model(pydantic.BaseModel):
    """A request body or tool arguments, read as ``MODEL_CONFIG`` says."""

    model_config = MODEL_CONFIG | ConfigDict(frozen=True)


def checked(check: Callable[[Any], Any]) -> PlainValidator:
    """A validator from a ``check(value)`` raising our ``ValidationError``: pydantic then
    reports the message at the field's path."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except ValidationError as exc:
            raise PydanticCustomError("sidecar", exc.message) from None

    return PlainValidator(validate)


def _identifier(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError("", "must be a string")
    return check_identifier("", value)


Id = Annotated[str, checked(_identifier), WithJsonSchema(id_schema())]
"""A Stigg id (refId) as every route and tool takes it."""


def _years_up_to(last: int) -> str:
    """A pattern of the years 1000 to ``last`` at the start of a date."""
    decade, digit = divmod(last, 10)
    decades = [rf"{d}\d" for d in range(200, decade)]
    return "^(" + "|".join([r"1\d{3}", *decades, f"{decade}[0-{digit}]"]) + ")-"


def _timestamp(max_future: timedelta) -> Callable[[Any], datetime]:
    def check(value: Any) -> datetime:
        if not isinstance(value, str):
            raise ValidationError("", "must be an ISO-8601 date-time string")
        return check_timestamp("", value, max_future=max_future)

    return check


# Reports happened in the past: a few minutes of clock skew are allowed within this year, and
# a date of a later year is refused (which is all a pattern can say).
PastTimestamp = Annotated[
    datetime,
    checked(_timestamp(timedelta(minutes=5))),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": _years_up_to(datetime.now(UTC).year),
        }
    ),
]
"""When usage happened: an ISO-8601 date-time with a zone, not in the future."""

# Subscriptions may be scheduled ahead, but before 2100: a year like 5471 is a typo, not a plan.
_BEFORE_2100 = datetime(2100, 1, 1, tzinfo=UTC) - datetime.now(UTC)
PlanTimestamp = Annotated[
    datetime,
    checked(_timestamp(_BEFORE_2100)),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": r"^(1\d{3}|20\d\d)-"}),
]
"""A subscription's start or end: an ISO-8601 date-time with a zone, before 2100."""

MetaData = Annotated[
    dict[str, Any],
    Field(max_length=50, description="Free-form key/value metadata stored in Stigg."),
]
"""Free-form metadata (JSON object of at most 50 keys)."""

Parsed = TypeVar("Parsed")


_ADAPTERS: dict[type[Any], pydantic.TypeAdapter[Any]] = {}


def _adapter(model: type[Any]) -> pydantic.TypeAdapter[Any]:
    """Built once per model: building one compiles its validator."""
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = pydantic.TypeAdapter(model)
    return adapter


def validate(model: type[Parsed], data: bytes | Any) -> Parsed:
    """``data`` (JSON bytes, or already parsed) as ``model``, in one pass; ``ValidationError``
    names the first bad field as the API always has (``usages[3].value``)."""
    adapter = _adapter(model)
    try:
        if isinstance(data, bytes):
            return cast(Parsed, adapter.validate_json(data))
        return cast(Parsed, adapter.validate_python(data))
    except pydantic.ValidationError as exc:
        raise _first_error(exc) from None


def _first_error(exc: pydantic.ValidationError) -> ValidationError:
    errors = exc.errors(include_url=False)
    error = errors[0]
    # An unknown key first, as a typo explains the rest ("customerID" and so no "customerId").
    for other in errors:
        parent = other["loc"][:-1]
        if (
            other["type"] in ("extra_forbidden", "unexpected_keyword_argument")
            and error["loc"][: len(parent)] == parent
        ):
            error = other
            break
    return ValidationError(_path(error["loc"]) or "body", _message(error))


def _path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


_TYPE_MESSAGES = {
    "missing": "is required",
    "missing_argument": "is required",
    "extra_forbidden": "unknown field",
    "unexpected_keyword_argument": "unknown field",
    "dataclass_type": "must be a JSON object",
    "dataclass_args_type": "must be a JSON object",
    "string_type": "must be a string",
    "float_type": "must be a number",
    "int_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be a list (JSON array)",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "must not be empty",  # the pattern of text fields: r"\S"
}


def _message(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if error["input"] is None and kind.endswith("_type"):
        return "is required"  # null for a required field: as if absent
    if kind == "sidecar":
        return str(error["msg"])
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_short":
        return "must not be empty"
    if kind == "too_long":
        unit = "keys" if ctx.get("field_type") == "Dictionary" else "items"
        return f"must have at most {ctx['max_length']} {unit}, got {ctx['actual_length']}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']:g}"
    if kind == "literal_error":
        choices = sorted(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        return f"must be one of {', '.join(choices)}"
    if kind == "json_invalid":
        return f"is not valid JSON: {ctx.get('error', '')}"
    return _TYPE_MESSAGES.get(kind, str(error["msg"]))


# --- schemas generated from the models ------------------------------------------------------


def schema_components(models: Sequence[type[Any]]) -> dict[str, Any]:
    """OpenAPI component schemas of ``models`` and of every model they use, named by class."""
    _, schema = pydantic.TypeAdapter.json_schemas(
        [(model.__name__, "validation", _adapter(model)) for model in models],
        ref_template="#/components/schemas/{model}",
    )
    return dict(_untitled(schema["$defs"]))


def tool_schema(model: type[Any]) -> dict[str, Any]:
    """An MCP tool's input schema: the model's JSON schema with nested models inlined."""
    schema = _adapter(model).json_schema()
    definitions = schema.pop("$defs", {})
    schema.pop("description", None)  # the tool's own description says it
    return dict(_optional_not_null(_untitled(_inline(schema, definitions))))


def _optional_not_null(schema: Any) -> Any:
    """Optional properties as plain types: an agent leaves them out rather than send null."""
    if isinstance(schema, list):
        return [_optional_not_null(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _optional_not_null(value) for key, value in schema.items()}
    variants = schema.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants and len(variants) == 2:
        [kept] = [variant for variant in variants if variant != {"type": "null"}]
        rest = {k: v for k, v in schema.items() if k != "anyOf" and (k, v) != ("default", None)}
        schema = {**kept, **rest}
    return schema


def _inline(schema: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_inline(item, definitions) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        return _inline({**definitions[name], **rest}, definitions)
    return {key: _inline(value, definitions) for key, value in schema.items()}


def _untitled(schema: Any) -> Any:
    """Without pydantic's generated titles ("Customerid"): names and descriptions say it."""
    if isinstance(schema, list):
        return [_untitled(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: _untitled(value)
        for key, value in schema.items()
        if not (key == "title" and isinstance(value, str))
    }
