"""Cross-replica invalidation: time from one replica's invalidation to another replica's
memory (L1) dropping the customer, through a real redis-server's pub/sub.

    uv run python -m bench.invalidation [--samples 200]

Two sidecar apps in one process (so one clock measures both), each with its own Redis
connections, against the emulator. Target: within 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time
from dataclasses import replace

from aiohttp.test_utils import TestClient, TestServer

from bench._util import API_KEY, free_port, percentile
from sidecar.app import REPLICATION, create_app
from sidecar.config import (
    CacheSettings,
    GrpcSettings,
    ManagementSettings,
    McpSettings,
    Secret,
    Settings,
    StiggSettings,
)
from sidecar.emulator import EmulatorServer, load_catalog
from sidecar.services import SERVICES


async def run(samples: int, redis_url: str) -> list[float]:
    emulator = EmulatorServer(load_catalog("config/catalog.yaml"), API_KEY)
    await emulator.start()
    base = Settings()
    settings = replace(
        base,
        stigg=StiggSettings(api_url=emulator.url),
        api_key=Secret(API_KEY),
        redis_url=Secret(redis_url),
        cache=CacheSettings(environment="bench"),
        realtime=replace(base.realtime, enabled=False),
        mcp=McpSettings(enabled=False),
        management=ManagementSettings(enabled=False),
        grpc=GrpcSettings(enabled=False),
    )
    a = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    b = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await a.start_server()
    await b.start_server()
    latencies = []
    try:
        for replica in (a, b):
            await asyncio.wait_for(replica.app[REPLICATION].connected.wait(), 5)
        path = "/v1/entitlements?customerId=customer-demo&featureId=feature-sso"
        memory = b.app[SERVICES].entitlements.l1
        for _ in range(samples):
            await (await b.get(path)).read()  # cached in B
            assert memory.get_nowait(("customer-demo", None)) is not None
            started = time.perf_counter()
            await a.app[SERVICES].entitlements.invalidate("customer-demo", refresh=False)
            while memory.get_nowait(("customer-demo", None)) is not None:
                await asyncio.sleep(0)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await a.close()
        await b.close()
        await emulator.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    assert binary, "install redis-server"
    port = free_port()
    server = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        latencies = asyncio.run(run(args.samples, f"redis://127.0.0.1:{port}/0"))
    finally:
        server.terminate()
        server.wait()
    print(
        f"invalidation A -> Redis pub/sub -> B's memory, {len(latencies)} samples: "
        f"p50={percentile(latencies, 50):.2f} ms  p99={percentile(latencies, 99):.2f} ms  "
        f"max={max(latencies):.2f} ms  (target <= 100 ms)"
    )


if __name__ == "__main__":
    main()
