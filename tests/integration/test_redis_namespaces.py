"""Two deployments with different environments on one real redis-server: each keeps its own
cache, invalidations, usage spool and flush lease (the namespace is cache.environment)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.app import REPLICATION
from sidecar.config import CacheSettings, Secret, UsageSettings
from sidecar.emulator import EmulatorServer, load_catalog
from sidecar.services import SERVICES
from tests.conftest import CATALOG, sidecar_settings, start_sidecar
from tests.eventually import eventually

Client = TestClient[web.Request, web.Application]
# A database no other test uses, so SCAN sees only this test's keys.
DATABASE = 7
SSO = "/v1/entitlements?customerId={}&featureId=feature-sso"


async def start(emulator: EmulatorServer, key: str, redis_url: str, environment: str) -> Client:
    base = sidecar_settings(emulator.url)
    settings = replace(
        base,
        api_key=Secret(key),
        redis_url=Secret(redis_url),
        cache=CacheSettings(environment=environment),
        realtime=replace(base.realtime, enabled=False),
        usage=UsageSettings(flush_interval_seconds=0.05),
    )
    client = await start_sidecar(settings)
    await eventually(lambda: client.app[REPLICATION].connected.is_set())
    return client


@dataclass
class Deployments:
    url: str
    run: str
    emulators: dict[str, EmulatorServer]
    clients: dict[str, Client]


@pytest.fixture
async def deployments(redis_server: str) -> AsyncIterator[Deployments]:
    """Staging (replicas s1, s2) and production (p1, p2), each with its own emulator and key."""
    url = redis_server.rsplit("/", 1)[0] + f"/{DATABASE}"
    run = uuid.uuid4().hex[:8]
    emulators: dict[str, EmulatorServer] = {}
    clients: dict[str, Client] = {}
    try:
        for name in ("staging", "production"):
            key = f"key-{name}-{run}"
            emulators[name] = EmulatorServer(load_catalog(CATALOG), key)
            await emulators[name].start()
            for replica in ("1", "2"):
                clients[name[0] + replica] = await start(emulators[name], key, url, f"{name}-{run}")
        yield Deployments(url, run, emulators, clients)
    finally:
        for client in clients.values():
            await client.close()
        for emulator in emulators.values():
            await emulator.stop()


def cached(client: Client, customer_id: str) -> bool:
    return client.app[SERVICES].entitlements.l1.get_nowait((customer_id, None)) is not None


async def test_two_environments_on_one_redis_stay_apart(deployments: Deployments) -> None:
    d = deployments
    s1, s2, p1, p2 = (d.clients[n] for n in ("s1", "s2", "p1", "p2"))
    emulators = d.emulators
    staging, production = emulators["staging"], emulators["production"]

    # Invalidations reach only the replicas of their own environment.
    for client in (s2, p1):
        for customer in ("customer-free", "customer-demo"):
            assert (await s2.get(SSO.format(customer))).status == 200
            assert (await client.get(SSO.format(customer))).status == 200
    response = await s1.post(
        "/v1/subscriptions", json={"customerId": "customer-free", "planId": "plan-pro"}
    )
    assert response.status == 201
    await eventually(lambda: not cached(s2, "customer-free"), message="s2 kept its state")
    # Production's own invalidation, published after staging's, reaches p1: had p1 listened
    # on staging's channel, staging's (earlier) message would have reached it first.
    await p2.app[SERVICES].entitlements.invalidate("customer-demo", refresh=False)
    await eventually(lambda: not cached(p1, "customer-demo"), message="p1 missed its own")
    assert cached(p1, "customer-free")

    # Usage reaches only its own emulator, even with the same idempotency key in both.
    before = {
        name: emulator.state.current_usage("customer-demo", "feature-api-calls", None)
        for name, emulator in emulators.items()
    }
    for client, value in ((s1, 3), (p1, 5)):
        report = {
            "customerId": "customer-demo",
            "featureId": "feature-api-calls",
            "value": value,
            "idempotencyKey": f"same-key-{d.run}",
        }
        response = await client.post("/v1/usage", json={"usages": [report]})
        assert response.status == 202
        assert (await response.json())["accepted"] == 1

    def delivered(emulator: EmulatorServer, name: str) -> float:
        now = emulator.state.current_usage("customer-demo", "feature-api-calls", None)
        return now - before[name]

    await eventually(lambda: delivered(staging, "staging") == 3, timeout=5)
    await eventually(lambda: delivered(production, "production") == 5, timeout=5)

    # Every key either deployment wrote is inside its own namespace.
    async with redis.Redis.from_url(d.url) as client:
        keys = [key.decode() async for key in client.scan_iter(count=1000)]
        channels = [c.decode() for c in await client.pubsub_channels()]
    namespaces = [f"stigg-sidecar:{name}-{d.run}:" for name in ("staging", "production")]
    outside = [key for key in keys if not key.startswith(tuple(namespaces))]
    assert outside == []
    for namespace in namespaces:
        assert any(key.startswith(namespace + "{spool}:") for key in keys), namespace
        assert any(key.startswith(namespace + "entitlements:") for key in keys), namespace
    ours = [c for c in channels if d.run in c]
    assert sorted(ours) == sorted(namespace + "events" for namespace in namespaces)
