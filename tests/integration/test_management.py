"""The management port: /livez, /readyz, /metrics, with Stigg up, Stigg down and Redis down."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sidecar.api.management import MANAGEMENT
from sidecar.config import EntitlementSettings, FeatureFallback, Secret
from sidecar.emulator import EmulatorServer
from tests.conftest import free_port, sidecar_settings, start_sidecar
from tests.integration.usage_processes import RedisProcess

Client = TestClient[web.Request, web.Application]
CHECK = "/v1/entitlements?customerId=customer-demo&featureId=feature-sso"


async def manage(client: Client, path: str) -> tuple[int, str]:
    port = client.app[MANAGEMENT].port
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample, parsed by prometheus_client's own parser (which rejects bad output)."""
    parsed = {}
    for family in text_string_to_metric_families(exposition):
        assert family.name.startswith("stigg_sidecar_"), family.name
        for sample in family.samples:
            parsed[sample.name, frozenset(sample.labels.items())] = sample.value
    return parsed


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed[name, frozenset(labels.items())]


async def test_livez_readyz_metrics_on_the_management_port(sidecar: Client) -> None:
    status, body = await manage(sidecar, "/livez")
    assert status == 200
    assert json.loads(body) == {"status": "UP"}  # Stigg Sidecar's body
    status, body = await manage(sidecar, "/readyz")
    assert status == 200, body  # the --local-like warm-up is absent; the emulator answers
    assert (json.loads(body)["status"], json.loads(body)["ready"]) == ("UP", True)
    assert (await sidecar.get(CHECK)).status == 200
    assert (await sidecar.get(CHECK)).status == 200
    assert (await sidecar.get("/v1/customers/customer-demo")).status == 200
    assert (await sidecar.get("/no/such/route")).status == 404
    status, body = await manage(sidecar, "/metrics")
    assert status == 200
    parsed = samples(body)
    route = "/v1/entitlements"
    assert (
        value(parsed, "stigg_sidecar_http_requests_total", route=route, method="GET", status="200")
        == 2
    )
    customer = "/v1/customers/{customerId}"
    assert (
        value(
            parsed, "stigg_sidecar_http_requests_total", route=customer, method="GET", status="200"
        )
        == 1
    )
    assert (
        value(
            parsed,
            "stigg_sidecar_http_requests_total",
            route="unmatched",
            method="GET",
            status="404",
        )
        == 1
    )
    # Histogram buckets start at 0.1 ms.
    bucket = value(
        parsed,
        "stigg_sidecar_http_request_duration_seconds_bucket",
        route=route,
        method="GET",
        status="200",
        le="0.0001",
    )
    assert 0 <= bucket <= 2
    checks = "stigg_sidecar_entitlement_checks_total"
    assert value(parsed, checks, result="miss", decision="granted") == 1
    assert value(parsed, checks, result="hit", decision="granted") == 1
    assert value(parsed, checks, result="stale", decision="denied") == 0  # pre-initialised
    assert value(parsed, checks, result="fallback", decision="granted") == 0
    ok = value(
        parsed,
        "stigg_sidecar_upstream_requests_total",
        operation="entitlementsState",
        outcome="success",
    )
    assert ok >= 1
    assert (
        value(
            parsed,
            "stigg_sidecar_upstream_requests_total",
            operation="reportUsageBulk",
            outcome="timeout",
        )
        == 0
    )
    assert value(parsed, "stigg_sidecar_cache_entries", level="l1") >= 1
    assert value(parsed, "stigg_sidecar_cache_bytes", level="l1") > 0
    assert value(parsed, "stigg_sidecar_cache_bytes", level="answers") > 0  # a repeated check
    assert value(parsed, "stigg_sidecar_circuit_breaker_state") == 0
    assert value(parsed, "stigg_sidecar_usage_spool_depth", kind="usage") == 0
    assert value(parsed, "stigg_sidecar_usage_spool_oldest_age_seconds", kind="event") == 0
    assert value(parsed, "stigg_sidecar_usage_dead_letters_total", kind="usage") == 0
    assert value(parsed, "stigg_sidecar_usage_reports_rejected_total", kind="usage") == 0
    assert value(parsed, "stigg_sidecar_usage_flush_batch_size_count", kind="usage") == 0
    assert value(parsed, "stigg_sidecar_realtime_connected") in (0, 1)
    build = [k for k in parsed if k[0] == "stigg_sidecar_build_info"]
    assert len(build) == 1
    assert {label for label, _ in build[0][1]} == {"version", "python"}
    assert not [name for name, _ in parsed if name.endswith("_created")]
    # No customer or feature ever becomes a label.
    assert "customer-demo" not in body
    assert "feature-sso" not in body


