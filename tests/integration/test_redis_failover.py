"""A Sentinel failover in the middle of a usage flood, forced (``SENTINEL FAILOVER``) or after
a ``kill -9`` of the primary: with ``redis.minReplicasAck: 1`` every report answered 202 is
counted by Stigg exactly once, none lost and none doubled."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.config import CacheSettings, RedisSettings, UsageSettings
from sidecar.emulator import EmulatorServer
from tests import redis_servers
from tests.conftest import RedisTarget, sidecar_settings, start_sidecar, unavailable

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
CUSTOMER, FEATURE = "customer-enterprise", "feature-api-calls"
# A flood a few seconds of Stigg's rate limit (10 calls of 100 a second) can drain.
WORKERS, PER_REQUEST, PAUSE = 4, 2, 0.02


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[redis_servers.Servers]:
    """A deployment of its own: the failover changes which server is the primary."""
    servers = redis_servers.Servers(tmp_path / "redis")
    try:
        yield servers
    finally:
        servers.stop()


@pytest.mark.parametrize("how", ["sentinel-failover", "kill-9"])
async def test_failover_during_a_flood_loses_and_doubles_nothing(
    emulator: EmulatorServer, servers: redis_servers.Servers, how: str
) -> None:
    try:
        # A failover the sentinels start themselves needs their votes: they must know each other.
        sentinels = await asyncio.to_thread(
            redis_servers.start_sentinels, servers, quorum=how == "kill-9"
        )
    except redis_servers.Unsupported as exc:
        unavailable(f"skipping: {exc}")
    acked = RedisSettings(min_replicas_ack=1, replica_ack_timeout_seconds=0.5)
    target = RedisTarget("sentinel", sentinels.url, acked)
    base = sidecar_settings(emulator.url)
    settings = target.configure(
        replace(
            base,
            cache=CacheSettings(environment=f"failover-{uuid.uuid4().hex}"),
            realtime=replace(base.realtime, enabled=False),
            usage=UsageSettings(
                flush_interval_seconds=0.02,
                retry_backoff_seconds=0.02,
                retry_backoff_max_seconds=0.2,
                claim_idle_seconds=1,
            ),
        )
    )
    client = await start_sidecar(settings)
    before = emulator.state.current_usage(CUSTOMER, FEATURE, None)
    accepted = refused = 0
    try:

        async def send_until_accepted(body: dict[str, Any]) -> None:
            """A careful client: the same keys again until a 202."""
            nonlocal accepted, refused
            while True:
                try:
                    response = await client.post("/v1/usage", json=body)
                    status = response.status
                    response.release()
                except Exception:
                    status = 0
                if status == 202:
                    accepted += PER_REQUEST
                    return
                assert status in (0, 503), status
                refused += 1
                await asyncio.sleep(0.02)

        stop = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                usages = [
                    {
                        "customerId": CUSTOMER,
                        "featureId": FEATURE,
                        "value": 1,
                        "idempotencyKey": f"f-{uuid.uuid4()}",
                    }
                    for _ in range(PER_REQUEST)
                ]
                await send_until_accepted({"usages": usages})
                await asyncio.sleep(PAUSE)

        old_primary = sentinels.current_primary()
        flood = [asyncio.create_task(worker()) for _ in range(WORKERS)]
        await asyncio.sleep(1.0)
        accepted_before_failover = accepted
        if how == "kill-9":
            new_primary = await asyncio.to_thread(redis_servers.kill_primary, servers, sentinels)
            # Until it is back, no replica can confirm a write: reports are answered 503.
            await asyncio.to_thread(
                redis_servers.restart_old_primary, servers, sentinels, old_primary
            )
        else:
            new_primary = await asyncio.to_thread(redis_servers.force_failover, sentinels)
        accepted_at_failover = accepted
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*flood)
        assert new_primary != old_primary
        assert accepted_before_failover > 0
        assert accepted > accepted_at_failover  # reports kept flowing after the failover

        deadline = time.monotonic() + 30
        while True:
            stats = await (await client.get("/v1/usage/stats")).json()
            spooled = stats["spooled"]
            delivered = emulator.state.current_usage(CUSTOMER, FEATURE, None) - before
            if spooled.get("reports") == 0 and spooled.get("openBatches") == 0:
                break
            assert time.monotonic() < deadline, (stats, delivered, accepted)
            await asyncio.sleep(0.05)
        assert delivered == accepted, {"accepted": accepted, "refused": refused, "stats": stats}
    finally:
        await client.close()
