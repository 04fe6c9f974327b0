"""Replicas sharing a Redis, Stigg outages, a Redis restart, SIGTERM: none lost, none twice."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.config import Secret, UsageSettings
from sidecar.emulator import EmulatorServer
from tests.conftest import sidecar_settings, start_sidecar
from tests.eventually import eventually_blocking
from tests.integration.usage_processes import (
    RedisProcess,
    SidecarProcess,
    emulator_process,
    sidecar_env,
)

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
CUSTOMERS = ("customer-demo", "customer-enterprise", "customer-free")


def keyed(n: int, customer: str, value: float = 1) -> dict[str, Any]:
    return {
        "customerId": customer,
        "featureId": "feature-api-calls",
        "value": value,
        "idempotencyKey": f"r-{uuid.uuid4()}-{n}",
    }


# --- replicas -----------------------------------------------------------------------------


def test_a_dead_replica_s_reports_are_claimed_and_delivered_by_the_other(
    tmp_path: Path, redis_server: str
) -> None:
    with emulator_process() as emulator:
        env = sidecar_env(
            emulator,
            tmp_path / "data",
            SIDECAR_REDIS_URL=redis_server,
            SIDECAR_CACHE_ENVIRONMENT=f"replicas-{uuid.uuid4().hex[:8]}",
            SIDECAR_USAGE_CLAIM_IDLE_SECONDS="1",
            SIDECAR_USAGE_FLUSH_INTERVAL_SECONDS="0.05",
        )
        first, second = SidecarProcess(env), SidecarProcess(env)
        try:
            eventually_blocking(
                lambda: first.stats()["leader"] or second.stats()["leader"], 10, "no leader"
            )
            leader, survivor = (first, second) if first.stats()["leader"] else (second, first)
            assert not survivor.stats()["leader"]
            # Stigg hangs: the leader sends its first batch and keeps the rest in hand.
            emulator.admin(
                "POST", "/admin/faults", json={"hang": True, "operations": ["reportUsageBulk"]}
            )
            sent = emulator.usage("customer-enterprise")
            for n, sidecar in enumerate([leader, survivor] * 4):
                unkeyed = [
                    {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 3}
                ] * 50
                body = {"usages": [keyed(n * 100 + i, "customer-enterprise") for i in range(150)]}
                for payload in ({"usages": unkeyed}, body):
                    assert sidecar.http.post("/v1/usage", json=payload).status_code == 202
                sent += 150
            eventually_blocking(
                lambda: emulator.counters()["faultedRequests"] >= 1, 10, "nothing sent"
            )
            eventually_blocking(
                lambda: leader.stats()["spooled"]["openBatches"] >= 1, 5, "no batch in hand"
            )
            leader.kill9()
            emulator.admin("DELETE", "/admin/faults")  # the hung call is applied after all
            eventually_blocking(
                survivor.drained, 30, "the survivor did not deliver the dead one's reports"
            )
            stats = survivor.stats()
            assert stats["leader"]
            assert stats["usage"]["claimed"] > 0  # XAUTOCLAIM took over what the leader read
            assert emulator.usage("customer-enterprise") == sent
            assert emulator.usage("customer-demo") == 1200 + 8 * 150
            assert emulator.counters()["duplicateKeys"] >= 1  # the recorded batch, resent
        finally:
            survivor.close()
            leader.close()


# --- Stigg outages ------------------------------------------------------------------------


async def test_outage_5xx_hang_429_then_everything_arrives_once_within_the_rate(
    emulator: EmulatorServer,
) -> None:
    calls_per_minute = 300  # 5 a second
    settings = sidecar_settings(emulator.url, read_timeout_seconds=0.3, max_retries=0)
    settings = replace(
        settings,
        usage=UsageSettings(
            flush_interval_seconds=0.05,
            calls_per_minute=calls_per_minute,
            retry_backoff_seconds=0.05,
            retry_backoff_max_seconds=0.3,
        ),
    )
    client = await start_sidecar(settings)
    faults = httpx.AsyncClient(base_url=emulator.base_url)
    expected = {c: emulator.state.current_usage(c, "feature-api-calls", None) for c in CUSTOMERS}
    started = time.monotonic()
    try:

        async def report_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                customer = CUSTOMERS[n % 3]
                body = {"usages": [keyed(n * 100 + i, customer, 2) for i in range(100)]}
                response = await client.post("/v1/usage", json=body)
                assert response.status == 202, await response.text()
                expected[customer] += 200
                n += 1
                await asyncio.sleep(0.1)

        for fault in ({"status": 503}, {"hang": True}, {"status": 429}):
            await faults.post("/admin/faults", json={**fault, "operations": ["reportUsageBulk"]})
            await report_for(1.0)
        await faults.delete("/admin/faults")  # recovery: hung calls are released too

        async def drained() -> bool:
            stats = await (await client.get("/v1/usage/stats")).json()
            return stats["spooled"]["reports"] == 0 and stats["spooled"]["openBatches"] == 0

        deadline = time.monotonic() + 30
        while not await drained():
            assert time.monotonic() < deadline, "not delivered after recovery"
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        for customer, value in expected.items():
            assert emulator.state.current_usage(customer, "feature-api-calls", None) == value
        counters = emulator.emulator.counters
        sizes = emulator.state.counters.bulk_sizes
        assert sizes
        assert max(sizes) <= 100
        # Every request Stigg saw, failed ones included, within the token bucket's pace.
        assert counters.requests <= 1 + calls_per_minute / 60 * elapsed
        stats = await (await client.get("/v1/usage/stats")).json()
        failures = stats["usage"]["flushFailures"]
        assert {"unavailable", "timeout", "rate_limited"} <= set(failures)
        assert emulator.state.counters.duplicate_keys >= 1  # timed-out calls were applied
    finally:
        await faults.aclose()
        await client.close()


# --- Redis restart ------------------------------------------------------------------------


async def test_redis_restart_while_flushing(tmp_path: Path, emulator: EmulatorServer) -> None:
    redis = RedisProcess(tmp_path)
    settings = replace(
        sidecar_settings(emulator.url),
        redis_url=Secret(redis.url),
        usage=UsageSettings(
            flush_interval_seconds=0.02,
            retry_backoff_seconds=0.02,
            retry_backoff_max_seconds=0.2,
            claim_idle_seconds=1,
        ),
    )
    await asyncio.to_thread(lambda: None)  # keep the loop responsive before starting the app
    client = await start_sidecar(settings)
    sent = emulator.state.current_usage("customer-enterprise", "feature-api-calls", None)
    refused = 0
    try:

        async def report(n: int) -> None:
            nonlocal sent, refused
            body = {"usages": [keyed(n * 10 + i, "customer-enterprise") for i in range(10)]}
            while True:  # a careful client: same keys until a 202
                try:
                    response = await client.post("/v1/usage", json=body)
                except Exception:
                    response = None
                if response is not None and response.status == 202:
                    sent += 10
                    return
                refused += 1
                await asyncio.sleep(0.05)

        async def flood(seconds: float, start: int) -> int:
            end = time.monotonic() + seconds
            n = start
            while time.monotonic() < end:
                await report(n)
                n += 1
                await asyncio.sleep(0.005)
            return n

        n = await flood(0.5, 0)
        await asyncio.to_thread(redis.stop)
        outage = asyncio.create_task(flood(1.0, n))
        await asyncio.sleep(0.7)
        await asyncio.to_thread(redis.start)
        n = await outage
        await flood(0.5, n)

        deadline = time.monotonic() + 30
        while True:
            stats = await (await client.get("/v1/usage/stats")).json()
            spooled = stats["spooled"]
            if spooled.get("reports") == 0 and spooled.get("openBatches") == 0:
                break
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.05)
        assert refused > 0  # the outage was noticed (503s), not papered over
        assert stats["usage"]["flushFailures"].get("spool", 0) > 0
        assert stats["accepting"]
        assert (
            emulator.state.current_usage("customer-enterprise", "feature-api-calls", None) == sent
        )
    finally:
        await client.close()
        redis.stop()


# --- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_flushes_what_is_spooled_then_exits(tmp_path: Path) -> None:
    with emulator_process() as emulator:
        env = sidecar_env(emulator, tmp_path / "data", SIDECAR_USAGE_FLUSH_INTERVAL_SECONDS="60")
        sidecar = SidecarProcess(env)
        before = emulator.usage("customer-enterprise")
        body = {"usages": [keyed(n, "customer-enterprise") for n in range(300)]}
        assert sidecar.http.post("/v1/usage", json=body).status_code == 202
        assert emulator.usage("customer-enterprise") == before  # waiting for the interval
        started = time.monotonic()
        assert sidecar.terminate(timeout=25) == 0
        assert time.monotonic() - started < 20
        assert emulator.usage("customer-enterprise") == before + 300


def test_sigterm_deadline_leaves_the_rest_for_the_next_start(tmp_path: Path) -> None:
    with emulator_process() as emulator:
        env = sidecar_env(
            emulator,
            tmp_path / "data",
            SIDECAR_USAGE_FLUSH_INTERVAL_SECONDS="0.05",
            SIDECAR_USAGE_SHUTDOWN_DEADLINE_SECONDS="1",
        )
        emulator.admin(
            "POST", "/admin/faults", json={"hang": True, "operations": ["reportUsageBulk"]}
        )
        sidecar = SidecarProcess(env)
        before = emulator.usage("customer-enterprise")
        body = {"usages": [keyed(n, "customer-enterprise") for n in range(50)]}
        assert sidecar.http.post("/v1/usage", json=body).status_code == 202
        eventually_blocking(lambda: emulator.counters()["faultedRequests"] >= 1, 10, "nothing sent")
        sidecar.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        # Stops accepting at once, then gives up on the hung call at the deadline.
        assert sidecar.process.wait(timeout=15) == 0
        assert time.monotonic() - started < 5
        sidecar.close()
        emulator.admin("DELETE", "/admin/faults")
        restarted = SidecarProcess(env)
        try:
            eventually_blocking(restarted.drained, 15, "not delivered after the restart")
        finally:
            assert restarted.terminate() == 0
        assert emulator.usage("customer-enterprise") == before + 50
