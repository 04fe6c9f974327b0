"""The MCP server through the official MCP Python client, against a sidecar on the emulator.

Real sockets: the sidecar's REST app runs on an aiohttp test server and its MCP server on a
loopback port of its own, talking to the emulator on a third.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import httpx2
import mcp.types as types
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from mcp import Client as MCPClient
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from sidecar.api.mcp_server import MCP
from sidecar.config import McpSettings, Secret, Settings
from sidecar.emulator import EmulatorServer
from tests.conftest import API_KEY, REPO, free_port, sidecar_settings, start_sidecar

Client = TestClient[web.Request, web.Application]
TOKEN = "mcp-test-token-0123456789"
ACCEPT = "application/json, text/event-stream"
README = REPO / "README.md"

EXPECTED_HINTS = {
    # name: (readOnlyHint, destructiveHint, idempotentHint)
    "provision-customer": (False, False, False),
    "get-customer": (True, False, True),
    "create-subscription": (False, False, False),
    "cancel-subscription": (False, True, True),
    "check-entitlement": (True, False, True),
    "get-entitlements": (True, False, True),
    "report-usage": (False, False, False),
}


def mcp_settings(emulator: EmulatorServer, **mcp: Any) -> Settings:
    # Port 0: the listener picks a free loopback port and reports it (app[MCP].url).
    settings = sidecar_settings(emulator.url)
    return replace(settings, mcp=McpSettings(**{"port": 0, **mcp}))


@pytest.fixture
async def mcp_sidecar(emulator: EmulatorServer) -> AsyncIterator[Client]:
    client = await start_sidecar(mcp_settings(emulator))
    try:
        yield client
    finally:
        await client.close()


def url_of(sidecar: Client) -> str:
    return sidecar.app[MCP].url


@asynccontextmanager
async def session_for(
    url: str, token: str | None = None, statuses: list[int] | None = None
) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session; ``statuses`` collects every HTTP status seen."""

    async def record(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    async with (
        httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(10.0), event_hooks={"response": [record]}
        ) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=10) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A successful call's structured result, checked against its JSON text."""
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    return structured(result)


