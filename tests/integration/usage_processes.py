"""Real processes for the usage pipeline's tests: the emulator, sidecars, a restartable Redis."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sidecar.upstream import documents
from tests.conftest import API_KEY, CATALOG, REPO, free_port
from tests.eventually import eventually_blocking


class EmulatorProcess:
    """``python -m sidecar.emulator`` on a free port."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar.emulator",
                "--catalog",
                str(CATALOG),
                "--api-key",
                API_KEY,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        assert self.url.endswith("/graphql"), self.url
        self.base = self.url.removesuffix("/graphql")
        self.http = httpx.Client(base_url=self.base, timeout=10)

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def usage(self, customer_id: str, feature_id: str = "feature-api-calls") -> float:
        answer = self.admin(
            "GET", "/admin/usage", params={"customerId": customer_id, "featureId": feature_id}
        )
        return float(answer["currentUsage"])

    def counters(self) -> dict[str, Any]:
        return self.admin("GET", "/admin/counters")  # type: ignore[no-any-return]

    def provision(self, customer_id: str) -> None:
        response = self.http.post(
            "/graphql",
            headers={"X-API-KEY": API_KEY},
            json={
                "query": documents.PROVISION_CUSTOMER.document,
                "variables": {
                    "input": {
                        "customerId": customer_id,
                        "subscriptionParams": {"planId": "plan-pro"},
                    }
                },
            },
        )
        assert "errors" not in response.json(), response.text

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def emulator_process() -> Iterator[EmulatorProcess]:
    emulator = EmulatorProcess()
    try:
        yield emulator
    finally:
        emulator.stop()


def sidecar_env(emulator: EmulatorProcess, data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STIGG_", "SIDECAR_"))}
    env.update(
        {
            "STIGG_API_URL": emulator.url,
            "STIGG_API_KEY": API_KEY,
            "SIDECAR_DATA_DIR": str(data_dir),
            "SIDECAR_LOGGING_LEVEL": "WARNING",
            # Several sidecars run at once: none of them needs the MCP port.
            "SIDECAR_MCP_ENABLED": "false",
            "SIDECAR_MANAGEMENT_ENABLED": "false",
            "SIDECAR_GRPC_ENABLED": "false",
            "SIDECAR_STIGG_READ_TIMEOUT_SECONDS": "2",
            "SIDECAR_USAGE_RETRY_BACKOFF_SECONDS": "0.02",
            "SIDECAR_USAGE_RETRY_BACKOFF_MAX_SECONDS": "0.2",
        }
    )
    env.update(settings)
    return env


class SidecarProcess:
    """``python -m sidecar`` on a free port, ready when it answers."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = (
            Path(env["SIDECAR_DATA_DIR"]).parent / f"sidecar-{self.port}-{time.time_ns()}.log"
        )
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--port", str(self.port)],
            env=env,
            cwd=REPO,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.base, timeout=10)
        try:
            eventually_blocking(self._ready, 30, f"sidecar on port {self.port} did not start")
        except BaseException:
            self.close()  # never leave a half-started sidecar running after the test
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"sidecar exited early:\n{self.log.read_text()}")
        try:
            return self.http.get("/v1/usage/stats").status_code == 200
        except httpx.TransportError:
            return False

    def stats(self) -> dict[str, Any]:
        return self.http.get("/v1/usage/stats").json()  # type: ignore[no-any-return]

    def drained(self) -> bool:
        spooled = self.stats()["spooled"]
        return spooled.get("reports") == 0 and spooled.get("openBatches") == 0

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.close()

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.close()
        return code

    def close(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


class RedisProcess:
    """A redis-server with an append-only file fsynced on every write, restartable in place."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        eventually_blocking(pong, 10, f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
