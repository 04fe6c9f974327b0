"""Time from acceptance to upstream delivery at a steady 1,000 reports/s.

An aiohttp client (keep-alive) posts 10 reports every 10 ms for ``--seconds``; the sidecar
records, per report, the time from its durable acceptance to Stigg's acknowledgement of the
call that carried it (``GET /v1/usage/stats`` → ``usage.deliverySeconds``, the last 10,000
reports). Usage keys: ``--keys`` resources of one customer, chosen at random.

    uv run python -m bench.usage_latency [--seconds 15] [--keys 1000] [--spool sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import aiohttp

from bench.usage_common import SPOOLS, drain, stack


async def steady(base: str, seconds: float, keys: int, per_tick: int, tick: float) -> int:
    sent = 0
    rng = random.Random(1)
    async with aiohttp.ClientSession(base_url=base) as http:
        start = time.monotonic()
        ticks = int(seconds / tick)
        for n in range(ticks):
            target = start + n * tick
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            usages = [
                {
                    "customerId": "customer-demo",
                    "featureId": "feature-api-calls",
                    "value": 1,
                    "resourceId": f"r-{rng.randrange(keys)}",
                }
                for _ in range(per_tick)
            ]
            async with http.post("/v1/usage", json={"usages": usages}) as response:
                assert response.status == 202, await response.text()
            sent += per_tick
        achieved = sent / (time.monotonic() - start)
    print(f"  offered {sent} reports at {achieved:.0f} reports/s")
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--keys", type=int, action="append")
    parser.add_argument("--spool", choices=SPOOLS, action="append")
    args = parser.parse_args()
    print(f"{'spool':<14} {'keys':>6} {'coalesce':>8} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for spool in args.spool or ("sqlite", "redis"):
        for keys in args.keys or (1000, 20):
            for coalesce in ("true", "false"):
                with stack(spool, SIDECAR_USAGE_COALESCE=coalesce) as (emulator, sidecar):
                    asyncio.run(steady(sidecar.base, args.seconds, keys, 10, 0.01))
                    drain(sidecar)
                    delivery = sidecar.stats()["usage"]["deliverySeconds"]
                    calls = emulator.counters()["calls"].get("reportUsageBulk", 0)
                print(
                    f"{spool:<14} {keys:>6} {coalesce:>8} {calls:>6} "
                    f"{delivery['p50'] * 1000:>8.1f} {delivery['p99'] * 1000:>8.1f}"
                )


if __name__ == "__main__":
    main()
