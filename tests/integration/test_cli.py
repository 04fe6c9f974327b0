"""The command line as a newcomer uses it: real subprocesses, sockets and README examples."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, free_port

README = REPO / "README.md"


def sidecar_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STIGG_", "SIDECAR_"))}
    # The MCP server would take the fixed port 9090, which another sidecar may hold.
    env["SIDECAR_MCP_PORT"] = str(free_port())
    env["SIDECAR_MANAGEMENT_PORT"] = str(free_port())
    env["SIDECAR_GRPC_PORT"] = str(free_port())
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=env or sidecar_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_until_serving(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"sidecar exited early: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("sidecar did not start serving within 30 s")


@pytest.fixture
def local_sidecar() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--local", "--port", str(port)],
        env=sidecar_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base + "/openapi.json", process)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_refuses_to_start_without_api_key_or_local() -> None:
    result = run_cli()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "STIGG_API_KEY" in lines[0]
    assert "--local" in lines[0]


def test_bad_config_stops_startup_with_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  port: eighty\n")
    result = run_cli("--config", str(config), env=sidecar_env(STIGG_API_KEY="k-1234567890"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "stigg-sidecar: configuration error: server.port: expected an integer, got 'eighty'"
    ]
    assert "k-1234567890" not in result.stderr + result.stdout


def test_bad_catalog_stops_startup(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("features: 3\n")
    result = run_cli("--local", str(catalog))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(catalog) in result.stderr


def test_local_serves_and_stops_cleanly_on_sigterm(
    local_sidecar: tuple[str, subprocess.Popen[str]],
) -> None:
    base, process = local_sidecar
    answer = httpx.get(
        f"{base}/v1/entitlements",
        params={"customerId": "customer-demo", "featureId": "feature-sso"},
    )
    assert answer.status_code == 200
    assert answer.json()["hasAccess"] is True
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def readme_examples() -> list[tuple[str, Any]]:
    """Each ``curl`` line of the README's "Try it" section with the JSON its ``# →`` promises."""
    section = README.read_text().split("## Try it", 1)[1].split("\n## ", 1)[0]
    examples: list[tuple[str, Any]] = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.startswith("curl "):
                examples.append((line, None))
            elif line.startswith("# → "):
                examples[-1] = (examples[-1][0], json.loads(line[len("# → ") :]))
    return examples


def contains(actual: Any, expected: Any) -> bool:
    """``expected`` is ``actual`` with some object keys left out."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and contains(actual[key], value) for key, value in expected.items()
        )
    if isinstance(expected, str) and isinstance(actual, str) and expected.endswith("…"):
        return actual.startswith(expected[:-1])
    return bool(actual == expected)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_answer_what_the_readme_says(
    local_sidecar: tuple[str, subprocess.Popen[str]],
) -> None:
    base, _ = local_sidecar
    examples = readme_examples()
    assert len(examples) >= 10
    routes = set()
    for command, expected in examples:
        assert "http://127.0.0.1:8080" in command
        args = shlex.split(command.replace("http://127.0.0.1:8080", base))
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, (command, result.stderr)
        answer = json.loads(result.stdout)
        assert expected is not None, f"README example without '# →' line: {command}"
        assert contains(answer, expected), (command, answer)
        path = re.search(r"http://127\.0\.0\.1:8080(/[^?' ]*)", command)
        assert path is not None
        routes.add(path.group(1))
    assert len(routes) >= 7  # every REST route and /graphql has an example


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    assert "uv run stigg-sidecar --local" in text
    assert "uv run pytest" in text
    ci = (REPO / ".ci" / "run").read_text()
    assert "uv run pytest" in ci


def test_taken_api_port_stops_startup_with_one_line_and_closes_what_started(
    tmp_path: Path,
) -> None:
    """The API port is bound last, after the spool, gRPC and the other listeners started: they
    are closed again (the spool's write-ahead log checkpointed away), not left to the exit."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = sidecar_env(
            STIGG_API_KEY="sk-test-not-a-real-key-0123456789",
            STIGG_API_URL=f"http://127.0.0.1:{free_port()}/graphql",
            SIDECAR_DATA_DIR=str(tmp_path),
        )
        result = run_cli("--port", str(port), env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("stigg-sidecar: cannot start: "), lines
    assert "address already in use" in lines[-1]
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert "usage-spool.sqlite3" in files
    assert "usage-spool.sqlite3-wal" not in files, files  # closed, not abandoned
