"""Usage reporting; this version sends each report to Stigg as it arrives."""

from __future__ import annotations

from typing import Any

from sidecar.upstream import documents
from sidecar.upstream.client import Upstream
from sidecar.usage.model import UsageReport


class UsageService:
    """Reports usage with ``reportUsage``; the minted idempotency key makes retries safe."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    async def report(self, report: UsageReport) -> dict[str, Any]:
        measurement = await self._upstream.execute(
            documents.REPORT_USAGE, {"input": report.to_stigg()}
        )
        return {
            "id": measurement.get("id"),
            "idempotencyKey": report.idempotency_key,
            "customerId": report.customer_id,
            "featureId": report.feature_id,
            "resourceId": report.resource_id,
            "currentUsage": measurement.get("currentUsage"),
            "usagePeriodStart": measurement.get("usagePeriodStart"),
            "usagePeriodEnd": measurement.get("usagePeriodEnd"),
            "timestamp": measurement.get("timestamp"),
        }
