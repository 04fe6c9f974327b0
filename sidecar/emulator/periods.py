"""Time for the emulator: a clock tests can move forward, usage periods, ISO-8601 strings."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

_FIXED = {
    "HOUR": timedelta(hours=1),
    "DAY": timedelta(days=1),
    "WEEK": timedelta(weeks=1),
}
_MONTHS = {"MONTH": 1, "YEAR": 12}


def system_now() -> datetime:
    return datetime.now(UTC)


class Clock:
    """``source()`` plus an offset, so a test can jump past a usage period without waiting."""

    def __init__(self, source: Callable[[], datetime] = system_now) -> None:
        self._source = source
        self._offset = timedelta(0)

    def now(self) -> datetime:
        return self._source() + self._offset

    def advance(self, seconds: float) -> None:
        """Move forward; going back is refused because stored usage periods assume it."""
        if not seconds >= 0:
            raise ValueError("advanceSeconds must be a non-negative number")
        self._offset += timedelta(seconds=seconds)

    def reset(self) -> None:
        self._offset = timedelta(0)


def iso(moment: datetime) -> str:
    """Stigg's format: UTC, milliseconds, ``Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """An ISO-8601 date-time as aware UTC (naive input is taken as UTC); ``ValueError``."""
    moment = datetime.fromisoformat(text.strip())
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` plus whole calendar months, the day clamped (Jan 31 + 1 month = Feb 28/29)."""
    index = anchor.year * 12 + anchor.month - 1 + months
    year, month = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def period_start_at(anchor: datetime, period: str, index: int) -> datetime:
    """Start of the ``index``-th period after ``anchor`` (always computed from the anchor,
    so a clamped short month does not shift every later period)."""
    if period in _FIXED:
        return anchor + _FIXED[period] * index
    return add_months(anchor, _MONTHS[period] * index)


def current_period(anchor: datetime, period: str, now: datetime) -> tuple[datetime, datetime]:
    """The ``[start, end)`` of the usage period containing ``now``; the first one before it."""
    if period not in _FIXED and period not in _MONTHS:
        raise ValueError(f"unknown reset period {period!r}")
    if now <= anchor:
        return anchor, period_start_at(anchor, period, 1)
    if period in _FIXED:
        index = int((now - anchor) // _FIXED[period])
    else:
        months = (now.year - anchor.year) * 12 + now.month - anchor.month
        index = max(months // _MONTHS[period], 0)
    # The estimate is off by at most one period (day clamping, time of day); correct it.
    while index > 0 and period_start_at(anchor, period, index) > now:
        index -= 1
    while period_start_at(anchor, period, index + 1) <= now:
        index += 1
    return period_start_at(anchor, period, index), period_start_at(anchor, period, index + 1)
