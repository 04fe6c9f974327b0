"""Cold stampede: 1,000 concurrent first checks for one customer, Stigg answering in 50 ms.

    uv run python -m bench.stampede

The emulator runs in its own process with 50 ms added latency. Measured twice:
in-process (1,000 concurrent ``EntitlementService.check`` calls through the real HTTP client
to the emulator) and over HTTP (h2load: 1,000 connections, one request each, against a
sidecar process). Target: exactly 1 upstream call, p99 <= 60 ms.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench._util import API_KEY, emulator, percentile, pinned, sidecar
from sidecar.cache.memory import MemoryStore
from sidecar.cache.tiered import TieredCache
from sidecar.config import Secret, Settings, StiggSettings
from sidecar.entitlements.model import CheckRequest, EntitlementsState
from sidecar.entitlements.service import EntitlementService
from sidecar.upstream.client import StiggClient

CONCURRENCY = 1000


def calls(base: str) -> int:
    counters = httpx.get(f"{base}/admin/counters").json()
    return int(counters["calls"].get("entitlementsState", 0))


async def in_process(base: str) -> list[float]:
    settings = Settings()
    client = StiggClient(StiggSettings(api_url=f"{base}/graphql"), Secret(API_KEY))
    service = EntitlementService(
        client,
        settings.cache,
        settings.entitlements,
        store=TieredCache(MemoryStore(10**8, EntitlementsState.approx_bytes)),
    )
    request = CheckRequest("customer-demo", "feature-api-calls")
    # The emulator's first answer to a document is slow (graphql-core warms up): not measured.
    await service.check(CheckRequest("customer-free", "feature-api-calls"))
    httpx.post(f"{base}/admin/reset").raise_for_status()
    httpx.post(f"{base}/admin/faults", json={"latencyMs": 50}).raise_for_status()

    async def one() -> float:
        started = time.perf_counter()
        answer = await service.check(request)
        assert not answer["isFallback"], answer
        return (time.perf_counter() - started) * 1000

    try:
        return list(await asyncio.gather(*(one() for _ in range(CONCURRENCY))))
    finally:
        await client.aclose()


def over_http(url: str) -> list[float]:
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        subprocess.run(
            pinned(
                0,
                [
                    "h2load",
                    "--h1",
                    "-n",
                    str(CONCURRENCY),
                    "-c",
                    str(CONCURRENCY),
                    "--log-file",
                    log.name,
                    url,
                ],
            ),
            capture_output=True,
            check=True,
        )
        lines = Path(log.name).read_text().splitlines()
    return [int(line.split()[2]) / 1000.0 for line in lines if line.strip()]


def report(name: str, latencies: list[float], upstream_calls: int) -> None:
    print(
        f"{name:12} checks={len(latencies):5} upstream calls={upstream_calls}  "
        f"p50={percentile(latencies, 50):6.1f} ms  p99={percentile(latencies, 99):6.1f} ms  "
        f"max={max(latencies):6.1f} ms"
    )


def main() -> None:
    with emulator() as base:
        latencies = asyncio.run(in_process(base))
        report("in-process", latencies, calls(base))
        httpx.post(f"{base}/admin/reset").raise_for_status()
        with sidecar(base, env={"SIDECAR_REALTIME_ENABLED": "false"}) as url:
            httpx.get(f"{url}/v1/entitlements?customerId=customer-free&featureId=feature-sso")
            httpx.post(f"{base}/admin/faults", json={"latencyMs": 50}).raise_for_status()
            before = calls(base)
            latencies = over_http(
                f"{url}/v1/entitlements?customerId=customer-demo&featureId=feature-api-calls"
            )
            report("over HTTP", latencies, calls(base) - before)


if __name__ == "__main__":
    main()
