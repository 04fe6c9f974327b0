"""Edge reads (what Stigg's SDKs fetch from their edge URL) next to the sidecar's own check.

    uv run python -m bench.edge_reads [--seconds 10]

wrk (1 thread, 16 connections, keep-alive) against a warm ``--local`` sidecar for each path:
``/v1/entitlements`` (one check), ``/v1/c/{customerId}/entitlements.json`` (every entitlement
of the customer, rendered in Stigg's shape) and ``entitlements-state.json``. All three answer
from the same cached state; the figures show what rendering the larger body costs.
"""

from __future__ import annotations

import argparse

import httpx

from bench._util import SIDECAR_PIDS, sidecar, wrk

PATHS = {
    "check": "/v1/entitlements?customerId=customer-demo&featureId=feature-api-calls",
    "entitlements.json": "/v1/c/customer-demo/entitlements.json",
    "entitlements.json?featureId": (
        "/v1/c/customer-demo/entitlements.json?featureId=feature-api-calls"
    ),
    "entitlements-state.json": "/v1/c/customer-demo/entitlements-state.json",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    results = {}
    with sidecar() as base:
        for name, path in PATHS.items():
            response = httpx.get(base + path)  # warms the cache
            assert response.status_code == 200, response.text
            wrk(base + path, seconds=2)
            results[name] = (
                wrk(base + path, seconds=args.seconds, server_pid=SIDECAR_PIDS[base]),
                len(response.content),
            )
    print(f"warm reads, {args.seconds} s per path, wrk 1 thread 16 connections")
    print(f"{'path':30} {'bytes':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10}")
    for name, (figures, size) in results.items():
        print(
            f"{name:30} {size:6d} {figures['rps']:8.0f} {figures['p50_ms']:7.3f} "
            f"{figures['p99_ms']:7.3f} {figures['cpu_us']:10.1f}"
        )


if __name__ == "__main__":
    main()
