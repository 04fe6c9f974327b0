"""Upstream calls per 10,000 reports: distinct usage keys (no coalescing possible), and hot keys
with and without coalescing. Reports are posted 100 per request; the figure is the emulator's
count of ``reportUsageBulk`` calls once the spool has drained.

    uv run python -m bench.usage_upstream [--reports 10000] [--hot-keys 20]
"""

from __future__ import annotations

import argparse
import uuid

from bench.usage_common import drain, stack


def post_all(base_http: object, reports: list[dict[str, object]]) -> None:
    for start in range(0, len(reports), 100):
        response = base_http.post("/v1/usage", json={"usages": reports[start : start + 100]})  # type: ignore[attr-defined]
        assert response.status_code == 202, response.text


def scenario(name: str, reports: list[dict[str, object]], **settings: str) -> None:
    with stack("sqlite", **settings) as (emulator, sidecar):
        post_all(sidecar.http, reports)
        drain(sidecar)
        counters = emulator.counters()
        calls = counters["calls"].get("reportUsageBulk", 0)
        sizes = counters["bulkSizes"]
        applied = counters["usagesApplied"]
        print(f"{name:<44} {len(reports):>8} {calls:>6} {max(sizes):>9} {applied:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--hot-keys", type=int, default=20)
    args = parser.parse_args()
    n = args.reports

    def usage(i: int, resource: str, keyed: bool) -> dict[str, object]:
        report: dict[str, object] = {
            "customerId": "customer-demo",
            "featureId": "feature-api-calls",
            "value": 1,
            "resourceId": resource,
        }
        if keyed:
            report["idempotencyKey"] = f"bench-{uuid.uuid4()}"
        return report

    print(f"{'scenario':<44} {'reports':>8} {'calls':>6} {'max batch':>9} {'usages':>8}")
    scenario("distinct keys, client idempotency keys", [usage(i, f"r-{i}", True) for i in range(n)])
    hot = [usage(i, f"r-{i % args.hot_keys}", False) for i in range(n)]
    scenario(f"{args.hot_keys} hot keys, coalescing off", hot, SIDECAR_USAGE_COALESCE="false")
    scenario(f"{args.hot_keys} hot keys, coalescing on (flush 1 s)", hot)


if __name__ == "__main__":
    main()
