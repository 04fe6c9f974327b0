"""Redis modes side by side: warm checks and the L2-miss-to-L1 path on one server vs a
3-primary Cluster, and usage accepted per second with ``redis.minReplicasAck`` 0 vs 1 on a
primary and a replica behind Sentinel.

    uv run python -m bench.redis_modes [--seconds 3] [--samples 500] [--concurrency 16]

Everything on loopback: redis-server processes from the test deployments
(``tests/redis_servers.py``), the emulator and the sidecar app in this process, and an
aiohttp client in the same event loop (so req/s are lower than with wrk, but comparable
between modes). Bounded: a few seconds per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from bench._util import API_KEY, percentile
from sidecar.app import create_app
from sidecar.config import (
    CacheSettings,
    GrpcSettings,
    ManagementSettings,
    McpSettings,
    RedisSettings,
    Secret,
    Settings,
    StiggSettings,
)
from sidecar.emulator import EmulatorServer, load_catalog
from sidecar.services import SERVICES
from tests import redis_servers

CUSTOMER = "customer-demo"
CHECK = f"/v1/entitlements?customerId={CUSTOMER}&featureId=feature-api-calls"


def settings_for(emulator: EmulatorServer, url: str, redis: RedisSettings) -> Settings:
    base = Settings()
    return replace(
        base,
        stigg=StiggSettings(api_url=emulator.url),
        api_key=Secret(API_KEY),
        redis_url=Secret(url),
        redis=redis,
        cache=CacheSettings(environment=f"bench-{uuid.uuid4().hex[:8]}"),
        realtime=replace(base.realtime, enabled=False),
        mcp=McpSettings(enabled=False),
        management=ManagementSettings(enabled=False),
        grpc=GrpcSettings(enabled=False),
        data_dir=Path(tempfile.mkdtemp(prefix="bench-redis-modes-")),
    )


async def rate(send: Callable[[], Awaitable[bool]], seconds: float, concurrency: int) -> float:
    """Successful calls of ``send`` per second, from ``concurrency`` loops."""
    done = 0
    until = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < until:
            if await send():
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def checks(
    emulator: EmulatorServer, url: str, redis: RedisSettings, args: argparse.Namespace
) -> tuple[float, list[float]]:
    """Warm check req/s, and L2-miss-to-L1 latencies (ms)."""
    client = TestClient(TestServer(create_app(settings_for(emulator, url, redis))))
    await client.start_server()
    try:
        assert (await client.get(CHECK)).status == 200  # in L1 and L2 now

        async def check() -> bool:
            response = await client.get(CHECK)
            await response.read()
            return response.status == 200

        warm = await rate(check, args.seconds, args.concurrency)
        entitlements = client.app[SERVICES].entitlements
        latencies = []
        for _ in range(args.samples):
            entitlements.store.drop_local(CUSTOMER)  # L1 forgets; L2 still has it
            started = time.perf_counter()
            response = await client.get(CHECK)
            body = await response.json()
            latencies.append((time.perf_counter() - started) * 1000)
            assert body.get("source", "cache") == "cache", body
        return warm, latencies
    finally:
        await client.close()


async def usage(
    emulator: EmulatorServer, url: str, redis: RedisSettings, args: argparse.Namespace
) -> float:
    """Reports answered 202 per second (one keyed report per request)."""
    client = TestClient(TestServer(create_app(settings_for(emulator, url, redis))))
    await client.start_server()
    try:

        async def report() -> bool:
            body = {
                "customerId": CUSTOMER,
                "featureId": "feature-api-calls",
                "value": 1,
                "idempotencyKey": uuid.uuid4().hex,
            }
            response = await client.post("/v1/usage", json=body)
            await response.read()
            return response.status == 202

        return await rate(report, args.seconds, args.concurrency)
    finally:
        await client.close()


async def run(args: argparse.Namespace, root: Path) -> None:
    servers = redis_servers.Servers(root)
    emulator = EmulatorServer(load_catalog("config/catalog.yaml"), API_KEY)
    await emulator.start()
    try:
        port = redis_servers.free_port()
        servers.start("standalone", f"port {port}\n")
        redis_servers.wait_for("standalone", redis_servers.pings(port))
        cluster = redis_servers.start_cluster(servers)
        sentinels = redis_servers.start_sentinels(servers)
        for name, url, redis in (
            ("standalone", f"redis://127.0.0.1:{port}/0", RedisSettings()),
            ("cluster", f"redis://127.0.0.1:{cluster[0]}", RedisSettings(cluster=True)),
        ):
            warm, latencies = await checks(emulator, url, redis, args)
            print(
                f"{name:>10}: warm checks {warm:8.0f} req/s   L2 miss -> L1: "
                f"p50={percentile(latencies, 50):.3f} ms  p99={percentile(latencies, 99):.3f} ms"
            )
        for replicas in (0, 1):
            accepted = await usage(
                emulator, sentinels.url, RedisSettings(min_replicas_ack=replicas), args
            )
            print(
                f"  sentinel: usage accepted {accepted:8.0f} reports/s  (minReplicasAck {replicas})"
            )
    finally:
        await emulator.stop()
        servers.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-redis-modes-") as root:
        asyncio.run(run(args, Path(root)))


if __name__ == "__main__":
    main()
