"""The gRPC listener as grpcurl and Kubernetes see it: health checking and reflection."""

from __future__ import annotations

import socket
from dataclasses import replace

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.api.grpc import sidecar_v1_pb2 as pb
from sidecar.api.management import METRICS
from sidecar.app import GRPC
from sidecar.config import GrpcSettings, Secret, StartupError
from sidecar.emulator import EmulatorServer
from tests.conftest import sidecar_settings, start_sidecar

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.integration


async def test_health_is_served_without_the_token_and_follows_the_listener_state(
    emulator: EmulatorServer,
) -> None:
    # A token is configured, yet kubelet's grpc probe (no metadata) must get through.
    settings = replace(sidecar_settings(emulator.url), auth_token=Secret("token-0123456789"))
    client = await start_sidecar(settings)
    listener = client.app[GRPC]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{listener.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "stigg.sidecar.v1.SidecarService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        await listener.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await client.close()


async def test_reflection_lists_and_describes_the_service(sidecar: Client) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.app[GRPC].port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="stigg.sidecar.v1.SidecarService"
            ),
        ]
        answers = [answer async for answer in stub.ServerReflectionInfo(iter(requests))]
    services = {s.name for s in answers[0].list_services_response.service}
    assert "stigg.sidecar.v1.SidecarService" in services
    assert "grpc.health.v1.Health" in services
    assert answers[1].file_descriptor_response.file_descriptor_proto


async def test_an_unknown_method_is_unimplemented(sidecar: Client) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.app[GRPC].port}") as channel:
        call = channel.unary_unary("/stigg.sidecar.v1.SidecarService/NoSuchRpc")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_calls_are_counted_by_method_and_code(sidecar: Client) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.app[GRPC].port}") as channel:
        check = channel.unary_unary(
            "/stigg.sidecar.v1.SidecarService/GetBooleanEntitlement",
            request_serializer=pb.GetBooleanEntitlementRequest.SerializeToString,
            response_deserializer=pb.GetBooleanEntitlementResponse.FromString,
        )
        answer = await check(
            pb.GetBooleanEntitlementRequest(customer_id="customer-demo", feature_id="feature-sso")
        )
        assert answer.has_access
        with pytest.raises(grpc.aio.AioRpcError):
            await check(pb.GetBooleanEntitlementRequest(customer_id="customer-demo"))
    metrics = (await sidecar.app[METRICS].render()).decode()
    for code in ("OK", "INVALID_ARGUMENT"):
        line = (
            f'stigg_sidecar_grpc_requests_total{{code="{code}",method="GetBooleanEntitlement"}} 1.0'
        )
        assert line in metrics
    assert "stigg_sidecar_grpc_request_duration_seconds_bucket" in metrics


async def test_a_taken_port_stops_startup_with_one_line(emulator: EmulatorServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = replace(sidecar_settings(emulator.url), grpc=GrpcSettings(port=port))
        with pytest.raises(StartupError, match="SIDECAR_GRPC_PORT") as raised:
            await start_sidecar(settings)
    assert "\n" not in str(raised.value)