async def test_usage_counters_and_batch_sizes(sidecar: Client) -> None:
    reports = [
        {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1}
        for _ in range(3)
    ]
    response = await sidecar.post("/v1/usage", json={"usages": reports})
    assert response.status == 202, await response.text()
    parsed: dict[Any, float] = {}
    for _ in range(100):
        parsed = samples((await manage(sidecar, "/metrics"))[1])
        if value(parsed, "stigg_sidecar_usage_reports_flushed_total", kind="usage") == 3:
            break
        await asyncio.sleep(0.05)
    assert value(parsed, "stigg_sidecar_usage_reports_accepted_total", kind="usage") == 3
    assert value(parsed, "stigg_sidecar_usage_reports_flushed_total", kind="usage") == 3
    assert value(parsed, "stigg_sidecar_usage_flush_batch_size_count", kind="usage") >= 1


async def test_unready_until_it_can_answer_then_stays_ready_while_stigg_is_down(
    emulator: EmulatorServer,
) -> None:
    # Stigg down from the start, nothing cached, no fallbacks: checks could only deny.
    dead_url = f"http://127.0.0.1:{free_port()}/graphql"
    client = await start_sidecar(sidecar_settings(dead_url, max_retries=0))
    try:
        assert (await manage(client, "/livez"))[0] == 200
        status, body = await manage(client, "/readyz")
        assert status == 503, body
        assert '"upstreamAnswered":false' in body
        await client.get(CHECK)
        status, body = await manage(client, "/metrics")
        parsed = samples(body)
        assert (
            value(
                parsed,
                "stigg_sidecar_entitlement_checks_total",
                result="fallback",
                decision="denied",
            )
            == 1
        )
        assert (
            value(
                parsed,
                "stigg_sidecar_upstream_requests_total",
                operation="entitlementsState",
                outcome="unavailable",
            )
            >= 1
        )
    finally:
        await client.close()

    # Stigg up: ready after its first answer; then Stigg goes down and it stays ready.
    client = await start_sidecar(sidecar_settings(emulator.url, max_retries=0))
    try:
        assert (await client.get(CHECK)).status == 200
        assert (await manage(client, "/readyz"))[0] == 200
        await emulator.stop()
        for _ in range(6):  # enough failures to open the circuit breaker
            await client.get("/v1/customers/customer-demo")
        assert (await manage(client, "/livez"))[0] == 200
        status, body = await manage(client, "/readyz")
        assert status == 200, body
        parsed = samples((await manage(client, "/metrics"))[1])
        assert value(parsed, "stigg_sidecar_circuit_breaker_state") == 1
    finally:
        await client.close()


async def test_ready_from_configured_fallbacks_while_stigg_is_down() -> None:
    settings = sidecar_settings(f"http://127.0.0.1:{free_port()}/graphql")
    settings = replace(
        settings,
        entitlements=EntitlementSettings(
            fallback={"feature-sso": FeatureFallback(has_access=True)}
        ),
    )
    client = await start_sidecar(settings)
    try:
        status, body = await manage(client, "/readyz")
        assert status == 200, body
        assert '"fallbacksConfigured":true' in body
    finally:
        await client.close()


@pytest.mark.integration
async def test_probes_and_metrics_answer_while_redis_is_down(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    redis_process = RedisProcess(tmp_path)
    settings = replace(sidecar_settings(emulator.url), redis_url=Secret(redis_process.url))
    client = await start_sidecar(settings)
    try:
        assert (await client.get(CHECK)).status == 200
        redis_process.stop()
        assert (await manage(client, "/livez"))[0] == 200
        status, body = await manage(client, "/readyz")
        assert status == 200, body
        status, body = await manage(client, "/metrics")
        assert status == 200
        parsed = samples(body)
        assert value(parsed, "stigg_sidecar_usage_spool_up") == 0
    finally:
        await client.close()
        redis_process.stop()


async def test_management_port_conflict_is_one_line(emulator: EmulatorServer) -> None:
    import socket

    from sidecar.config import ManagementSettings, StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = replace(
            sidecar_settings(emulator.url),
            management=ManagementSettings(host="127.0.0.1", port=port),
        )
        with pytest.raises(StartupError, match="SIDECAR_MANAGEMENT_PORT"):
            await start_sidecar(settings)
