"""What the Redis connection forms mean to a user: a report not yet on enough replicas is a
503 whose retry counts once; TLS verifies the server; a Cluster that loses a node degrades and
recovers without crashing anything."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from sidecar.app import REPLICATION
from sidecar.config import CacheSettings, RedisSettings, Settings, StartupError
from sidecar.emulator import EmulatorServer
from sidecar.redis_namespace import RedisNamespace
from tests import redis_servers
from tests.conftest import RedisTarget, sidecar_settings, start_sidecar, unavailable
from tests.eventually import eventually
from tests.integration.test_management import manage

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
CHECK = "/v1/entitlements?customerId=customer-demo&featureId=feature-api-calls"


def settings_for(emulator: EmulatorServer, target: RedisTarget) -> Settings:
    base = sidecar_settings(emulator.url)
    return target.configure(
        replace(
            base,
            cache=CacheSettings(environment=f"modes-{uuid.uuid4().hex}"),
            realtime=replace(base.realtime, enabled=False),
        )
    )


def usage(key: str) -> dict[str, object]:
    return {
        "customerId": "customer-demo",
        "featureId": "feature-api-calls",
        "value": 1,
        "idempotencyKey": key,
    }


async def test_a_report_no_replica_confirmed_is_503_and_its_retry_counts_once(
    emulator: EmulatorServer, redis_sentinel: RedisTarget
) -> None:
    # Two replicas asked for, one exists: WAIT cannot be satisfied.
    strict = replace(
        redis_sentinel, redis=RedisSettings(min_replicas_ack=2, replica_ack_timeout_seconds=0.05)
    )
    settings = settings_for(emulator, strict)
    client = await start_sidecar(settings)
    try:
        response = await client.post("/v1/usage", json=usage("once-1"))
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "not_replicated"
        _, metrics = await manage(client, "/metrics")
        assert 'stigg_sidecar_usage_reports_not_replicated_total{kind="usage"} 1.0' in metrics
    finally:
        await client.close()
    # The replicas catch up (here: fewer asked for); the retry is a duplicate, counted once.
    relaxed = replace(settings, redis=RedisSettings(min_replicas_ack=1))
    client = await start_sidecar(relaxed)
    try:
        response = await client.post("/v1/usage", json=usage("once-1"))
        assert response.status == 202
        assert (await response.json())["status"] == "duplicate"
        stats = await (await client.get("/v1/usage/stats")).json()
        assert stats["usage"]["accepted"] == 0
    finally:
        await client.close()


async def test_tls_verifies_the_server_certificate(redis_tls: RedisTarget) -> None:
    # The test CA is not among the system's: without redis.caFile the server is refused.
    unverified = replace(
        redis_tls,
        redis=replace(redis_tls.redis, ca_file=""),
    )
    client = unverified.client()
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_wrong_password_stops_startup_with_one_line_never_showing_it(
    emulator: EmulatorServer, redis_tls: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-password-7c1e"
    target = replace(redis_tls, password=None, url=redis_tls.url.replace("//", f"//app:{wrong}@"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StartupError) as raised:
        await start_sidecar(settings_for(emulator, target))
    assert str(raised.value).startswith("SIDECAR_REDIS_URL: Redis refused the ACL user")
    assert wrong not in str(raised.value)
    assert wrong not in caplog.text


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[redis_servers.Servers, list[int]]]:
    """A Cluster of its own: a node of it is killed."""
    servers = redis_servers.Servers(tmp_path / "redis")
    try:
        yield servers, redis_servers.start_cluster(servers)
    except redis_servers.Unsupported as exc:
        unavailable(f"skipping: {exc}")
    finally:
        servers.stop()


async def test_a_cluster_losing_a_node_degrades_then_recovers(
    emulator: EmulatorServer, cluster: tuple[redis_servers.Servers, list[int]]
) -> None:
    servers, ports = cluster
    target = RedisTarget("cluster", f"redis://127.0.0.1:{ports[0]}", RedisSettings(cluster=True))
    settings = settings_for(emulator, target)
    client = await start_sidecar(settings)
    try:
        replication = client.app[REPLICATION]
        await eventually(replication.connected.is_set)
        assert (await client.get(CHECK)).status == 200
        # The node that owns the invalidation channel's slot (slots split in thirds).
        channel = RedisNamespace(settings.cache.environment).prefix + ":events"
        owner = ports[min(key_slot(channel.encode()) // (16384 // 3), 2)]
        name = f"cluster-{owner}"
        servers.by_name[name].kill()
        servers.by_name[name].wait(timeout=5)
        await eventually(lambda: not replication.connected.is_set(), timeout=10)
        for _ in range(5):  # answered from memory and Stigg meanwhile
            assert (await client.get(CHECK)).status == 200
            await asyncio.sleep(0.1)
        servers.restart(name)
        await eventually(replication.connected.is_set, timeout=15, message="resubscribed")

        async def accepted() -> bool:
            response = await client.post("/v1/usage", json=usage(f"c-{uuid.uuid4()}"))
            return response.status == 202

        await eventually(accepted, timeout=15, interval=0.2)
    finally:
        await client.close()
