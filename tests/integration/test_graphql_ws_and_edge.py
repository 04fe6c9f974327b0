"""The websocket passthrough (``GET /graphql``) and the edge read API, in-process against the
emulator on real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from sidecar.config import RealtimeSettings
from sidecar.emulator import EmulatorServer
from sidecar.services import SERVICES
from tests.conftest import sidecar_settings, start_sidecar

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]

ON_ENTITLEMENTS = """subscription S { entitlementsUpdated { customerId entitlements {
  isGranted feature { refId } } } }"""


@pytest.fixture
async def sidecar(emulator: EmulatorServer) -> AsyncIterator[Client]:
    settings = sidecar_settings(emulator.url)
    settings = replace(settings, realtime=RealtimeSettings(enabled=False, proxy_max_connections=2))
    client = await start_sidecar(settings)
    try:
        yield client
    finally:
        await client.close()


async def open_socket(sidecar: Client, key: str = "the-app-key") -> aiohttp.ClientWebSocketResponse:
    ws = await sidecar.ws_connect("/graphql", protocols=("graphql-transport-ws",))
    await ws.send_json({"type": "connection_init", "payload": {"headers": {"x-api-key": key}}})
    return ws


async def next_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    frame = await ws.receive(timeout=2)
    assert frame.type == WSMsgType.TEXT, frame  # graphql-ws rejects binary frames
    return frame.json()  # type: ignore[no-any-return]


async def test_websocket_reaches_stigg_with_the_sidecars_key(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    check = {"customerId": "customer-free", "featureId": "feature-sso"}
    before = await sidecar.get("/v1/entitlements", params=check)
    assert (await before.json())["hasAccess"] is False  # cached now
    ws = await open_socket(sidecar)
    # The emulator closes with 4403 unless the key is its own: the app's was replaced.
    assert await next_json(ws) == {"type": "connection_ack"}
    await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": ON_ENTITLEMENTS}})
    await asyncio.sleep(0.1)
    emulator.state.grant_promotions(
        "customer-free", [{"featureId": "feature-sso", "period": "LIFETIME"}]
    )
    update = await next_json(ws)
    assert update["id"] == "1"
    assert update["type"] == "next"
    changed = update["payload"]["data"]["entitlementsUpdated"]
    assert changed["customerId"] == "customer-free"
    assert {"isGranted": True, "feature": {"refId": "feature-sso"}} in changed["entitlements"]
    # The sidecar read the update flowing by (its own realtime link is off here): the cached
    # denial is gone.
    after = await sidecar.get("/v1/entitlements", params=check)
    assert (await after.json())["hasAccess"] is True
    await ws.close()


async def test_websocket_limit_and_plain_get(sidecar: Client) -> None:
    first, second = await open_socket(sidecar), await open_socket(sidecar)
    for ws in (first, second):
        assert await next_json(ws) == {"type": "connection_ack"}
    refused = await sidecar.get(
        "/graphql",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "graphql-transport-ws",
        },
    )
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "too_many_websockets"
    await first.close()
    await asyncio.sleep(0.1)
    third = await open_socket(sidecar)
    assert await next_json(third) == {"type": "connection_ack"}
    plain = await sidecar.get("/graphql")
    assert plain.status == 400
    assert (await plain.json())["error"]["code"] == "websocket_required"
    await second.close()
    await third.close()


async def test_websocket_without_connection_init_is_closed(sidecar: Client) -> None:
    ws = await sidecar.ws_connect("/graphql", protocols=("graphql-transport-ws",))
    await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": ON_ENTITLEMENTS}})
    frame = await ws.receive(timeout=2)
    assert frame.type == WSMsgType.CLOSE
    assert ws.close_code == 4400


async def test_edge_entitlements_from_the_cache(sidecar: Client, emulator: EmulatorServer) -> None:
    path = "/v1/c/customer-demo/entitlements.json"
    first = await (await sidecar.get(path)).json()
    calls = dict(emulator.emulator.counters.calls)
    again = await (await sidecar.get(path)).json()
    assert emulator.emulator.counters.calls == calls  # answered from the cache
    assert [e["feature"]["refId"] for e in first["data"]["entitlements"]] == [
        e["feature"]["refId"] for e in again["data"]["entitlements"]
    ]
    one = await (
        await sidecar.get(path, params={"featureId": "feature-api-calls", "requestedUsage": "1e9"})
    ).json()
    assert one["data"]["entitlement"]["isGranted"] is False
    assert one["data"]["entitlement"]["accessDeniedReason"] == "RequestedUsageExceedingLimit"
    missing = await (await sidecar.get("/v1/c/nobody/entitlements.json")).json()
    assert missing["errors"][0]["extensions"]["code"] == "CustomerNotFound"
    state = await (await sidecar.get("/v1/c/nobody/entitlements-state.json")).json()
    assert state["data"]["entitlementsState"]["accessDeniedReason"] == "CustomerNotFound"


async def test_edge_entitlements_answer_from_cache_while_stigg_is_down(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    path = "/v1/c/customer-demo/entitlements-state.json"
    fresh = await (await sidecar.get(path)).json()
    await emulator.stop()
    cached = await sidecar.get(path)
    assert cached.status == 200
    assert (await cached.json())["data"] == fresh["data"]
    # Marked for a refresh (as after a Redis resync): stale state still beats no answer.
    sidecar.app[SERVICES].entitlements.drop_all_local()
    assert (await sidecar.get(path)).status == 200
    unavailable = await sidecar.get("/v1/c/customer-free/entitlements-state.json")
    assert unavailable.status == 503  # nothing cached for it and Stigg down: say so
    assert (await unavailable.json())["error"]["code"] == "upstream_unavailable"


async def test_edge_paywall_cached_and_subscriptions_forwarded(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    paywall = await (await sidecar.get("/v1/paywall.json?fetchAllCountriesPrices=false")).json()
    assert {p["refId"] for p in paywall["data"]["paywall"]["plans"]} >= {"plan-free"}
    calls = emulator.emulator.counters.calls["paywall"]
    await sidecar.get("/v1/paywall.json?fetchAllCountriesPrices=false")
    assert emulator.emulator.counters.calls["paywall"] == calls
    unknown = await (await sidecar.get("/v1/p/nope/paywall.json")).json()
    assert unknown["errors"][0]["extensions"]["code"] == "ProductNotFoundError"
    subs = await (await sidecar.get("/v1/c/customer-workspaces/subscriptions.json")).json()
    assert len(subs["data"]["getActiveSubscriptions"]) == 2
    one = await (
        await sidecar.get(
            "/v1/c/customer-workspaces/subscriptions.json", params={"resourceId": "workspace-alpha"}
        )
    ).json()
    assert [s["resource"]["resourceId"] for s in one["data"]["getActiveSubscriptions"]] == [
        "workspace-alpha"
    ]


ON_USAGE_V2 = """subscription U { usageUpdatedV2 { customerId resourceId
  entitlementReference { id type } usage { currentUsage usagePeriodStart usagePeriodEnd } } }"""


async def test_proxied_usage_updates_reach_the_cache(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    check = {"customerId": "customer-demo", "featureId": "feature-api-calls"}
    before = await (await sidecar.get("/v1/entitlements", params=check)).json()
    ws = await open_socket(sidecar)
    assert await next_json(ws) == {"type": "connection_ack"}
    await ws.send_json({"id": "u", "type": "subscribe", "payload": {"query": ON_USAGE_V2}})
    await asyncio.sleep(0.1)
    emulator.state.report_usage(
        {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 11}
    )
    update = (await next_json(ws))["payload"]["data"]["usageUpdatedV2"]
    assert update["entitlementReference"] == {"id": "feature-api-calls", "type": "FEATURE"}
    assert update["usage"]["currentUsage"] == before["currentUsage"] + 11
    after = await (await sidecar.get("/v1/entitlements", params=check)).json()
    assert after["currentUsage"] == before["currentUsage"] + 11
    await ws.close()
