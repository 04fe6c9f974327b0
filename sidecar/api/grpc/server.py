"""The gRPC listener in the app's own event loop: the sidecar service, gRPC health checking
(``grpc.health.v1``, for Kubernetes ``grpc`` probes) and server reflection (for ``grpcurl``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from sidecar.api.grpc.service import SERVICE_NAME, GrpcMetrics, SidecarServicer, generic_handler
from sidecar.config import GrpcSettings, Secret, StartupError
from sidecar.services import Services

log = logging.getLogger(__name__)


@dataclass
class GrpcListener:
    """A started gRPC server and the port it got (useful with port 0)."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, then let in-flight calls finish for up to ``grace_seconds``."""
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_seconds)


async def start_grpc(
    settings: GrpcSettings,
    services: Callable[[], Services],
    *,
    token: Secret | None,
    max_reports: int,
    registry: CollectorRegistry,
) -> GrpcListener:
    """Bind and start; a port that cannot be bound raises ``StartupError`` with one line."""
    server = grpc.aio.server(
        options=[
            # A batch of 1,000 reports with dimensions can pass gRPC's 4 MiB default.
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Without this a second sidecar on the same port would share it silently.
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers(
        (generic_handler(SidecarServicer(services, max_reports), token, GrpcMetrics(registry)),)
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    hint = "set grpc.port (SIDECAR_GRPC_PORT) to a free port, or grpc.enabled: false"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(f"gRPC API cannot listen on {address}; {hint}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC API (stigg.sidecar.v1.SidecarService) on %s:%d", settings.host, port)
    return GrpcListener(server, health_servicer, port)
