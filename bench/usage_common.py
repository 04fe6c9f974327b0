"""Processes for the usage benchmarks: the emulator, a sidecar, optionally a Redis.

Reuses the integration tests' process helpers; every address is loopback and every run is
bounded in time.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port
from tests.eventually import eventually_blocking
from tests.integration.usage_processes import (
    EmulatorProcess,
    SidecarProcess,
    emulator_process,
    sidecar_env,
)

SPOOLS = ("sqlite", "sqlite-normal", "redis")


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A private redis-server with the common production persistence (AOF, fsync every second)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def stack(spool: str, **settings: str) -> Iterator[tuple[EmulatorProcess, SidecarProcess]]:
    """Emulator + sidecar (with ``spool``) in their own processes, torn down afterwards."""
    with tempfile.TemporaryDirectory(prefix="usage-bench-") as temp, emulator_process() as emu:
        directory = Path(temp)
        extra = {"SIDECAR_LOGGING_LEVEL": "ERROR", **settings}
        if spool == "sqlite-normal":
            extra["SIDECAR_USAGE_SQLITE_SYNCHRONOUS"] = "NORMAL"
        with redis_server(directory) if spool == "redis" else _none() as url:
            if url:
                extra["SIDECAR_REDIS_URL"] = url
            sidecar = SidecarProcess(sidecar_env(emu, directory / "data", **extra))
            try:
                yield emu, sidecar
            finally:
                sidecar.terminate(timeout=60)


@contextmanager
def _none() -> Iterator[str]:
    yield ""


def drain(sidecar: SidecarProcess, seconds: float = 300) -> None:
    eventually_blocking(sidecar.drained, seconds, "the spool did not drain", interval=0.1)
