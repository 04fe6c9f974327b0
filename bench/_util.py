"""Shared helpers for the benchmark scripts: processes on loopback, wrk and h2load runs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
API_KEY = "bench-api-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def pinned(cpu: int, command: list[str]) -> list[str]:
    """Run on one core when taskset exists, so client and server do not fight for it."""
    return ["taskset", "-c", str(cpu), *command] if shutil.which("taskset") else command


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: a per-request cost that, unlike req/s,
    does not count the CPU other processes take (a busier host still slows it down)."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU time from a ``/proc`` ``stat`` file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def process(
    command: list[str],
    ready_url: str,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("STIGG_", "SIDECAR_"))}
    full_env.update(env or {})
    proc = subprocess.Popen(
        command, env=full_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(ready_url, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def emulator(cpu: int = 0) -> Iterator[str]:
    """The emulator in its own process; yields its base URL."""
    port = free_port()
    command = pinned(
        cpu,
        [
            sys.executable,
            "-m",
            "sidecar.emulator",
            "--catalog",
            "config/catalog.yaml",
            "--api-key",
            API_KEY,
            "--port",
            str(port),
        ],
    )
    with process(command, f"http://127.0.0.1:{port}/healthz"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def sidecar(
    stigg_url: str | None = None,
    *,
    cpu: int = 1,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """The sidecar in its own process (``--local`` unless ``stigg_url``); yields its base URL."""
    port = free_port()
    # Benchmarks may run several sidecars: none needs the MCP or management port.
    settings = {
        "SIDECAR_MCP_ENABLED": "false",
        "SIDECAR_MANAGEMENT_ENABLED": "false",
        "SIDECAR_GRPC_ENABLED": "false",
        **(env or {}),
    }
    args = [sys.executable, "-m", "sidecar", "--port", str(port)]
    if stigg_url is None:
        args.append("--local")
    else:
        settings.update(STIGG_API_URL=f"{stigg_url}/graphql", STIGG_API_KEY=API_KEY)
    url = f"http://127.0.0.1:{port}"
    with process(pinned(cpu, args), f"{url}/openapi.json", settings) as proc:
        SIDECAR_PIDS[url] = proc.pid
        yield url


SIDECAR_PIDS: dict[str, int] = {}


def wrk(
    url: str,
    *,
    seconds: int = 10,
    connections: int = 16,
    cpu: int = 0,
    server_pid: int | None = None,
    script: Path | None = None,
) -> dict[str, float]:
    """Closed-loop throughput over keep-alive connections: req/s, p50 and p99 in ms, and with
    ``server_pid`` the server's CPU microseconds per request; ``script``: a wrk Lua script
    (a POST body, say)."""
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(
        pinned(cpu, [*command, url]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, flags=re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    result = {"rps": rps, "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"])}
    if server_pid:
        result["cpu_us"] = (cpu_seconds(server_pid) - cpu_before) / requests * 1e6
    return result


def _ms(text: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def h2load_fixed_rate(
    url: str, *, rate: int, seconds: int, clients: int = 2, cpu: int = 0
) -> dict[str, float]:
    """Open-loop: ``rate`` requests/s spread over ``clients`` keep-alive HTTP/1.1 connections;
    percentiles from h2load's per-request log. h2load's clients fire in step, so many clients
    measure their own burst queueing (10 clients: p50 0.9 ms even on a bare handler); 2 do not."""
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        subprocess.run(
            pinned(
                cpu,
                [
                    "h2load",
                    "--h1",
                    "-c",
                    str(clients),
                    "--rps",
                    str(rate // clients),
                    "-n",
                    str(rate * seconds),
                    "--log-file",
                    log.name,
                    url,
                ],
            ),
            capture_output=True,
            text=True,
            check=True,
        )
        durations = [
            int(line.split()[2]) / 1000.0
            for line in Path(log.name).read_text().splitlines()
            if line.strip()
        ]
    return {
        "requests": len(durations),
        "p50_ms": percentile(durations, 50),
        "p99_ms": percentile(durations, 99),
        "max_ms": max(durations),
    }


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed), as a request body for h2load."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load_post(
    url: str,
    body: bytes,
    *,
    headers: Sequence[str] = GRPC_HEADERS,
    h1: bool = False,
    seconds: int = 10,
    clients: int = 16,
    cpu: int = 0,
    server_pid: int | None = None,
) -> dict[str, float]:
    """Closed-loop POSTs of a fixed ``body`` (``clients`` connections, one request each at a
    time; h2c unless ``h1``): req/s, p50/p99 in ms, requests done and, with ``server_pid``, the
    server's CPU us/req. gRPC errors travel in trailers under HTTP 200, which h2load counts as
    success: callers check a call's answer before and the server's own counters after."""
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    with (
        tempfile.NamedTemporaryFile(suffix=".bin") as data,
        tempfile.NamedTemporaryFile(suffix=".log") as log,
    ):
        Path(data.name).write_bytes(body)
        command = ["h2load", "-c", str(clients), "-m", "1", "-D", str(seconds), "-d", data.name]
        command += ["--h1"] if h1 else []
        for header in headers:
            command += ["-H", header]
        out = subprocess.run(
            pinned(cpu, [*command, "--log-file", log.name, url]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        durations = [
            int(line.split()[2]) / 1000.0
            for line in Path(log.name).read_text().splitlines()
            if line.strip()
        ]
    done = re.search(r"(\d+) succeeded, (\d+) failed", out)
    assert done is not None, out
    assert done.group(2) == "0", out
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    result = {
        "rps": rps,
        "p50_ms": percentile(durations, 50),
        "p99_ms": percentile(durations, 99),
        "requests": float(done.group(1)),
    }
    if server_pid:
        result["cpu_us"] = (cpu_seconds(server_pid) - cpu_before) / int(done.group(1)) * 1e6
    return result


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until something accepts TCP connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not open in {timeout} s")
