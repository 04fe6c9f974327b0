"""The entitlement cache with real sockets: the emulator's websocket updates, webhooks, two
replicas sharing a real Redis, and a warm start from Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.config import CacheSettings, Secret, Settings
from sidecar.emulator import EmulatorServer
from sidecar.services import SERVICES
from tests.conftest import API_KEY, RedisTarget, sidecar_settings, start_sidecar
from tests.eventually import eventually

Client = TestClient[web.Request, web.Application]
DEMO_CALLS = "/v1/entitlements?customerId=customer-demo&featureId=feature-api-calls"


async def emulator_calls(emulator: EmulatorServer, field: str = "entitlementsState") -> int:
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        counters = (await http.get("/admin/counters")).json()
    return int(counters["calls"].get(field, 0))


async def stigg(emulator: EmulatorServer, query: str, variables: dict[str, Any]) -> Any:
    """Change the emulator's state directly, as another Stigg client would."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            emulator.url,
            headers={"X-API-KEY": API_KEY},
            json={"query": query, "variables": variables},
        )
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


async def check(client: Client, path: str = DEMO_CALLS) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status == 200
    return await response.json()  # type: ignore[no-any-return]


def realtime_of(client: Client) -> Any:
    return client.app[SERVICES].realtime


async def test_usage_pushed_over_the_websocket_updates_the_cache(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    await eventually(lambda: realtime_of(sidecar).connected)
    before = await check(sidecar)
    assert before["currentUsage"] == 1200
    await stigg(
        emulator,
        "mutation($i: ReportUsageInput!) { reportUsage(input: $i) { id } }",
        {"i": {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 50}},
    )

    async def updated() -> bool:
        return (await check(sidecar))["currentUsage"] == 1250

    await eventually(updated)
    assert await emulator_calls(emulator) == 1  # pushed, not refetched


async def test_subscription_change_pushed_over_the_websocket(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    await eventually(lambda: realtime_of(sidecar).connected)
    path = "/v1/entitlements?customerId=customer-no-subscription&featureId=feature-sso"
    assert (await check(sidecar, path))["accessDeniedReason"] == "NoActiveSubscription"
    await stigg(
        emulator,
        "mutation($i: ProvisionSubscriptionInput!) { provisionSubscriptionV2(input: $i)"
        " { status } }",
        {"i": {"customerId": "customer-no-subscription", "planId": "plan-pro"}},
    )

    async def granted() -> bool:
        return bool((await check(sidecar, path))["hasAccess"])

    await eventually(granted)
    assert await emulator_calls(emulator) == 1


async def test_realtime_reconnects_after_the_connection_drops(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    listener = realtime_of(sidecar)
    await eventually(lambda: listener.connected)
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        assert (await http.post("/admin/realtime/disconnect")).json()["closed"] == 1
    await eventually(lambda: listener.connections == 2, timeout=5)
    await check(sidecar)
    await stigg(
        emulator,
        "mutation($i: ReportUsageInput!) { reportUsage(input: $i) { id } }",
        {"i": {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1}},
    )

    async def updated() -> bool:
        return (await check(sidecar))["currentUsage"] == 1201

    await eventually(updated)


async def test_rest_mutations_invalidate_the_customer(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    path = "/v1/entitlements?customerId=customer-free&featureId=feature-sso"
    assert (await check(sidecar, path))["hasAccess"] is False
    response = await sidecar.post(
        "/v1/subscriptions", json={"customerId": "customer-free", "planId": "plan-pro"}
    )
    assert response.status == 201
    assert (await check(sidecar, path))["hasAccess"] is True


async def test_a_repeated_query_answers_the_new_state_after_a_change(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    """A query answered from its kept bytes (the hot path) never outlives a change: the same
    query string right after a report or a plan change answers the new state."""
    calls = "/v1/entitlements?customerId=customer-free&featureId=feature-api-calls"
    sso = "/v1/entitlements?customerId=customer-free&featureId=feature-sso"
    await hold_deliveries(emulator)
    try:
        await check(sidecar, calls)
        kept = await check(sidecar, calls)  # from the cache: its bytes are kept
        assert kept == await check(sidecar, calls)
        assert kept["currentUsage"] == 999
        response = await sidecar.post(
            "/v1/usage",
            json={"customerId": "customer-free", "featureId": "feature-api-calls", "value": 1},
        )
        assert response.status == 202
        after = await check(sidecar, calls)
        assert (after["hasAccess"], after["currentUsage"]) == (False, 1000)
    finally:
        await release_deliveries(emulator)
    for _ in range(3):
        assert (await check(sidecar, sso))["hasAccess"] is False
    response = await sidecar.post(
        "/v1/subscriptions", json={"customerId": "customer-free", "planId": "plan-pro"}
    )
    assert response.status == 201
    assert (await check(sidecar, sso))["hasAccess"] is True


async def test_graphql_mutation_through_the_sidecar_invalidates(
    emulator: EmulatorServer,
) -> None:
    settings = replace(
        sidecar_settings(emulator.url), realtime=replace(Settings().realtime, enabled=False)
    )
    client = await start_sidecar(settings)
    try:
        path = "/v1/entitlements?customerId=customer-free&featureId=feature-sso"
        assert (await check(client, path))["hasAccess"] is False
        response = await client.post(
            "/graphql",
            json={
                "query": 'mutation { provisionSubscriptionV2(input: {customerId: "customer-free",'
                ' planId: "plan-enterprise"}) { status } }'
            },
        )
        assert response.status == 200
        assert (await check(client, path))["hasAccess"] is True
    finally:
        await client.close()


async def test_reload_fetches_now(sidecar: Client, emulator: EmulatorServer) -> None:
    await check(sidecar)
    response = await sidecar.post("/v1/customers/customer-demo/entitlements/reload")
    assert response.status == 200
    body = await response.json()
    assert body["source"] == "upstream"
    assert await emulator_calls(emulator) == 2


# --- webhooks ----------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec-test-0123456789"


@pytest.fixture
async def webhook_sidecar(emulator: EmulatorServer) -> AsyncIterator[Client]:
    settings = replace(
        sidecar_settings(emulator.url),
        webhook_secret=Secret(WEBHOOK_SECRET),
        realtime=replace(Settings().realtime, enabled=False),
    )
    client = await start_sidecar(settings)
    yield client
    await client.close()


async def test_webhook_with_good_secret_invalidates_once(
    webhook_sidecar: Client, emulator: EmulatorServer
) -> None:
    await check(webhook_sidecar)
    event = {
        "messageId": "msg-1",
        "type": "entitlements.updated",
        "customer": {"customerId": "customer-demo"},
    }
    headers = {"Stigg-Webhooks-Secret": WEBHOOK_SECRET}
    response = await webhook_sidecar.post("/webhooks/stigg", json=event, headers=headers)
    assert response.status == 200
    assert await response.json() == {
        "messageId": "msg-1",
        "duplicate": False,
        "invalidated": ["customer-demo"],
    }
    await eventually(
        lambda: (
            webhook_sidecar.app[SERVICES].entitlements.l1.get_nowait(("customer-demo", None))
            is not None
        )
    )
    calls = await emulator_calls(emulator)
    assert calls == 2  # dropped and refetched
    replay = await webhook_sidecar.post("/webhooks/stigg", json=event, headers=headers)
    assert (await replay.json())["duplicate"] is True
    await asyncio.sleep(0.05)
    assert await emulator_calls(emulator) == calls  # a replay changes nothing


@pytest.mark.parametrize("secret", [None, "wrong", WEBHOOK_SECRET + "x"])
async def test_webhook_with_bad_secret_is_rejected(
    webhook_sidecar: Client, secret: str | None
) -> None:
    headers = {"Stigg-Webhooks-Secret": secret} if secret else {}
    response = await webhook_sidecar.post(
        "/webhooks/stigg", json={"messageId": "m", "customerId": "customer-demo"}, headers=headers
    )
    assert response.status == 401
    body = await response.json()
    assert body["error"]["code"] == "unauthorized"
    assert WEBHOOK_SECRET not in str(body)
    assert webhook_sidecar.app[SERVICES].entitlements.stats.fetches == 0


async def test_webhooks_are_off_without_a_secret(sidecar: Client) -> None:
    response = await sidecar.post(
        "/webhooks/stigg", json={"messageId": "m"}, headers={"Stigg-Webhooks-Secret": "any"}
    )
    assert response.status == 404
    # Without the header the route says what is missing first, as its OpenAPI document does.
    response = await sidecar.post("/webhooks/stigg", json={"messageId": "m"})
    assert response.status == 401


# --- replicas sharing a real Redis ---------------------------------------------------------


def redis_settings(emulator: EmulatorServer, target: RedisTarget, environment: str) -> Settings:
    """Replicas sharing Redis reached as ``target`` says (every mode: the broadcast suite)."""
    base = sidecar_settings(emulator.url)
    return target.configure(
        replace(
            base,
            cache=CacheSettings(environment=environment),
            realtime=replace(base.realtime, enabled=False),
        )
    )


async def test_invalidation_reaches_the_other_replicas_memory(
    emulator: EmulatorServer, redis_target: RedisTarget
) -> None:
    settings = redis_settings(emulator, redis_target, uuid.uuid4().hex)
    a, b = await start_sidecar(settings), await start_sidecar(settings)
    try:
        from sidecar.app import REPLICATION

        for replica in (a, b):
            await eventually(lambda r=replica: r.app[REPLICATION].connected.is_set())
        path = "/v1/entitlements?customerId=customer-free&featureId=feature-sso"
        assert (await check(a, path))["hasAccess"] is False
        assert (await check(b, path))["hasAccess"] is False  # now in B's memory
        b_memory = b.app[SERVICES].entitlements.l1
        response = await a.post(
            "/v1/subscriptions", json={"customerId": "customer-free", "planId": "plan-pro"}
        )
        assert response.status == 201
        # B learns through Redis pub/sub (bench/invalidation.py measures how fast).
        await eventually(lambda: b_memory.get_nowait(("customer-free", None)) is None, timeout=1)
        assert (await check(b, path))["hasAccess"] is True
    finally:
        await a.close()
        await b.close()


async def test_restarted_sidecar_serves_from_redis_while_stigg_hangs(
    emulator: EmulatorServer, redis_target: RedisTarget
) -> None:
    settings = redis_settings(emulator, redis_target, uuid.uuid4().hex)
    first = await start_sidecar(settings)
    try:
        from sidecar.app import REPLICATION

        # The Resync of a (slower, e.g. via the sentinels) first subscription would otherwise
        # discard the fetch in flight, and with it the write to Redis this test relies on.
        await eventually(first.app[REPLICATION].connected.is_set)
        assert (await check(first))["currentUsage"] == 1200
    finally:
        await first.close()
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        await http.post("/admin/faults", json={"hang": True})
    restarted = await start_sidecar(settings)
    try:
        answer = await check(restarted)
        assert (answer["source"], answer["isFallback"], answer["currentUsage"]) == (
            "cache",
            False,
            1200,
        )
    finally:
        async with httpx.AsyncClient(base_url=emulator.base_url) as http:
            await http.delete("/admin/faults")
        await restarted.close()


async def test_sidecar_starts_and_falls_back_without_any_upstream(
    emulator: EmulatorServer,
) -> None:
    from tests.conftest import free_port

    settings = replace(sidecar_settings(f"http://127.0.0.1:{free_port()}/graphql"))
    client = await start_sidecar(settings)
    try:
        answer = await check(client, DEMO_CALLS + "&fallbackHasAccess=true&fallbackUsageLimit=10")
        assert (answer["isFallback"], answer["source"], answer["hasAccess"]) == (
            True,
            "request",
            True,
        )
    finally:
        await client.close()


# --- optimistic usage ----------------------------------------------------------------------

FREE_CALLS = "/v1/entitlements?customerId=customer-free&featureId=feature-api-calls"


async def hold_deliveries(emulator: EmulatorServer) -> None:
    """Stigg accepts no usage for now: only the optimistic count can explain what checks see."""
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        response = await http.post(
            "/admin/faults", json={"hang": True, "operations": ["reportUsageBulk"]}
        )
        response.raise_for_status()


async def release_deliveries(emulator: EmulatorServer) -> None:
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        await http.delete("/admin/faults")


async def test_check_work_report_check_denies_at_the_limit_before_any_flush(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    await hold_deliveries(emulator)
    try:
        first = await check(sidecar, FREE_CALLS)
        assert (first["hasAccess"], first["currentUsage"]) == (True, 999)  # one call left
        response = await sidecar.post(
            "/v1/usage",
            json={"customerId": "customer-free", "featureId": "feature-api-calls", "value": 1},
        )
        assert response.status == 202
        second = await check(sidecar, FREE_CALLS)
        assert (second["hasAccess"], second["currentUsage"]) == (False, 1000)
        assert emulator.state.current_usage("customer-free", "feature-api-calls", None) == 999
    finally:
        await release_deliveries(emulator)


async def test_optimistic_usage_reaches_the_other_replica(
    emulator: EmulatorServer, redis_target: RedisTarget
) -> None:
    settings = redis_settings(emulator, redis_target, uuid.uuid4().hex)
    a, b = await start_sidecar(settings), await start_sidecar(settings)
    await hold_deliveries(emulator)
    try:
        from sidecar.app import REPLICATION

        for replica in (a, b):
            await eventually(lambda r=replica: r.app[REPLICATION].connected.is_set())
        assert (await check(b, FREE_CALLS))["currentUsage"] == 999  # cached in B
        response = await a.post(
            "/v1/usage",
            json={"customerId": "customer-free", "featureId": "feature-api-calls", "value": 1},
        )
        assert response.status == 202

        async def b_sees_it() -> bool:
            return (await check(b, FREE_CALLS))["currentUsage"] == 1000

        await eventually(b_sees_it, timeout=2)
        assert (await check(b, FREE_CALLS))["hasAccess"] is False
    finally:
        await release_deliveries(emulator)
        await a.close()
        await b.close()
