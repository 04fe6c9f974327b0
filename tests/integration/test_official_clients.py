"""Stigg's official clients, unchanged, against a ``--local`` sidecar subprocess: the Python
``stigg-api-client-v2`` (pinned in uv.lock) and the Node ``@stigg/node-server-sdk`` (pinned in
tests/clients/package-lock.json), each pointed at the sidecar by its URLs only.

The Node SDK needs ``node`` and ``npm ci`` in tests/clients; without them its test skips,
except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from stigg import Stigg
from stigg.client import AsyncStiggClient, StiggClient, get_headers
from stigg.generated import (
    FetchEntitlementQuery,
    FetchEntitlementsQuery,
    GetActiveSubscriptionsInput,
    GetCustomerByRefIdInput,
    GetPaywallInput,
    ProvisionCustomerInput,
    ProvisionSubscriptionInput,
    ReportUsageInput,
    SubscriptionCancellationInput,
)

from tests.conftest import REPO, free_port
from tests.integration.test_cli import sidecar_env, wait_until_serving

pytestmark = pytest.mark.integration

CLIENTS = REPO / "tests" / "clients"
NODE_SDK = CLIENTS / "node_modules" / "@stigg" / "node-server-sdk"
APP_KEY = "app-own-key-never-forwarded"
T = TypeVar("T")


@pytest.fixture(scope="module")
def sidecar_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--local", "--port", str(port)],
        env=sidecar_env(SIDECAR_MCP_ENABLED="false"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base + "/openapi.json", process)
        yield base
    finally:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        # The app's own key must never reach a log line (nor Stigg: the emulator would refuse it).
        assert APP_KEY not in stderr


def eventually(read: Callable[[], T], accept: Callable[[T], bool], seconds: float = 2.0) -> T:
    deadline = time.monotonic() + seconds
    value = read()
    while not accept(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


# --- Python: stigg-api-client-v2 ------------------------------------------------------------


def official_client(sidecar_url: str) -> StiggClient:
    """Defaults but for the two URLs (and a key the sidecar ignores)."""
    return Stigg.create_client(APP_KEY, api_url=f"{sidecar_url}/graphql", edge_api_url=sidecar_url)


@pytest.fixture
def client(sidecar_url: str) -> StiggClient:
    return official_client(sidecar_url)


def new_customer(client: StiggClient, plan_id: str = "plan-pro") -> tuple[str, str]:
    customer_id = f"py-{uuid.uuid4()}"
    client.provision_customer(ProvisionCustomerInput(customer_id=customer_id, name="Python SDK"))
    result = client.provision_subscription(
        ProvisionSubscriptionInput(customer_id=customer_id, plan_id=plan_id)
    ).provision_subscription
    assert result.status.value == "SUCCESS"
    assert result.subscription is not None
    return customer_id, result.subscription.subscription_id


def entitlement(client: StiggClient, customer_id: str, feature_id: str, **options: Any) -> Any:
    query = FetchEntitlementQuery(customer_id=customer_id, feature_id=feature_id, **options)
    return client.get_entitlement(query).entitlement


def test_python_client_start_up_and_catalog_reads(client: StiggClient) -> None:
    configuration = client.get_sdk_configuration().sdk_configuration
    assert configuration is not None
    paywall = client.get_paywall(GetPaywallInput()).paywall  # through the edge path
    assert {plan.ref_id for plan in paywall.plans} >= {"plan-free", "plan-pro"}
    products = client.get_products().products
    assert [edge.node.ref_id for edge in products.edges] == ["product-saas"]


def test_python_client_checks_through_the_edge(client: StiggClient) -> None:
    customer_id, _ = new_customer(client)
    sso = entitlement(client, customer_id, "feature-sso")
    assert sso.is_granted
    assert sso.feature.feature_type.value == "BOOLEAN"
    projects = entitlement(client, customer_id, "feature-max-projects")
    assert projects.is_granted
    assert projects.usage_limit == 50
    calls = entitlement(client, customer_id, "feature-api-calls")
    assert calls.is_granted
    assert (calls.current_usage, calls.usage_limit) == (0, 100000)
    region = entitlement(client, customer_id, "feature-region")
    assert region.is_granted
    assert region.enum_values == ["us", "eu"]
    everything = client.get_entitlements(FetchEntitlementsQuery(customer_id=customer_id))
    assert {e.feature.ref_id for e in everything.entitlements} >= {"feature-sso", "feature-region"}
    state = client.get_entitlements_state(FetchEntitlementsQuery(customer_id=customer_id))
    assert state.entitlements_state.access_denied_reason is None
    assert len(state.entitlements_state.entitlements_v_2) == len(everything.entitlements)


def test_python_client_usage_is_reflected(client: StiggClient) -> None:
    customer_id, _ = new_customer(client)
    client.report_usage(
        ReportUsageInput(customer_id=customer_id, feature_id="feature-api-calls", value=5)
    )
    calls = eventually(
        lambda: entitlement(client, customer_id, "feature-api-calls"),
        lambda e: e.current_usage == 5,
    )
    assert calls.current_usage == 5
    over = entitlement(
        client, customer_id, "feature-api-calls", options={"requestedUsage": 1_000_000}
    )
    assert not over.is_granted
    assert over.access_denied_reason.value == "RequestedUsageExceedingLimit"


def test_python_client_provision_subscribe_cancel(client: StiggClient) -> None:
    customer_id, subscription_id = new_customer(client)
    found = client.get_customer_by_id(GetCustomerByRefIdInput(customer_id=customer_id))
    customer = found.get_customer_by_ref_id
    assert customer.customer_id == customer_id
    listed = client.get_active_subscriptions_list(
        GetActiveSubscriptionsInput(customer_id=customer_id)
    )
    assert [s.subscription_id for s in listed.get_active_subscriptions] == [subscription_id]
    client.cancel_subscription(SubscriptionCancellationInput(subscription_ref_id=subscription_id))
    sso = eventually(
        lambda: entitlement(client, customer_id, "feature-sso"), lambda e: not e.is_granted
    )
    assert sso.access_denied_reason.value == "NoActiveSubscription"
    listed = client.get_active_subscriptions_list(
        GetActiveSubscriptionsInput(customer_id=customer_id)
    )
    assert listed.get_active_subscriptions == []


ENTITLEMENTS_UPDATED_V2 = """
subscription OnEntitlementsUpdatedV2 {
  entitlementsUpdatedV2 {
    customerId
    resourceId
    entitlements {
      __typename
      ... on FeatureEntitlement { isGranted usageLimit feature { refId } }
    }
  }
}
"""


async def test_python_client_realtime_update_within_a_second(sidecar_url: str) -> None:
    """The client's own websocket support (``execute_ws``) through the sidecar's proxy."""
    client = official_client(sidecar_url)
    customer_id, _ = new_customer(client)
    ws_client = AsyncStiggClient(
        enable_edge=True,
        edge_api_url=sidecar_url,
        url=f"{sidecar_url}/graphql",
        headers=get_headers(APP_KEY),
        ws_url=sidecar_url.replace("http://", "ws://") + "/graphql",
        ws_connection_init_payload={"headers": {"X-API-KEY": APP_KEY}},
    )
    updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def listen() -> None:
        async for data in ws_client.execute_ws(ENTITLEMENTS_UPDATED_V2):
            await updates.put(data["entitlementsUpdatedV2"])

    listener = asyncio.create_task(listen())
    try:
        await asyncio.sleep(0.3)  # subscribed
        granted_at = time.monotonic()
        await ws_client.grant_promotional_entitlements(
            {
                "customerId": customer_id,
                "promotionalEntitlements": [
                    {"featureId": "feature-storage-gb", "period": "ONE_WEEK", "usageLimit": 777}
                ],
            }
        )
        update = await asyncio.wait_for(updates.get(), timeout=1.0)
        while update["customerId"] != customer_id:
            update = await asyncio.wait_for(updates.get(), timeout=1.0)
        assert time.monotonic() - granted_at < 1.0
        storage = [
            e for e in update["entitlements"] if e["feature"]["refId"] == "feature-storage-gb"
        ]
        assert storage == [
            {
                "__typename": "FeatureEntitlement",
                "isGranted": True,
                "usageLimit": 777,
                "feature": {"refId": "feature-storage-gb"},
            }
        ]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    # The sidecar's own cache saw the change too (the edge read answers from it).
    assert entitlement(client, customer_id, "feature-storage-gb").usage_limit == 777


# --- Node: @stigg/node-server-sdk -----------------------------------------------------------


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is not None and NODE_SDK.is_dir():
        return node
    message = (
        "the Node SDK test needs node (>= 18) and the pinned SDK: apt-get install nodejs npm, "
        "then `npm ci --prefix tests/clients`"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_node_sdk_session(sidecar_url: str) -> None:
    node = node_or_skip()
    result = subprocess.run(
        [node, "node_session.js", sidecar_url],
        cwd=CLIENTS,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines[-1] == {
        "done": ["initialize", "provision", "checks", "usage", "reads", "realtime", "cancel"]
    }
    realtime = next(line for line in lines if line.get("step") == "realtime")
    assert realtime["latencyMs"] < 1000
