"""Stigg's official Sidecar SDK (stigg-sidecar-sdk, unchanged) against this sidecar's gRPC API,
with the emulator as Stigg: every RPC, bad arguments, an unknown customer and an outage."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from stigg_sidecar_sdk import AccessDeniedReason as Reason
from stigg_sidecar_sdk import (
    ApiConfig,
    BooleanEntitlementFallback,
    BooleanEntitlementOptions,
    EnumEntitlementOptions,
    Event,
    EventDimensionValue,
    GetBooleanEntitlementRequest,
    GetEntitlementOptions,
    GetEntitlementRequest,
    GetEntitlementsRequest,
    GetEntitlementsStateV2Request,
    GetEntitlementV2Request,
    GetEnumEntitlementRequest,
    GetMeteredEntitlementRequest,
    GetNumericEntitlementRequest,
    MeteredEntitlementFallback,
    MeteredEntitlementOptions,
    MeterType,
    ReloadEntitlementsRequest,
    ReportEventsRequest,
    ReportUsageBulkRequest,
    ReportUsageRequest,
    Stigg,
    UsageUpdateBehavior,
)
from stigg_sidecar_sdk import EntitlementResetPeriod as ResetPeriod
from stigg_sidecar_sdk import FeatureType as SdkFeatureType

from sidecar.api.grpc import service
from sidecar.api.management import METRICS
from sidecar.app import GRPC
from sidecar.config import Secret, UsageSettings
from sidecar.emulator import EmulatorServer
from sidecar.fault_log import FaultLog
from sidecar.services import SERVICES
from tests.conftest import API_KEY, REPO, free_port, sidecar_settings, start_sidecar
from tests.integration.test_api_e2e import emulator_usage, wait_for_usage

Client = TestClient[web.Request, web.Application]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
pytestmark = pytest.mark.integration


def sdk_for(client: Client) -> Stigg:
    """The SDK as an app builds it for a remote sidecar (h2c, no credentials)."""
    return Stigg(
        ApiConfig(api_key="unused-by-grpc-calls"),
        remote_sidecar_host="127.0.0.1",
        remote_sidecar_port=client.app[GRPC].port,
    )


@pytest.fixture
async def stigg(sidecar: Client) -> AsyncIterator[Stigg]:
    sdk = sdk_for(sidecar)
    try:
        yield sdk
    finally:
        sdk.close()


async def admin(emulator: EmulatorServer, method: str, path: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        response = await http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()


# --- the six checks ----------------------------------------------------------------------------


async def test_boolean_entitlement(stigg: Stigg) -> None:
    answer = await stigg.get_boolean_entitlement(
        GetBooleanEntitlementRequest(customer_id="customer-demo", feature_id="feature-sso")
    )
    assert (answer.has_access, answer.is_fallback) == (True, False)
    assert answer.entitlement.feature.id == "feature-sso"
    assert answer.entitlement.feature.feature_type == SdkFeatureType.FEATURE_TYPE_BOOLEAN
    denied = await stigg.get_boolean_entitlement(
        GetBooleanEntitlementRequest(customer_id="customer-free", feature_id="feature-sso")
    )
    assert denied.has_access is False
    reason = Reason.ACCESS_DENIED_REASON_NO_FEATURE_ENTITLEMENT_IN_SUBSCRIPTION
    assert denied.access_denied_reason == reason


async def test_numeric_entitlement(stigg: Stigg) -> None:
    answer = await stigg.get_numeric_entitlement(
        GetNumericEntitlementRequest(customer_id="customer-demo", feature_id="feature-max-projects")
    )
    assert answer.has_access is True
    assert (answer.entitlement.value, answer.entitlement.is_unlimited) == (50, False)
    unlimited = await stigg.get_numeric_entitlement(
        GetNumericEntitlementRequest(
            customer_id="customer-enterprise", feature_id="feature-max-projects"
        )
    )
    assert unlimited.entitlement.is_unlimited is True


async def test_metered_entitlement_with_requested_usage(stigg: Stigg) -> None:
    request = GetMeteredEntitlementRequest(
        customer_id="customer-free",
        feature_id="feature-api-calls",
        options=MeteredEntitlementOptions(requested_usage=1),
    )
    answer = await stigg.get_metered_entitlement(request)
    assert (answer.has_access, answer.requested_usage) == (True, 1.0)
    metered = answer.entitlement
    assert (metered.usage_limit, metered.current_usage) == (1000.0, 999.0)
    assert metered.feature.is_metered is True
    assert metered.reset_period == ResetPeriod.ENTITLEMENT_RESET_PERIOD_MONTH
    assert metered.usage_period_start < datetime.now(UTC) < metered.usage_period_end
    request.options.requested_usage = 2
    over = await stigg.get_metered_entitlement(request)
    assert over.has_access is False
    assert over.access_denied_reason == Reason.ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT


async def test_enum_entitlement(stigg: Stigg) -> None:
    def ask(*values: str) -> GetEnumEntitlementRequest:
        return GetEnumEntitlementRequest(
            customer_id="customer-demo",
            feature_id="feature-region",
            options=EnumEntitlementOptions(requested_values=list(values)),
        )

    answer = await stigg.get_enum_entitlement(ask("eu"))
    assert answer.has_access is True
    assert sorted(answer.entitlement.enum_values) == ["eu", "us"]
    assert answer.requested_values == ["eu"]
    denied = await stigg.get_enum_entitlement(ask("apac"))
    assert denied.access_denied_reason == Reason.ACCESS_DENIED_REASON_REQUESTED_VALUES_MISMATCH


async def test_get_entitlement_picks_the_type(stigg: Stigg) -> None:
    metered = await stigg.get_entitlement(
        GetEntitlementRequest(
            customer_id="customer-demo",
            feature_id="feature-seats",
            options=GetEntitlementOptions(requested_usage=1),
        )
    )
    assert metered.has_access is True
    assert metered.metered.usage_limit == 20.0
    assert metered.metered.current_usage == 4.0
    v2 = await stigg.get_entitlement_v2(
        GetEntitlementV2Request(customer_id="customer-demo", feature_id="feature-sso")
    )
    assert v2.entitlement.has_access is True
    assert v2.entitlement.boolean.feature.id == "feature-sso"


async def test_feature_meter_type_as_the_catalog_has_it(stigg: Stigg) -> None:
    """``EntitlementFeature.meter_type``: NONE for unmetered features, the feature's meter for
    metered ones (Incremental calls, Fluctuating seats), in every kind of answer."""
    calls = await stigg.get_metered_entitlement(
        GetMeteredEntitlementRequest(customer_id="customer-demo", feature_id="feature-api-calls")
    )
    assert calls.entitlement.feature.meter_type == MeterType.METER_TYPE_INCREMENTAL
    seats = await stigg.get_entitlement(
        GetEntitlementRequest(customer_id="customer-demo", feature_id="feature-seats")
    )
    assert seats.metered.feature.meter_type == MeterType.METER_TYPE_FLUCTUATING
    listing = await stigg.get_entitlements(GetEntitlementsRequest(customer_id="customer-demo"))
    meters = {}
    for item in listing.entitlements:
        for kind in ("boolean", "numeric", "metered", "enum"):
            field = getattr(item, kind)
            if field is not None and field.feature is not None:
                meters[field.feature.id] = field.feature.meter_type
    assert meters == {
        "feature-sso": MeterType.METER_TYPE_NONE,
        "feature-max-projects": MeterType.METER_TYPE_NONE,
        "feature-api-calls": MeterType.METER_TYPE_INCREMENTAL,
        "feature-seats": MeterType.METER_TYPE_FLUCTUATING,
        "feature-storage-gb": MeterType.METER_TYPE_INCREMENTAL,
        "feature-region": MeterType.METER_TYPE_NONE,
    }


async def test_all_entitlements(stigg: Stigg) -> None:
    listing = await stigg.get_entitlements(GetEntitlementsRequest(customer_id="customer-demo"))
    kinds = {}
    for item in listing.entitlements:
        for kind in ("boolean", "numeric", "metered", "enum"):
            field = getattr(item, kind)
            if field is not None and field.feature is not None:
                kinds[field.feature.id] = kind
    assert kinds == {
        "feature-sso": "boolean",
        "feature-max-projects": "numeric",
        "feature-api-calls": "metered",
        "feature-seats": "metered",
        "feature-storage-gb": "metered",
        "feature-region": "enum",
    }
    state = await stigg.get_entitlements_state_v2(
        GetEntitlementsStateV2Request(customer_id="customer-demo")
    )
    assert len(state.entitlements) == 6
    assert all(item.has_access and not item.is_fallback for item in state.entitlements)


async def test_unknown_customer(stigg: Stigg) -> None:
    answer = await stigg.get_boolean_entitlement(
        GetBooleanEntitlementRequest(customer_id="nobody-here", feature_id="feature-sso")
    )
    assert (answer.has_access, answer.is_fallback) == (False, False)
    assert answer.access_denied_reason == Reason.ACCESS_DENIED_REASON_CUSTOMER_NOT_FOUND
    listing = await stigg.get_entitlements(GetEntitlementsRequest(customer_id="nobody-here"))
    assert listing.entitlements == []
    assert listing.access_denied_reason == Reason.ACCESS_DENIED_REASON_CUSTOMER_NOT_FOUND
    reload = await stigg.reload_entitlements(ReloadEntitlementsRequest(customer_id="nobody-here"))
    assert reload.entitled_entity_exists is False


async def test_reload_entitlements_sees_a_change_at_once(
    stigg: Stigg, sidecar: Client, emulator: EmulatorServer
) -> None:
    request = GetBooleanEntitlementRequest(customer_id="customer-free", feature_id="feature-sso")
    assert (await stigg.get_boolean_entitlement(request)).has_access is False
    # An upgrade made behind the sidecar's back (no webhook, no realtime in tests).
    response = await sidecar.post(
        "/v1/subscriptions", json={"customerId": "customer-free", "planId": "plan-pro"}
    )
    assert response.status == 201, await response.text()
    reloaded = await stigg.reload_entitlements(
        ReloadEntitlementsRequest(customer_id="customer-free")
    )
    assert reloaded.entitled_entity_exists is True
    assert (await stigg.get_boolean_entitlement(request)).has_access is True


# --- usage -------------------------------------------------------------------------------------


async def test_report_usage_is_spooled_and_delivered(
    stigg: Stigg, emulator: EmulatorServer
) -> None:
    before = await emulator_usage(emulator, "customer-demo", "feature-api-calls")
    # Cached first, so the answer can carry the new (optimistic) count.
    check = GetMeteredEntitlementRequest(
        customer_id="customer-demo", feature_id="feature-api-calls"
    )
    assert (await stigg.get_metered_entitlement(check)).entitlement.current_usage == before
    answer = await stigg.report_usage(
        ReportUsageRequest(customer_id="customer-demo", feature_id="feature-api-calls", value=5)
    )
    assert answer.measurement_id.startswith("sidecar-")
    assert (answer.customer_id, answer.feature_id) == ("customer-demo", "feature-api-calls")
    assert answer.current_usage == before + 5
    # A plain check's answer bytes are reused while the state is unchanged, never after.
    assert (await stigg.get_metered_entitlement(check)).entitlement.current_usage == before + 5
    assert answer.usage_period_start < datetime.now(UTC) < answer.usage_period_end
    bulk = await stigg.report_usage_bulk(
        ReportUsageBulkRequest(
            usages=[
                ReportUsageRequest(
                    customer_id="customer-demo", feature_id="feature-api-calls", value=2
                ),
                ReportUsageRequest(
                    customer_id="customer-demo",
                    feature_id="feature-seats",
                    value=7,
                    update_behavior=UsageUpdateBehavior.USAGE_UPDATE_BEHAVIOR_SET,
                    dimensions={"team": EventDimensionValue(string_value="core")},
                ),
            ]
        )
    )
    assert [u.feature_id for u in bulk.usages] == ["feature-api-calls", "feature-seats"]
    assert len({u.measurement_id for u in bulk.usages}) == 2
    await wait_for_usage(emulator, "customer-demo", "feature-api-calls", before + 7)
    await wait_for_usage(emulator, "customer-demo", "feature-seats", 7)


async def test_report_events(stigg: Stigg, emulator: EmulatorServer) -> None:
    events = [
        Event(
            event_name="api-call",
            customer_id="customer-demo",
            idempotency_key=f"event-{index}",
            dimensions={"path": EventDimensionValue(string_value="/v1/x")},
        )
        for index in range(3)
    ]
    await stigg.report_events(ReportEventsRequest(events=events))
    for _ in range(200):
        counters = await admin(emulator, "GET", "/admin/counters")
        if counters["calls"].get("reportEvent"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the events never reached Stigg")


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        (
            "get_boolean_entitlement",
            GetBooleanEntitlementRequest(feature_id="feature-sso"),
            "customer_id",
        ),
        (
            "get_numeric_entitlement",
            GetNumericEntitlementRequest(customer_id="customer-demo"),
            "feature_id",
        ),
        (
            "get_metered_entitlement",
            GetMeteredEntitlementRequest(
                customer_id="customer-demo",
                feature_id="feature-api-calls",
                options=MeteredEntitlementOptions(requested_usage=-1),
            ),
            "options.requested_usage",
        ),
        (
            "get_boolean_entitlement",
            GetBooleanEntitlementRequest(customer_id="bad id", feature_id="feature-sso"),
            "customer_id",
        ),
        ("get_entitlements", GetEntitlementsRequest(), "customer_id"),
        ("reload_entitlements", ReloadEntitlementsRequest(customer_id=" "), "customer_id"),
        (
            "report_usage",
            ReportUsageRequest(customer_id="customer-demo", value=1),
            "feature_id",
        ),
        (
            "report_usage",
            ReportUsageRequest(
                customer_id="customer-demo", feature_id="feature-api-calls", value=float("nan")
            ),
            "value",
        ),
        (
            "report_usage_bulk",
            ReportUsageBulkRequest(
                usages=[
                    ReportUsageRequest(
                        customer_id="customer-demo", feature_id="feature-api-calls", value=1
                    ),
                    ReportUsageRequest(feature_id="feature-api-calls", value=1),
                ]
            ),
            "usages[1].customer_id",
        ),
        ("report_usage_bulk", ReportUsageBulkRequest(), "usages"),
        (
            "report_events",
            ReportEventsRequest(events=[Event(event_name="x", customer_id="customer-demo")]),
            "events[0].idempotency_key",
        ),
    ],
)
async def test_bad_arguments_are_invalid_argument_naming_the_field(
    stigg: Stigg, call: str, request_: Any, field: str
) -> None:
    with pytest.raises(GRPCError) as raised:
        await getattr(stigg, call)(request_)
    assert raised.value.status == Status.INVALID_ARGUMENT
    assert raised.value.message is not None
    assert raised.value.message.startswith(f"{field}: ")


async def test_bad_usage_is_not_spooled(stigg: Stigg, emulator: EmulatorServer) -> None:
    before = await emulator_usage(emulator, "customer-demo", "feature-api-calls")
    good = ReportUsageRequest(customer_id="customer-demo", feature_id="feature-api-calls", value=3)
    with pytest.raises(GRPCError):
        await stigg.report_usage_bulk(
            ReportUsageBulkRequest(usages=[good, ReportUsageRequest(value=1)])
        )
    await stigg.report_usage(good)  # a later good report flushes; the bad batch is not in it
    await wait_for_usage(emulator, "customer-demo", "feature-api-calls", before + 3)


# --- Stigg down --------------------------------------------------------------------------------


@pytest.fixture
async def fast_flush_sidecar(emulator: EmulatorServer) -> AsyncIterator[Client]:
    settings = sidecar_settings(emulator.url, max_retries=0)
    settings = replace(
        settings,
        usage=UsageSettings(
            flush_interval_seconds=0.05, retry_backoff_seconds=0.02, retry_backoff_max_seconds=0.1
        ),
    )
    client = await start_sidecar(settings)
    try:
        yield client
    finally:
        await client.close()


async def test_outage_checks_fall_back_and_usage_is_delivered_once(
    fast_flush_sidecar: Client, emulator: EmulatorServer
) -> None:
    stigg = sdk_for(fast_flush_sidecar)
    before = await emulator_usage(emulator, "customer-free", "feature-api-calls")
    try:
        await admin(emulator, "POST", "/admin/faults", json={"status": 503})
        # Nothing cached for this customer: the request's fallback answers, marked as such.
        answer = await stigg.get_boolean_entitlement(
            GetBooleanEntitlementRequest(
                customer_id="customer-free",
                feature_id="feature-sso",
                options=BooleanEntitlementOptions(
                    fallback=BooleanEntitlementFallback(has_access=True)
                ),
            )
        )
        assert (answer.has_access, answer.is_fallback) == (True, True)
        metered = await stigg.get_metered_entitlement(
            GetMeteredEntitlementRequest(
                customer_id="customer-free",
                feature_id="feature-api-calls",
                options=MeteredEntitlementOptions(
                    requested_usage=5,
                    fallback=MeteredEntitlementFallback(has_access=True, usage_limit=10),
                ),
            )
        )
        assert (metered.has_access, metered.is_fallback) == (True, True)
        assert metered.entitlement.usage_limit == 10.0
        accepted = await stigg.report_usage(
            ReportUsageRequest(customer_id="customer-free", feature_id="feature-api-calls", value=1)
        )
        assert accepted.measurement_id
        await asyncio.sleep(0.3)  # several failed flushes
        assert await emulator_usage(emulator, "customer-free", "feature-api-calls") == before
    finally:
        await admin(emulator, "DELETE", "/admin/faults")
        stigg.close()
    await wait_for_usage(emulator, "customer-free", "feature-api-calls", before + 1)
    await asyncio.sleep(0.3)  # and not again
    assert await emulator_usage(emulator, "customer-free", "feature-api-calls") == before + 1


# --- a bug in a handler --------------------------------------------------------------------------


async def test_unhandled_error_is_internal_logged_once_per_interval_with_a_count_and_counted(
    sidecar: Client, stigg: Stigg, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(service, "_faults", FaultLog(service.log, 60, lambda: now[0]))

    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sidecar.app[SERVICES].entitlements, "check_rendered", broken)
    request = GetBooleanEntitlementRequest(customer_id="customer-demo", feature_id="feature-sso")

    async def fails() -> None:
        with pytest.raises(GRPCError) as raised:
            await stigg.get_boolean_entitlement(request)
        assert raised.value.status == Status.INTERNAL
        assert raised.value.message == "internal error; see the sidecar's log"

    for _ in range(5):
        await fails()
    now[0] += 61
    await fails()
    lines = [r for r in caplog.records if r.name == service.log.name and r.levelname == "ERROR"]
    assert [r.exc_info for r in lines] == [None, None]  # no traceback
    assert "unhandled error in gRPC GetBooleanEntitlement: RuntimeError('a bug') at " in (
        lines[0].getMessage()
    )
    assert "(and 4 more times in the last 61s)" in lines[1].getMessage()
    metrics = (await sidecar.app[METRICS].render()).decode()
    counted = 'stigg_sidecar_grpc_unhandled_errors_total{method="GetBooleanEntitlement"} 6.0'
    assert counted in metrics


# --- health follows readiness ------------------------------------------------------------------


async def _health(client: Client) -> list[Any]:
    """gRPC health (``grpc.health.v1``, as kubelet's grpc probe asks) of the server and of the
    sidecar service."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{client.app[GRPC].port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [
            (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in ("", "stigg.sidecar.v1.SidecarService")
        ]


async def test_health_follows_readiness_and_turns_not_serving_when_the_drain_begins(
    emulator: EmulatorServer,
) -> None:
    """NOT_SERVING while Stigg has not answered and nothing is cached or configured to fall
    back on (as /readyz), SERVING once it has, NOT_SERVING as soon as shutdown begins while
    calls are still answered."""
    await admin(emulator, "POST", "/admin/faults", json={"status": 503})
    client = await start_sidecar(sidecar_settings(emulator.url, max_retries=0))
    stigg = sdk_for(client)
    request = GetBooleanEntitlementRequest(customer_id="customer-demo", feature_id="feature-sso")
    try:
        assert await _health(client) == [NOT_SERVING, NOT_SERVING]
        assert (await stigg.get_boolean_entitlement(request)).is_fallback is True
        await admin(emulator, "DELETE", "/admin/faults")
        assert await _health(client) == [SERVING, SERVING]
        assert (await stigg.get_boolean_entitlement(request)).has_access is True
        # Stigg down again: still ready (latched, as /readyz), answering from the cache.
        await admin(emulator, "POST", "/admin/faults", json={"status": 503})
        assert await _health(client) == [SERVING, SERVING]
        await admin(emulator, "DELETE", "/admin/faults")
        # SIGTERM's drain begins with the app's shutdown; the gRPC server stops only later.
        await client.app.shutdown()
        assert await _health(client) == [NOT_SERVING, NOT_SERVING]
        assert (await stigg.get_boolean_entitlement(request)).has_access is True
    finally:
        await admin(emulator, "DELETE", "/admin/faults")
        stigg.close()
        await client.close()


# --- bearer token ------------------------------------------------------------------------------


async def test_bearer_token_from_authorization_metadata(emulator: EmulatorServer) -> None:
    token = "grpc-token-0123456789"
    client = await start_sidecar(replace(sidecar_settings(emulator.url), auth_token=Secret(token)))
    stigg = sdk_for(client)
    request = GetBooleanEntitlementRequest(customer_id="customer-demo", feature_id="feature-sso")
    try:
        with pytest.raises(GRPCError) as raised:
            await stigg.get_boolean_entitlement(request)
        assert raised.value.status == Status.UNAUTHENTICATED
        with pytest.raises(GRPCError):
            await stigg.get_boolean_entitlement(request, metadata={"authorization": "Bearer wrong"})
        answer = await stigg.get_boolean_entitlement(
            request, metadata={"authorization": f"Bearer {token}"}
        )
        assert answer.has_access is True
    finally:
        stigg.close()
        await client.close()


# --- a deployment of Stigg's Sidecar, moved as it is ---------------------------------------------


async def test_started_with_only_stigg_sidecar_settings(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Stigg Sidecar's env names and nothing else: no STIGG_*, no SIDECAR_* variables."""
    grpc_port, management_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STIGG_", "SIDECAR_"))}
    env.update(
        HOME=str(tmp_path),  # the default data directory, private to this test
        SERVER_API_KEY=API_KEY,
        API_URL=emulator.base_url,  # Stigg's form: the API's base, not its /graphql
        PORT=str(grpc_port),
        ENTITLEMENTS_FALLBACK='{"feature-sso": {"hasAccess": true}}',
    )
    # Only the listeners Stigg's Sidecar does not have get ports here (tests bind no fixed port).
    config = tmp_path / "ports.yaml"
    config.write_text(f"mcp:\n  enabled: false\nmanagement:\n  port: {management_port}\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "sidecar", "--port", str(free_port()), "--config", str(config)),
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    stigg = Stigg(
        ApiConfig(api_key="unused"), remote_sidecar_host="127.0.0.1", remote_sidecar_port=grpc_port
    )
    try:
        for _ in range(300):  # the gRPC port opens once the services run
            assert process.returncode is None, await process.stderr.read()  # type: ignore[union-attr]
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", grpc_port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as http:
            livez = await http.get(f"http://127.0.0.1:{management_port}/livez")
        assert livez.json() == {"status": "UP"}
        answer = await stigg.get_metered_entitlement(
            GetMeteredEntitlementRequest(
                customer_id="customer-demo", feature_id="feature-api-calls"
            )
        )
        assert (answer.has_access, answer.is_fallback) == (True, False)
        assert answer.entitlement.usage_limit == 100000.0
        await admin(emulator, "POST", "/admin/faults", json={"status": 503})
        fallback = await stigg.get_boolean_entitlement(
            GetBooleanEntitlementRequest(customer_id="customer-free", feature_id="feature-sso")
        )
        assert (fallback.has_access, fallback.is_fallback) == (True, True)  # ENTITLEMENTS_FALLBACK
    finally:
        await admin(emulator, "DELETE", "/admin/faults")
        stigg.close()
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
