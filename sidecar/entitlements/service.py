"""Entitlement checks: fetch a customer's whole state from Stigg and answer checks from it."""

from __future__ import annotations

import time
from typing import Any

from sidecar.entitlements.model import CheckRequest, EntitlementsState, evaluate
from sidecar.upstream import documents
from sidecar.upstream.client import Upstream


class EntitlementService:
    """Answers checks; this version asks Stigg for the state on every call (no cache yet)."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    async def state(self, customer_id: str, resource_id: str | None) -> EntitlementsState:
        """The customer's current entitlement state."""
        query: dict[str, Any] = {"customerId": customer_id}
        if resource_id is not None:
            query["resourceId"] = resource_id
        raw = await self._upstream.execute(documents.ENTITLEMENTS_STATE, {"query": query})
        return EntitlementsState.from_stigg(customer_id, resource_id, raw, time.time())

    async def check(self, request: CheckRequest) -> dict[str, Any]:
        """One feature's answer, with ``requestedUsage``/``requestedValues`` evaluated locally."""
        state = await self.state(request.customer_id, request.resource_id)
        return evaluate(state, request, time.time())

    async def list(self, customer_id: str, resource_id: str | None) -> dict[str, Any]:
        """All of the customer's entitlements."""
        state = await self.state(customer_id, resource_id)
        now = time.time()
        entitlements = []
        for entitlement in state.entitlements.values():
            request = CheckRequest(customer_id, entitlement.feature_id, resource_id)
            entitlements.append(evaluate(state, request, now))
        return {
            "customerId": customer_id,
            "resourceId": resource_id,
            "accessDeniedReason": state.access_denied_reason,
            "isFallback": False,
            "entitlements": entitlements,
        }
