"""The seam between accepted usage and whatever caches ``currentUsage`` (the entitlement cache).

The usage service calls ``usage_accepted`` right after reports are durably spooled (never for
duplicates), so a check right after a report can already see it, and ``usage_confirmed`` with
what ``reportUsageBulk`` answered (customerId, featureId, resourceId, currentUsage, ...) so the
cache can reconcile with Stigg. Listener failures are logged, never passed to the caller: the
report is already safe in the spool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol

from sidecar.usage.model import UsageReport


class UsageListener(Protocol):
    """Told about usage as it is accepted and as Stigg confirms it."""

    def usage_accepted(self, reports: Sequence[UsageReport]) -> Awaitable[None]:
        """Reports just spooled (DELTA or SET), in acceptance order."""
        ...

    def usage_confirmed(self, measurements: Sequence[Mapping[str, Any]]) -> Awaitable[None]:
        """``reportUsageBulk``'s returned items for a delivered batch."""
        ...
