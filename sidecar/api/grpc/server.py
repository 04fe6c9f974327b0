"""The gRPC listener in the app's own event loop: the sidecar service, gRPC health checking
(``grpc.health.v1``, for Kubernetes ``grpc`` probes) and server reflection (for ``grpcurl``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from sidecar.api.grpc.service import SERVICE_NAME, GrpcMetrics, SidecarServicer, generic_handler
from sidecar.config import GrpcSettings, Secret, StartupError
from sidecar.services import Services

log = logging.getLogger(__name__)


# The names a health check may ask about: the whole server ("") and the sidecar service.
_HEALTH_NAMES = ("", SERVICE_NAME)


class ReadinessHealth(health.aio.HealthServicer):
    """``grpc.health.v1`` following readiness as ``/readyz`` does: NOT_SERVING until ``ready()``
    first says yes (Stigg answered, or there is cached or fallback data), SERVING from then on
    (latched, as ``/readyz``), NOT_SERVING for good once shutdown begins.

    Readiness is asked when a check or a watch comes in, not polled: an unready sidecar asks
    Stigg, and only a probe should make it do that."""

    def __init__(self, ready: Callable[[], Awaitable[bool]]) -> None:
        super().__init__()
        self._ready = ready
        self._latched = False
        self._stopping = False

    async def start_unready(self) -> None:
        """NOT_SERVING until readiness is first asked and says yes."""
        for name in _HEALTH_NAMES:
            await self.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def enter_graceful_shutdown(self) -> None:
        self._stopping = True
        await super().enter_graceful_shutdown()

    async def _refresh(self) -> None:
        if not self._latched and not self._stopping and await self._ready():
            self._latched = True
            for name in _HEALTH_NAMES:
                await self.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def Check(self, request: Any, context: Any) -> Any:
        await self._refresh()
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: Any) -> None:
        await self._refresh()
        await super().Watch(request, context)


@dataclass
class GrpcListener:
    """A started gRPC server and the port it got (useful with port 0)."""

    server: grpc.aio.Server
    health: ReadinessHealth
    port: int

    async def unready(self) -> None:
        """NOT_SERVING from now on (shutdown has begun), while calls are still answered."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, then let in-flight calls finish for up to ``grace_seconds``."""
        await self.unready()
        await self.server.stop(grace_seconds)


async def start_grpc(
    settings: GrpcSettings,
    services: Callable[[], Services],
    *,
    token: Secret | None,
    max_reports: int,
    registry: CollectorRegistry,
    ready: Callable[[], Awaitable[bool]],
) -> GrpcListener:
    """Bind and start; a port that cannot be bound raises ``StartupError`` with one line.
    ``ready``: whether the sidecar is ready (``/readyz``), for gRPC health checking."""
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
    health_servicer = ReadinessHealth(ready)
    await health_servicer.start_unready()
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
    log.info("gRPC API (stigg.sidecar.v1.SidecarService) on %s:%d", settings.host, port)
    return GrpcListener(server, health_servicer, port)
