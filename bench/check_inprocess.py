"""Entitlement checks without HTTP: evaluation rate on one core, and memory per cached
entitlement.

    uv run python -m bench.check_inprocess [--customers 100000] [--features 10]

Memory: RSS growth after caching ``customers`` customers x ``features`` features in L1 (no
Redis), from Stigg-shaped payloads whose metered features carry each customer's own usage
(so nothing is shared that would not be shared in production). Target: <= 300 bytes per
cached entitlement.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from typing import Any

from sidecar.cache.memory import MemoryStore
from sidecar.cache.tiered import TieredCache
from sidecar.config import Settings
from sidecar.entitlements.model import CheckRequest, EntitlementsState, evaluate
from sidecar.entitlements.service import EntitlementService


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def feature(index: int, rng: random.Random) -> dict[str, Any]:
    """A realistic mix: metered (with usage and periods), numeric, boolean and enum."""
    ref = f"feature-{index:02d}"
    kind = index % 5
    base: dict[str, Any] = {"isGranted": True, "hasUnlimitedUsage": False, "hasSoftLimit": False}
    if kind in (0, 1):
        return {
            **base,
            "usageLimit": 1000.0 * (kind + 1),
            "currentUsage": float(rng.randrange(1000)),
            "resetPeriod": "MONTH",
            "usagePeriodStart": "2026-11-01T00:00:00.000Z",
            "usagePeriodEnd": "2026-12-01T00:00:00.000Z",
            "feature": {"refId": ref, "featureType": "NUMBER", "meterType": "Incremental"},
        }
    if kind == 2:
        return {
            **base,
            "usageLimit": 50.0,
            "feature": {"refId": ref, "featureType": "NUMBER", "meterType": "None"},
        }
    if kind == 3:
        return {**base, "feature": {"refId": ref, "featureType": "BOOLEAN"}}
    return {**base, "enumValues": ["us", "eu"], "feature": {"refId": ref, "featureType": "ENUM"}}


class Upstream:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    async def execute(self, operation: Any, variables: Any) -> Any:
        return self.payload

    async def forward(self, body: bytes) -> Any:
        raise NotImplementedError


async def evaluation_rate(seconds: float) -> tuple[float, float]:
    rng = random.Random(1)
    payload = {"accessDeniedReason": None, "entitlements": [feature(i, rng) for i in range(10)]}
    settings = Settings()
    service = EntitlementService(
        Upstream(payload),
        settings.cache,
        settings.entitlements,
        store=TieredCache(MemoryStore(10**8, EntitlementsState.approx_bytes)),
    )
    request = CheckRequest("customer-1", "feature-00", requested_usage=1.0)
    await service.check(request)
    state = EntitlementsState.from_stigg("customer-1", None, payload, time.time())
    rates = []
    for run in (lambda: evaluate(state, request, time.time()),):
        count, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(1000):
                run()
            count += 1000
        rates.append(count / seconds)
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            await service.check(request)
        count += 1000
    rates.append(count / seconds)
    return rates[0], rates[1]


def memory(customers: int, features: int) -> tuple[float, float, int]:
    rng = random.Random(2)
    store: MemoryStore[EntitlementsState] = MemoryStore(2**40, EntitlementsState.approx_bytes)
    from sidecar.cache.store import CacheEntry

    templates = [feature(i, rng) for i in range(features)]
    gc.collect()
    before = rss_bytes()
    now = time.time()
    for n in range(customers):
        items = []
        for template in templates:
            item = dict(template)
            if "currentUsage" in item:
                item["currentUsage"] = float(rng.randrange(1000))
            items.append(item)
        state = EntitlementsState.from_stigg(
            f"customer-{n:07d}", None, {"accessDeniedReason": None, "entitlements": items}, now
        )
        store.set_nowait((state.customer_id, None), CacheEntry(state, now + 30, now + 86400))
    gc.collect()
    grown = rss_bytes() - before
    entitlements = customers * features
    return grown / entitlements, store.bytes_used / entitlements, len(store)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    pure, service = asyncio.run(evaluation_rate(args.seconds))
    print(f"evaluate() alone:              {pure:12,.0f} checks/s on one core")
    print(f"EntitlementService.check (L1): {service:12,.0f} checks/s on one core")
    measured, estimated, entries = memory(args.customers, args.features)
    print(f"memory: {entries:,} customers x {args.features} features cached in L1")
    print(f"  RSS growth per cached entitlement: {measured:6.0f} bytes (target <= 300)")
    print(f"  budget estimate per entitlement:   {estimated:6.0f} bytes (approx_bytes)")


if __name__ == "__main__":
    main()
