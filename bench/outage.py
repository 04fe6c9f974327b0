"""Checks while Stigg hangs: known customers answered from stale state, unknown ones from the
fallback chain at the check deadline.

    uv run python -m bench.outage [--seconds 5]

A sidecar process (fresh TTL 1 s, so cached state turns stale quickly; realtime off) caches
three customers, then the emulator (its own process) stops answering. 8 keep-alive clients
send checks for ``--seconds`` each phase. Targets: known customers p99 <= 5 ms (stale);
unknown customers p99 <= deadline + 5 ms (fallback).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import aiohttp
import httpx

from bench._util import emulator, percentile, sidecar

KNOWN = ("customer-demo", "customer-free", "customer-enterprise")
DEADLINE_MS = 200


async def load(
    base: str, paths: itertools.cycle[str] | itertools.count[int], seconds: float, unknown: bool
) -> tuple[list[float], set[str]]:
    latencies: list[float] = []
    sources: set[str] = set()
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(base) as session:

        async def worker() -> None:
            while time.monotonic() < end:
                customer = f"ghost-{next(paths)}" if unknown else next(paths)
                started = time.perf_counter()
                async with session.get(
                    "/v1/entitlements", params={"customerId": customer, "featureId": "feature-sso"}
                ) as response:
                    body = await response.json()
                latencies.append((time.perf_counter() - started) * 1000)
                sources.add(body["source"])

        await asyncio.gather(*(worker() for _ in range(8)))
    return latencies, sources


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    env = {
        "SIDECAR_CACHE_FRESH_TTL_SECONDS": "1",
        "SIDECAR_REALTIME_ENABLED": "false",
        "SIDECAR_ENTITLEMENTS_CHECK_DEADLINE_SECONDS": str(DEADLINE_MS / 1000),
    }
    with emulator() as stigg, sidecar(stigg, env=env) as base:
        for customer in KNOWN:
            answer = httpx.get(
                f"{base}/v1/entitlements",
                params={"customerId": customer, "featureId": "feature-sso"},
            ).json()
            assert answer["source"] == "upstream", answer
        time.sleep(1.5)  # every cached state is past its fresh TTL now
        httpx.post(f"{stigg}/admin/faults", json={"hang": True}).raise_for_status()
        try:
            known, known_sources = asyncio.run(
                load(base, itertools.cycle(KNOWN), args.seconds, unknown=False)
            )
            unknown, unknown_sources = asyncio.run(
                load(base, itertools.count(), args.seconds, unknown=True)
            )
        finally:
            httpx.delete(f"{stigg}/admin/faults")
    for name, values, sources, target in (
        ("known (stale)", known, known_sources, "<= 5 ms"),
        ("unknown (fallback)", unknown, unknown_sources, f"<= {DEADLINE_MS + 5} ms"),
    ):
        print(
            f"{name:19} checks={len(values):6}  p50={percentile(values, 50):7.2f} ms  "
            f"p99={percentile(values, 99):7.2f} ms  target p99 {target}  "
            f"sources={sorted(sources)}"
        )


if __name__ == "__main__":
    main()