async def call_error(
    session: ClientSession, name: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    """A failed call's ``error`` object (the REST API's), as a tool error, not a protocol one."""
    result = await session.call_tool(name, arguments)
    assert result.is_error, result.content
    data = structured(result, as_json=False)
    assert set(data) == {"error"}
    text = text_of(result)
    assert data["error"]["message"] in text
    assert data["error"]["code"] in text
    assert API_KEY not in text
    return data["error"]  # type: ignore[no-any-return]


def text_of(result: types.CallToolResult) -> str:
    [content] = result.content
    assert isinstance(content, types.TextContent)
    return content.text


def structured(result: types.CallToolResult, *, as_json: bool = True) -> dict[str, Any]:
    data = result.structured_content
    assert isinstance(data, dict)
    if as_json:
        assert json.loads(text_of(result)) == data
    assert API_KEY not in json.dumps(data)
    return data


# --- protocol and listing ----------------------------------------------------------------


async def test_initialize_and_ping(mcp_sidecar: Client) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        result = session.initialize_result
        assert result is not None
        assert result.server_info.name == "stigg-sidecar"
        assert result.capabilities.tools is not None
        assert "check-entitlement" in (result.instructions or "")
        await session.send_ping()


async def test_the_stateless_protocol_revision_works_too(mcp_sidecar: Client) -> None:
    # mcp.Client negotiates the newest revision (2026-07-28: no initialize handshake).
    async with MCPClient(url_of(mcp_sidecar)) as client:
        assert client.session.protocol_version == "2026-07-28"
        assert len((await client.list_tools()).tools) == len(EXPECTED_HINTS)
        result = await client.call_tool(
            "check-entitlement", {"customerId": "customer-demo", "featureId": "feature-sso"}
        )
        assert structured(result)["hasAccess"] is True


async def test_lists_the_seven_tools_with_schemas_and_hints(mcp_sidecar: Client) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        listing = await session.list_tools()
        tools = {tool.name: tool for tool in listing.tools}
        assert set(tools) == set(EXPECTED_HINTS)
        for name, (read_only, destructive, idempotent) in EXPECTED_HINTS.items():
            tool = tools[name]
            assert tool.annotations is not None, name
            hints = tool.annotations
            assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (
                read_only,
                destructive,
                idempotent,
            ), name
            assert len(tool.description or "") > 80, name
            schema = tool.input_schema
            assert schema["type"] == "object"
            assert schema["additionalProperties"] is False, name
            assert set(schema["required"]) <= set(schema["properties"]), name
            # camelCase like the REST API
            assert all(re.fullmatch(r"[a-z][A-Za-z]*", key) for key in schema["properties"]), name
        assert tools["check-entitlement"].input_schema["required"] == ["customerId", "featureId"]
        assert tools["report-usage"].input_schema["required"] == [
            "customerId",
            "featureId",
            "value",
        ]
        assert tools["cancel-subscription"].input_schema["required"] == ["subscriptionId"]
        nested = tools["provision-customer"].input_schema["properties"]["subscriptionParams"]
        assert nested["additionalProperties"] is False
        assert nested["required"] == ["planId"]


# --- every tool, checked against the emulator --------------------------------------------


def without_source(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_source(v) for k, v in value.items() if k != "source"}
    if isinstance(value, list):
        return [without_source(v) for v in value]
    return value


async def test_read_tools_answer_like_the_rest_api(mcp_sidecar: Client) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        customer = await call(session, "get-customer", {"customerId": "customer-demo"})
        response = await mcp_sidecar.get("/v1/customers/customer-demo")
        assert customer == await response.json()
        assert customer["name"] == "Demo Co"

        sso = await call(
            session,
            "check-entitlement",
            {"customerId": "customer-demo", "featureId": "feature-sso"},
        )
        assert (sso["hasAccess"], sso["type"], sso["isFallback"]) == (True, "BOOLEAN", False)

        calls = await call(
            session,
            "check-entitlement",
            {"customerId": "customer-free", "featureId": "feature-api-calls", "requestedUsage": 5},
        )
        assert (calls["hasAccess"], calls["accessDeniedReason"]) == (
            False,
            "RequestedUsageExceedingLimit",
        )
        assert (calls["usageLimit"], calls["currentUsage"]) == (1000, 999)

        region = await call(
            session,
            "check-entitlement",
            {
                "customerId": "customer-demo",
                "featureId": "feature-region",
                "requestedValues": ["us"],
            },
        )
        assert (region["hasAccess"], region["type"]) == (True, "ENUM")

        everything = await call(session, "get-entitlements", {"customerId": "customer-enterprise"})
        features = {e["featureId"] for e in everything["entitlements"]}
        assert {"feature-sso", "feature-api-calls", "feature-seats"} <= features
        response = await mcp_sidecar.get("/v1/customers/customer-enterprise/entitlements")
        # Same answer, except where it came from: the first call fetched, the second hit the cache.
        assert without_source(everything) == without_source(await response.json())

        workspace = await call(
            session,
            "get-entitlements",
            {"customerId": "customer-workspaces", "resourceId": "workspace-alpha"},
        )
        assert workspace["resourceId"] == "workspace-alpha"

        nobody = await call(
            session,
            "check-entitlement",
            {"customerId": "customer-no-subscription", "featureId": "feature-sso"},
        )
        assert (nobody["hasAccess"], nobody["accessDeniedReason"]) == (
            False,
            "NoActiveSubscription",
        )


async def test_provision_subscribe_and_cancel(
    mcp_sidecar: Client, emulator: EmulatorServer
) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        created = await call(
            session,
            "provision-customer",
            {"customerId": "agent-co", "name": "Agent Co", "email": "ops@agent.example"},
        )
        assert created["customer"]["customerId"] == "agent-co"
        assert created["subscription"] is None
        record = emulator.state.customer("agent-co")
        assert record is not None
        assert (record.name, record.email) == ("Agent Co", "ops@agent.example")

        result = await call(
            session,
            "create-subscription",
            {
                "customerId": "agent-co",
                "planId": "plan-pro",
                "billingPeriod": "MONTHLY",
                "subscriptionId": "sub-agent-1",
            },
        )
        assert (result["subscription"]["status"], result["subscription"]["planId"]) == (
            "ACTIVE",
            "plan-pro",
        )
        subscription = emulator.state.subscription("sub-agent-1")
        assert subscription is not None
        assert (subscription.customer_id, subscription.plan_id) == ("agent-co", "plan-pro")
        granted = await call(
            session, "check-entitlement", {"customerId": "agent-co", "featureId": "feature-sso"}
        )
        assert granted["hasAccess"] is True

        cancelled = await call(session, "cancel-subscription", {"subscriptionId": "sub-agent-1"})
        assert (cancelled["subscriptionId"], cancelled["status"]) == ("sub-agent-1", "CANCELED")
        assert not subscription.is_active
        denied = await call(
            session, "check-entitlement", {"customerId": "agent-co", "featureId": "feature-sso"}
        )
        assert denied["hasAccess"] is False

        again = await call_error(session, "cancel-subscription", {"subscriptionId": "sub-agent-1"})
        assert (again["code"], again["stiggCode"]) == (
            "conflict",
            "SubscriptionAlreadyCanceledOrExpired",
        )
        duplicate = await call_error(session, "provision-customer", {"customerId": "agent-co"})
        assert duplicate["stiggCode"] == "DuplicatedEntityNotAllowed"


async def test_provision_customer_with_a_plan(
    mcp_sidecar: Client, emulator: EmulatorServer
) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        created = await call(
            session,
            "provision-customer",
            {"customerId": "agent-free", "subscriptionParams": {"planId": "plan-free"}},
        )
        assert created["subscription"]["planId"] == "plan-free"
        record = emulator.state.customer("agent-free")
        assert record is not None
        assert [s.plan_id for s in record.active_subscriptions(None)] == ["plan-free"]


async def test_report_usage_is_counted_once_per_idempotency_key(
    mcp_sidecar: Client, emulator: EmulatorServer
) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        before = emulator.state.current_usage("customer-demo", "feature-api-calls", None)
        usage = {
            "customerId": "customer-demo",
            "featureId": "feature-api-calls",
            "value": 10,
            "idempotencyKey": "mcp-usage-1",
        }
        first = await call(session, "report-usage", usage)
        # Only the fields every version of the usage contract answers with (issue 4 makes it async).
        assert (first["customerId"], first["featureId"], first["idempotencyKey"]) == (
            "customer-demo",
            "feature-api-calls",
            "mcp-usage-1",
        )
        second = await call(session, "report-usage", usage)
        assert (first["status"], second["status"]) == ("accepted", "duplicate")

        minted = await call(
            session,
            "report-usage",
            {
                "customerId": "customer-demo",
                "featureId": "feature-seats",
                "value": 7,
                "updateBehavior": "SET",
            },
        )
        assert minted["idempotencyKey"]
    # Delivered in the background by the usage pipeline.
    for _ in range(100):
        calls = emulator.state.current_usage("customer-demo", "feature-api-calls", None)
        seats = emulator.state.current_usage("customer-demo", "feature-seats", None)
        if (calls, seats) == (before + 10, 7):
            break
        await asyncio.sleep(0.05)
    assert (calls, seats) == (before + 10, 7)


# --- errors: tool errors with the REST API's messages, never protocol failures -----------


@pytest.mark.parametrize("null_for_missing", [False, True], ids=["error", "null"])
async def test_unknown_customer_on_every_tool_that_takes_one(mcp_sidecar: Client) -> None:
    """Whether Stigg answers null or CustomerNotFound: not_found for the customer's tools,
    a CustomerNotFound denial for checks."""
    ghost = {"customerId": "ghost-y"}
    async with session_for(url_of(mcp_sidecar)) as session:
        for name, arguments in (
            ("get-customer", ghost),
            ("create-subscription", {**ghost, "planId": "plan-pro"}),
        ):
            error = await call_error(session, name, arguments)
            assert (error["code"], error["stiggCode"]) == ("not_found", "CustomerNotFound")
        check = await call(session, "check-entitlement", {**ghost, "featureId": "feature-sso"})
        assert (check["hasAccess"], check["accessDeniedReason"]) == (False, "CustomerNotFound")
        listing = await call(session, "get-entitlements", ghost)
        assert (listing["accessDeniedReason"], listing["entitlements"]) == ("CustomerNotFound", [])


async def test_unknown_customer_is_a_tool_error(mcp_sidecar: Client) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        error = await call_error(session, "get-customer", {"customerId": "nobody-here"})
        assert (error["code"], error["stiggCode"]) == ("not_found", "CustomerNotFound")
        plan = await call_error(
            session, "create-subscription", {"customerId": "customer-demo", "planId": "plan-nope"}
        )
        assert plan["stiggCode"] == "PlanNotFound"
        cancel = await call_error(session, "cancel-subscription", {"subscriptionId": "nope"})
        assert cancel["stiggCode"] == "SubscriptionNotFound"
        # Usage is accepted durably first; an unknown customer ends in the dead letters.
        usage = await call(
            session,
            "report-usage",
            {"customerId": "nobody-here", "featureId": "feature-api-calls", "value": 1},
        )
        assert usage["status"] == "accepted"


@pytest.mark.parametrize(
    ("name", "arguments", "field", "message"),
    [
        ("get-customer", {}, "customerId", "customerId: is required"),
        ("get-customer", {"customerId": "a b"}, "customerId", "customerId: must start with"),
        ("get-customer", {"customerId": "x", "extra": 1}, "extra", "extra: unknown field"),
        ("check-entitlement", {"customerId": "c"}, "featureId", "featureId: is required"),
        (
            "check-entitlement",
            {"customerId": "c", "featureId": "f", "requestedUsage": -1},
            "requestedUsage",
            "requestedUsage: must be at least 0",
        ),
        (
            "check-entitlement",
            {"customerId": "c", "featureId": "f", "requestedValues": "us"},
            "requestedValues",
            "requestedValues: must be a list",
        ),
        (
            "report-usage",
            {"customerId": "c", "featureId": "f", "value": "ten"},
            "value",
            "value: must be a number",
        ),
        (
            "report-usage",
            {"customerId": "c", "featureId": "f", "value": 1, "updateBehavior": "ADD"},
            "updateBehavior",
            "updateBehavior: must be one of DELTA, SET",
        ),
        (
            "create-subscription",
            {"customerId": "c", "planId": "p", "billingPeriod": "WEEKLY"},
            "billingPeriod",
            "billingPeriod: must be one of",
        ),
        (
            "provision-customer",
            {"customerId": "c", "subscriptionParams": {"plan": "p"}},
            "subscriptionParams.plan",
            "subscriptionParams.plan: unknown field",
        ),
        (
            "cancel-subscription",
            {"subscriptionId": "s", "cancellationTime": "NOW"},
            "cancellationTime",
            "cancellationTime: must be one of",
        ),
        (
            "get-entitlements",
            {"customerId": "c", "resourceId": ""},
            "resourceId",
            "resourceId: must start with",
        ),
    ],
)
async def test_invalid_arguments_name_the_field(
    mcp_sidecar: Client, name: str, arguments: dict[str, Any], field: str, message: str
) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        error = await call_error(session, name, arguments)
        assert error["code"] == "invalid_request"
        assert error["field"] == field
        assert error["message"].startswith(message)


async def test_unknown_tool_is_a_tool_error(mcp_sidecar: Client) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        error = await call_error(session, "delete-everything", {})
        assert error["code"] == "unknown_tool"
        assert "check-entitlement" in error["message"]


async def test_upstream_down_is_a_tool_error_and_recovers(
    mcp_sidecar: Client, emulator: EmulatorServer
) -> None:
    async with session_for(url_of(mcp_sidecar)) as session:
        async with httpx.AsyncClient(base_url=emulator.base_url) as admin:
            (await admin.post("/admin/faults", json={"status": 503})).raise_for_status()
            try:
                # Checks keep answering while Stigg is down: the fallback chain, not an error.
                fallback = await call(
                    session,
                    "check-entitlement",
                    {"customerId": "customer-demo", "featureId": "feature-sso"},
                )
                assert (fallback["isFallback"], fallback["source"]) == (True, "default")
                # Usage is accepted into the durable spool while Stigg is down.
                accepted = await call(
                    session,
                    "report-usage",
                    {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1},
                )
                assert accepted["status"] == "accepted"
                for name, arguments in [
                    ("get-customer", {"customerId": "customer-demo"}),
                ]:
                    error = await call_error(session, name, arguments)
                    # After a few failures the circuit breaker answers without calling Stigg.
                    assert error["code"] in ("upstream_unavailable", "upstream_circuit_open")
                    assert error["message"].startswith("Stigg is unavailable")
            finally:
                (await admin.delete("/admin/faults")).raise_for_status()
        # Recovered once the circuit breaker's cool-down lets a probe through.
        for _ in range(50):
            again = await call(
                session,
                "check-entitlement",
                {"customerId": "customer-demo", "featureId": "feature-sso"},
            )
            if again["hasAccess"]:
                break
            await asyncio.sleep(0.05)
        assert (again["hasAccess"], again["isFallback"]) == (True, False)


async def test_unreachable_upstream_is_a_tool_error() -> None:
    settings = replace(
        sidecar_settings(f"http://127.0.0.1:{free_port()}/graphql", max_retries=0),
        mcp=McpSettings(port=0),
    )
    client = await start_sidecar(settings)
    try:
        async with session_for(url_of(client)) as session:
            error = await call_error(session, "get-customer", {"customerId": "customer-demo"})
            assert error["code"] == "upstream_unavailable"
    finally:
        await client.close()


# --- bearer token, listener, configuration ----------------------------------------------


async def test_bearer_token_guards_the_endpoint(emulator: EmulatorServer) -> None:
    settings = replace(mcp_settings(emulator), auth_token=Secret(TOKEN))
    client = await start_sidecar(settings)
    url = url_of(client)
    try:
        async with session_for(url, token=TOKEN) as session:
            answer = await call(session, "get-customer", {"customerId": "customer-demo"})
            assert answer["customerId"] == "customer-demo"

        for token in (None, "wrong-token", TOKEN + "x"):
            statuses: list[int] = []
            with pytest.raises((MCPError, ExceptionGroup)):
                async with session_for(url, token=token, statuses=statuses):
                    pass
            assert statuses == [401], token

        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.post(url, json=ping)
            lower = await http.post(
                url,
                json=ping,
                headers={"Authorization": f"bearer {TOKEN}", "Accept": ACCEPT},
            )
            basic = await http.post(url, json=ping, headers={"Authorization": f"Basic {TOKEN}"})
        assert lower.status_code == 200, lower.text  # the scheme is case-insensitive
        assert basic.status_code == 401
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"
        assert TOKEN not in response.text
    finally:
        await client.close()


async def test_other_paths_and_methods_are_json_errors(mcp_sidecar: Client) -> None:
    url = url_of(mcp_sidecar)
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(url.removesuffix("/mcp") + "/nothing")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        # Stateless: no server-to-client stream to hold open, no session to delete.
        for method in ("GET", "DELETE"):
            response = await http.request(method, url, headers={"Accept": "text/event-stream"})
            assert response.status_code == 405
            assert response.headers["allow"] == "POST"


async def test_listens_on_loopback_by_default(mcp_sidecar: Client) -> None:
    assert Settings().mcp == McpSettings(enabled=True, host="127.0.0.1", port=9090)
    assert url_of(mcp_sidecar).startswith("http://127.0.0.1:")


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_disabled_means_no_listener(emulator: EmulatorServer) -> None:
    port = free_port()
    client = await start_sidecar(mcp_settings(emulator, enabled=False, port=port))
    try:
        assert MCP not in client.app
        assert refused(port)
    finally:
        await client.close()


async def test_stops_listening_when_the_sidecar_stops(emulator: EmulatorServer) -> None:
    port = free_port()
    client = await start_sidecar(mcp_settings(emulator, port=port))
    assert not refused(port)
    await client.close()
    assert refused(port)


def test_port_conflict_stops_startup_with_one_line() -> None:
    from tests.integration.test_cli import sidecar_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Without --local: nothing to seed, the start fails before anything talks to Stigg.
        env = sidecar_env(
            SIDECAR_MCP_PORT=str(port),
            STIGG_API_KEY=API_KEY,
            STIGG_API_URL=f"http://127.0.0.1:{free_port()}/graphql",
        )
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "--port", str(free_port())],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"stigg-sidecar: cannot start: MCP server cannot listen on 127.0.0.1:{port}"
    )
    assert "SIDECAR_MCP_PORT" in line
    assert API_KEY not in result.stderr


def test_readme_shows_an_mcp_client_configuration() -> None:
    section = README.read_text().split("## MCP for AI agents", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    configs = [json.loads(block) for block in blocks]
    servers = [entry for config in configs for entry in config["mcpServers"].values()]
    assert any(entry["url"] == "http://127.0.0.1:9090/mcp" for entry in servers)
    assert any("Authorization" in entry.get("headers", {}) for entry in servers)
    for name in EXPECTED_HINTS:
        assert f"`{name}`" in section
