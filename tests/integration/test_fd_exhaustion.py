"""A flood of idle connections to the management and MCP ports, under a low open-file limit,
must not stop the API from answering checks nor the sidecar from fetching from Stigg
(issue 15, item 2)."""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port
from tests.eventually import eventually_blocking
from tests.integration.usage_processes import emulator_process, sidecar_env

NOFILE = 256
FLOOD = 400  # idle connections: more than the sidecar may hold open at all


def _lower_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@contextlib.contextmanager
def _idle_connections(port: int, count: int) -> Iterator[int]:
    """Open up to ``count`` connections that never send a byte; how many connected."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            with contextlib.suppress(OSError):
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
        yield len(sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_idle_flood_on_management_port_leaves_checks_and_fetches_answering(
    tmp_path: Path,
) -> None:
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= FLOOD + 100, "raise ulimit -n"
    with emulator_process() as emulator:
        api_port, management_port, mcp_port = free_port(), free_port(), free_port()
        env = sidecar_env(
            emulator,
            tmp_path / "data",
            SIDECAR_MANAGEMENT_ENABLED="true",
            SIDECAR_MANAGEMENT_HOST="127.0.0.1",
            SIDECAR_MANAGEMENT_PORT=str(management_port),
            SIDECAR_MCP_ENABLED="true",
            SIDECAR_MCP_PORT=str(mcp_port),
        )
        log = (tmp_path / "sidecar.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--port", str(api_port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_lower_nofile,
        )
        base = f"http://127.0.0.1:{api_port}"
        try:
            eventually_blocking(
                lambda: _answers(base + "/v1/usage/stats"), 30, "sidecar did not start"
            )
            with (
                _idle_connections(management_port, FLOOD) as connected,
                _idle_connections(mcp_port, FLOOD) as connected_mcp,
            ):
                time.sleep(1.0)  # let the sidecar accept what it will
                answered = 0
                failures: list[str] = []
                for n in range(20):
                    # A fresh connection each time (the API must still accept), and a customer
                    # never seen before (the sidecar must still reach Stigg).
                    try:
                        response = httpx.get(
                            base + "/v1/entitlements",
                            params={"customerId": f"flood-{n}", "featureId": "feature-sso"},
                            timeout=5,
                        )
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if response.status_code == 200 and response.json()["isFallback"] is False:
                        answered += 1
                    else:
                        failures.append(response.text)
                usage_status = 0
                with contextlib.suppress(httpx.HTTPError):
                    usage_status = httpx.post(
                        base + "/v1/usage",
                        json={"customerId": "c", "featureId": "feature-api-calls", "value": 1},
                        timeout=5,
                    ).status_code
            assert connected > 0
            assert connected_mcp > 0
            assert answered == 20, (
                f"{answered} of 20 answered from Stigg: {failures[:2]}\n" + log_text(tmp_path)
            )
            assert usage_status == 202
            # Once the flood is gone the management port answers again.
            eventually_blocking(
                lambda: _answers(f"http://127.0.0.1:{management_port}/livez"),
                15,
                "management port did not recover",
            )
            assert process.poll() is None
        finally:
            process.kill()
            process.wait()
            log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "sidecar.log").read_text()[-3000:]


API_CAP = 64


def test_idle_flood_on_api_port_is_capped_and_leaves_other_ports_and_fetches_working(
    tmp_path: Path,
) -> None:
    """More idle connections to the API than ``server.maxConnections``: the extra ones are
    refused with 503 at once, while the management port, MCP (checking a customer never seen,
    so fetching from Stigg) and gRPC keep answering; the API answers again once the flood ends."""
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= FLOOD + 100, "raise ulimit -n"
    with emulator_process() as emulator:
        api_port, management_port, mcp_port = free_port(), free_port(), free_port()
        env = sidecar_env(
            emulator,
            tmp_path / "data",
            SIDECAR_SERVER_MAX_CONNECTIONS=str(API_CAP),
            SIDECAR_MANAGEMENT_ENABLED="true",
            SIDECAR_MANAGEMENT_HOST="127.0.0.1",
            SIDECAR_MANAGEMENT_PORT=str(management_port),
            SIDECAR_MCP_ENABLED="true",
            SIDECAR_MCP_PORT=str(mcp_port),
        )
        log = (tmp_path / "sidecar.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--port", str(api_port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_lower_nofile,
        )
        base = f"http://127.0.0.1:{api_port}"
        try:
            eventually_blocking(
                lambda: _answers(base + "/v1/usage/stats"), 30, "sidecar did not start"
            )
            with _idle_connections(api_port, FLOOD) as connected:
                time.sleep(1.0)  # let the sidecar accept (and refuse) what it will
                refused = _first_bytes(api_port)
                management = httpx.get(f"http://127.0.0.1:{management_port}/livez", timeout=5)
                checks = [_mcp_check(mcp_port, f"api-flood-{n}") for n in range(5)]
            assert connected > API_CAP
            assert refused.startswith(b"HTTP/1.1 503 "), log_text(tmp_path)
            assert b'"code":"too_many_connections"' in refused
            assert management.status_code == 200
            # Customers never seen: Stigg was asked and answered (no fallback).
            assert checks == [False] * 5, log_text(tmp_path)
            # Once the flood is gone the API answers again.
            eventually_blocking(
                lambda: _answers(base + "/v1/usage/stats"), 15, "API port did not recover"
            )
            assert process.poll() is None
            assert "API port: refused a connection" in log_text(tmp_path)
        finally:
            process.kill()
            process.wait()
            log.close()


def _mcp_check(port: int, customer_id: str) -> object:
    """``isFallback`` of the MCP ``check-entitlement`` tool for ``customer_id``."""
    response = httpx.post(
        f"http://127.0.0.1:{port}/mcp",
        headers={"Accept": "application/json, text/event-stream"},
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "check-entitlement",
                "arguments": {"customerId": customer_id, "featureId": "feature-sso"},
            },
        },
        timeout=10,
    )
    return response.json()["result"]["structuredContent"]["isFallback"]


def _first_bytes(port: int) -> bytes:
    """What the server says on a new connection before the client sends anything."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received
