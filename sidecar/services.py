"""The services the API, MCP and metrics call, built once per app (see ``app.py``), and the
app keys they are found under."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from sidecar.config import Settings
from sidecar.entitlements.service import EntitlementService
from sidecar.provisioning import ProvisioningService
from sidecar.upstream.client import Upstream
from sidecar.upstream.realtime import RealtimeListener
from sidecar.usage.service import UsageService


@dataclass(frozen=True)
class Services:
    """What the routes call; built once the upstream is ready."""

    entitlements: EntitlementService
    usage: UsageService
    provisioning: ProvisioningService
    upstream: Upstream
    # Stigg's realtime link, when enabled (run by the app; its health is a metric).
    realtime: RealtimeListener | None = None


SERVICES = web.AppKey("services", Services)
SETTINGS = web.AppKey("settings", Settings)
