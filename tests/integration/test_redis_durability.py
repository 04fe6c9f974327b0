"""The Redis spool checks Redis's persistence (issue 15, item 5): it refuses a Redis without
AOF unless told to accept the loss, says so in a metric, and names the window of reports a
vanished stream may have lost."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from sidecar.api.management import METRICS
from sidecar.config import Secret, StartupError
from sidecar.emulator import EmulatorServer
from sidecar.usage import redis_durability
from tests.conftest import free_port, sidecar_settings, start_sidecar


class VolatileRedis:
    """A redis-server with neither AOF nor RDB, restartable on its port (empty, like a pod)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def volatile_redis() -> Iterator[VolatileRedis]:
    server = VolatileRedis()
    try:
        yield server
    finally:
        server.kill9()


async def test_redis_spool_refuses_a_redis_without_aof(
    emulator: EmulatorServer, volatile_redis: VolatileRedis
) -> None:
    settings = replace(sidecar_settings(emulator.url), redis_url=Secret(volatile_redis.url))
    with pytest.raises(StartupError, match=r"appendonly no.*allowVolatileRedis"):
        await start_sidecar(settings)


async def test_volatile_redis_allowed_warns_and_says_not_durable(
    emulator: EmulatorServer,
    volatile_redis: VolatileRedis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_durability, "CHECK_INTERVAL_SECONDS", 0.1)
    base = sidecar_settings(emulator.url)
    settings = replace(
        base,
        redis_url=Secret(volatile_redis.url),
        usage=replace(base.usage, allow_volatile_redis=True),
    )
    await emulator_refuses_usage(emulator)
    client = await start_sidecar(settings)
    try:
        warnings = [r for r in caplog.records if "appendonly no" in r.getMessage()]
        assert warnings
        assert warnings[0].levelno == logging.WARNING
        metrics = await client.app[METRICS].render()
        assert b"stigg_sidecar_usage_spool_durable 0.0" in metrics
        response = await client.post(
            "/v1/usage",
            json={"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1},
        )
        assert response.status == 202
        # Redis dies with the report in it and comes back empty.
        volatile_redis.kill9()
        volatile_redis.start()
        deadline = time.monotonic() + 15
        while not [r for r in caplog.records if "are gone" in r.getMessage()]:
            assert time.monotonic() < deadline, "no ERROR about the vanished stream"
            await asyncio.sleep(0.1)
        [gone] = [r for r in caplog.records if "are gone" in r.getMessage()]
        assert gone.levelno == logging.ERROR
        assert "reports accepted between 20" in gone.getMessage()  # an ISO-8601 window
    finally:
        await client.close()


async def test_redis_with_aof_is_durable(emulator: EmulatorServer, redis_server: str) -> None:
    settings = replace(sidecar_settings(emulator.url), redis_url=Secret(redis_server))
    client = await start_sidecar(settings)
    try:
        metrics = await client.app[METRICS].render()
        assert b"stigg_sidecar_usage_spool_durable 1.0" in metrics
    finally:
        await client.close()


async def emulator_refuses_usage(emulator: EmulatorServer) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            emulator.base_url + "/admin/faults",
            json={"status": 503, "operations": ["reportUsageBulk"]},
        ) as response,
    ):
        assert response.status == 200
