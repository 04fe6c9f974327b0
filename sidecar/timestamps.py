"""ISO-8601 timestamps as Stigg writes them (UTC with a ``Z``): the one parser and formatter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_iso(text: str) -> datetime:
    """An ISO-8601 date-time (``Z`` or an offset; naive stays naive); ValueError if it is not."""
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def parse_timestamp(value: Any) -> float | None:
    """Stigg's DateTime (ISO-8601) or epoch-milliseconds as epoch seconds; None if neither."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0
    try:
        return parse_iso(str(value)).timestamp()
    except ValueError:
        return None


def format_iso(moment: datetime) -> str:
    """UTC ISO-8601 with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_epoch(epoch: float) -> str:
    """Epoch seconds as UTC ISO-8601 with a ``Z``."""
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")
