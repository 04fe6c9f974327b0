"""Shared fixtures: the emulator on an ephemeral loopback port, the sidecar in front of it,
and a real redis-server for integration tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import create_app
from sidecar.config import (
    GrpcSettings,
    ManagementSettings,
    McpSettings,
    RedisSettings,
    Secret,
    Settings,
    StiggSettings,
)
from sidecar.emulator import EmulatorServer, load_catalog
from sidecar.redis_connect import RedisClient, connect
from tests import redis_servers

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "config" / "catalog.yaml"
API_KEY = "test-api-key-0123456789"


free_port = redis_servers.free_port


@pytest.fixture
def null_for_missing() -> bool:
    """Whether the emulator answers an unknown customer's lookup with null instead of
    CustomerNotFound (Stigg may do either); modules and tests parametrize it."""
    return False


@pytest.fixture
async def emulator(null_for_missing: bool) -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer(load_catalog(CATALOG), API_KEY)
    server.emulator.null_for_missing = null_for_missing
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def sidecar_settings(api_url: str, **stigg: object) -> Settings:
    """Settings for a sidecar talking to ``api_url``, with short timeouts for tests."""
    base = StiggSettings(
        api_url=api_url,
        read_timeout_seconds=1.0,
        connect_timeout_seconds=0.5,
        retry_backoff_seconds=0.01,
        retry_backoff_max_seconds=0.05,
        breaker_cooldown_seconds=0.2,
    )
    # MCP is on by default on a fixed port; tests that want it pick a free port (test_mcp.py).
    return Settings(
        stigg=replace(base, **stigg),
        api_key=Secret(API_KEY),
        mcp=McpSettings(enabled=False),
        # The management port on an ephemeral loopback port: every test app serves it.
        management=ManagementSettings(host="127.0.0.1", port=0),
        # gRPC too: every test app serves it on an ephemeral port (its default is fixed).
        grpc=GrpcSettings(port=0),
        data_dir=temporary_data_dir(),
    )


_DATA_ROOT: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _data_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Data directories live under pytest's own temporary directory (pytest prunes it)."""
    _DATA_ROOT.append(tmp_path_factory.mktemp("data"))


def temporary_data_dir() -> Path:
    """A fresh data directory (usage spool) under the run's temporary directory."""
    return Path(tempfile.mkdtemp(prefix="stigg-sidecar-test-", dir=_DATA_ROOT[-1]))


async def start_sidecar(settings: Settings) -> TestClient[web.Request, web.Application]:
    """The sidecar app on a real loopback socket, and a client for it."""
    client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def sidecar(
    emulator: EmulatorServer,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = await start_sidecar(sidecar_settings(emulator.url))
    try:
        yield client
    finally:
        await client.close()


def unavailable(message: str) -> None:
    """Skip a test whose Redis deployment this machine cannot run; under CI, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class RedisTarget:
    """One way of running Redis, as the sidecar is told to reach it."""

    mode: str
    url: str
    redis: RedisSettings = field(default_factory=RedisSettings)
    username: Secret | None = None
    password: Secret | None = None

    def client(self) -> RedisClient:
        return connect(self.url, self.redis, username=self.username, password=self.password)

    def configure(self, settings: Settings) -> Settings:
        """``settings`` with Redis reached this way."""
        return replace(
            settings,
            redis_url=Secret(self.url),
            redis=self.redis,
            redis_username=self.username,
            redis_password=self.password,
        )


@pytest.fixture(scope="session")
def redis_deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_servers.Servers]:
    """Where the Cluster, Sentinel and TLS deployments run; all killed at the end."""
    if shutil.which("redis-server") is None:
        unavailable(
            "redis-server is not installed: install it (Debian/Ubuntu: "
            "'sudo apt-get install redis-server', macOS: 'brew install redis') to run "
            "the integration tests that need Redis"
        )
    servers = redis_servers.Servers(tmp_path_factory.mktemp("redis"))
    try:
        yield servers
    finally:
        servers.stop()


def _deploy(build: Callable[[], RedisTarget]) -> RedisTarget:
    try:
        return build()
    except redis_servers.Unsupported as exc:
        unavailable(f"skipping: {exc}")
        raise


@pytest.fixture(scope="session")
def redis_cluster(redis_deployments: redis_servers.Servers) -> RedisTarget:
    """A 3-primary Cluster, reached through one seed node (started once, for the session)."""

    def build() -> RedisTarget:
        ports = redis_servers.start_cluster(redis_deployments)
        return RedisTarget("cluster", f"redis://127.0.0.1:{ports[0]}", RedisSettings(cluster=True))

    return _deploy(build)


@pytest.fixture(scope="session")
def redis_sentinel(redis_deployments: redis_servers.Servers) -> RedisTarget:
    """A primary and a replica behind 3 sentinels."""
    return _deploy(
        lambda: RedisTarget("sentinel", redis_servers.start_sentinels(redis_deployments).url)
    )


@pytest.fixture(scope="session")
def redis_tls(redis_deployments: redis_servers.Servers) -> RedisTarget:
    """TLS only, client certificate required, default user off, one ACL user."""

    def build() -> RedisTarget:
        port, files = redis_servers.start_tls(redis_deployments)
        return RedisTarget(
            "tls",
            f"rediss://127.0.0.1:{port}/0",
            RedisSettings(
                ca_file=str(files.ca),
                cert_file=str(files.client_cert),
                key_file=str(files.client_key),
            ),
            username=Secret(redis_servers.ACL_USER),
            password=Secret(redis_servers.ACL_PASSWORD),
        )

    return _deploy(build)


@pytest.fixture(params=["standalone", "cluster", "sentinel", "tls"])
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """Every way the sidecar can reach Redis, one test run each."""
    if request.param == "standalone":
        return RedisTarget("standalone", request.getfixturevalue("redis_server"))
    target: RedisTarget = request.getfixturevalue(f"redis_{request.param}")
    return target


@pytest.fixture(scope="session")
def redis_server(redis_deployments: redis_servers.Servers) -> str:
    """A private redis-server on a free loopback port; its URL. Stopped at the end."""
    port = free_port()
    redis_deployments.start(f"standalone-{port}", f"port {port}\nprotected-mode yes\n")
    redis_servers.wait_for(f"redis-server on 127.0.0.1:{port}", redis_servers.pings(port))
    return f"redis://127.0.0.1:{port}/0"
