"""Reading untrusted JSON input field by field, with errors that name the field."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

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


class Fields:
    """Typed reads from one JSON object; unknown keys are rejected so typos do not pass silently."""

    def __init__(
        self, data: Any, *, path: str = "", allowed: Collection[str] | None = None
    ) -> None:
        if not isinstance(data, Mapping):
            raise ValidationError(path or "body", "must be a JSON object")
        self._data = data
        self._path = path
        if allowed is not None:
            for key in data:
                if key not in allowed:
                    raise ValidationError(self._name(str(key)), "unknown field")

    def _name(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, required: bool) -> Any:
        value = self._data.get(key)
        if value is None and required:
            raise ValidationError(self._name(key), "is required")
        return value

    def string(self, key: str, *, required: bool = False, max_length: int = 1000) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValidationError(self._name(key), "must be a string")
        if required and not value.strip():
            raise ValidationError(self._name(key), "must not be empty")
        if len(value) > max_length:
            raise ValidationError(self._name(key), f"must be at most {max_length} characters")
        return value

    def identifier(self, key: str, *, required: bool = False) -> str | None:
        value = self.string(key, required=required, max_length=MAX_ID_LENGTH)
        if value is not None:
            check_identifier(self._name(key), value)
        return value

    def number(
        self, key: str, *, required: bool = False, minimum: float | None = None
    ) -> float | None:
        value = self._get(key, required)
        if value is None:
            return None
        return check_number(self._name(key), value, minimum=minimum)

    def choice(
        self, key: str, choices: Collection[str], *, default: str | None = None
    ) -> str | None:
        value = self._get(key, False)
        if value is None:
            return default
        if value not in choices:
            raise ValidationError(self._name(key), f"must be one of {', '.join(sorted(choices))}")
        return str(value)

    def boolean(self, key: str) -> bool | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise ValidationError(self._name(key), "must be true or false")
        return value

    def object(self, key: str, *, max_keys: int = 50) -> dict[str, Any] | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValidationError(self._name(key), "must be a JSON object")
        if len(value) > max_keys:
            raise ValidationError(self._name(key), f"must have at most {max_keys} keys")
        return value

    def nested(self, key: str, allowed: Collection[str]) -> Fields | None:
        value = self._get(key, False)
        if value is None:
            return None
        return Fields(value, path=self._name(key), allowed=allowed)

    def timestamp(
        self, key: str, *, max_future: timedelta = timedelta(minutes=5)
    ) -> datetime | None:
        value = self._get(key, False)
        if value is None:
            return None
        name = self._name(key)
        if not isinstance(value, str):
            raise ValidationError(name, "must be an ISO-8601 date-time string")
        return check_timestamp(name, value, max_future=max_future)


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
