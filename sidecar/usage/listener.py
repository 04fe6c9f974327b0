"""The seam between accepted usage and whatever caches ``currentUsage`` (the entitlement cache).

The usage service hands over each report right after it is durably spooled (never a
duplicate), so a check right after a report can already see it, and the flusher hands over
what ``reportUsageBulk`` answered so the cache can reconcile with Stigg. Listener failures are
logged, never passed to the caller: the report is already safe in the spool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from sidecar.timestamps import parse_timestamp
from sidecar.updates import UsageChange, UsageFigure, UsageUpdate
from sidecar.usage.model import UsageReport


class UsageListener(Protocol):
    """Told about usage as it is accepted and as Stigg confirms it."""

    async def apply_usage(self, updates: Iterable[UsageUpdate], *, publish: bool = True) -> int:
        """Count ``updates`` (here and, with ``publish``, on every replica)."""
        ...


def changes_of(reports: Sequence[UsageReport]) -> list[UsageChange]:
    """Reports just spooled (DELTA or SET), in acceptance order."""
    return [
        UsageChange(r.customer_id, r.resource_id, r.feature_id, r.update_behavior, r.value)
        for r in reports
    ]


def figures_of(measurements: Sequence[Mapping[str, Any]]) -> list[UsageFigure]:
    """``reportUsageBulk``'s returned items for a delivered batch (those with a usage)."""
    return [
        UsageFigure(
            m["customerId"],
            m.get("resourceId"),
            m["featureId"],
            float(m["currentUsage"]),
            parse_timestamp(m.get("usagePeriodStart")),
            parse_timestamp(m.get("usagePeriodEnd")),
            answers_batch=True,
        )
        for m in measurements
        if m.get("currentUsage") is not None
    ]
