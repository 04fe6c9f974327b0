"""What the image does, without Docker: the Dockerfile's own `uv sync` command builds a
non-editable install from the .dockerignore'd build context into a fresh venv, its ENTRYPOINT
serves from a directory outside the repository, and its HEALTHCHECK command judges /livez."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.deploy.dockerfile import (
    Stage,
    build_context,
    exec_form,
    final_uv_sync,
    healthcheck,
    stages,
)

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "helm" / "stigg-sidecar" / "files" / "grafana-dashboard.json"


@dataclass
class Image:
    venv: Path
    env: dict[str, str]  # the runtime stage's environment, with paths moved into tmp
    runtime: Stage


@dataclass
class Running:
    image: Image
    api: str
    management_port: int
    process: subprocess.Popen[str]
    management_up: bool | None = None


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STIGG_", "SIDECAR_", "UV_", "VIRTUAL_ENV", "PYTHON"))
    }


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    build_context(context)
    build, runtime = stages()[0], stages()[-1]
    venv = root / "venv"
    env = clean_env()
    env.update(build.env())
    env.update(
        UV_PROJECT_ENVIRONMENT=str(venv),
        # The image's interpreter is python:3.11-slim's; here, the one running the tests.
        UV_PYTHON=sys.executable,
        # `uv sync --locked` already filled uv's cache; the image build must need nothing else.
        UV_OFFLINE="1",
    )
    command = final_uv_sync(build)
    # `uv run` names itself in $UV; otherwise the uv on PATH.
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to build the image's environment: install it (pip install uv)")
    result = subprocess.run(
        [uv, *command[1:]],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        "the Dockerfile's `uv sync` failed on its build context (run `uv sync --locked` "
        f"first to fill uv's cache):\n{result.stderr}"
    )
    run_env = clean_env()
    run_env.update(runtime.env())
    run_env["PATH"] = run_env["PATH"].replace(build.env()["UV_PROJECT_ENVIRONMENT"], str(venv))
    run_env["PATH"] = run_env["PATH"].replace("$PATH", os.environ.get("PATH", ""))
    data = root / "data"
    data.mkdir()
    run_env["SIDECAR_DATA_DIR"] = str(data)
    run_env["HOME"] = str(root / "nonexistent")  # the image's user has no home directory
    return Image(venv=venv, env=run_env, runtime=runtime)


@pytest.fixture(scope="module")
def running(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    [entrypoint] = image.runtime.all("ENTRYPOINT")
    command = exec_form(entrypoint)
    port, management_port = free_port(), free_port()
    env = dict(
        image.env,
        SIDECAR_MANAGEMENT_PORT=str(management_port),
        SIDECAR_MCP_PORT=str(free_port()),
        SIDECAR_GRPC_PORT=str(free_port()),
    )
    outside = tmp_path_factory.mktemp("cwd")  # no config/ here: the packaged catalog is used
    process = subprocess.Popen(
        [*command, "--local", "--port", str(port)],
        cwd=outside,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"the entrypoint exited early:\n{process.communicate()[1]}")
            try:
                httpx.get(api + "/openapi.json", timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("the entrypoint did not serve within 30 s")
                time.sleep(0.1)
        yield Running(image, api, management_port, process)
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=30)


def test_install_is_not_editable(image: Image, tmp_path: Path) -> None:
    python = image.venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-c", "import sidecar; print(sidecar.__file__)"],
        cwd=tmp_path,
        env=image.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    location = Path(result.stdout.strip()).resolve()
    assert location.is_relative_to(image.venv.resolve()), location
    for pth in image.venv.glob("lib/python*/site-packages/*.pth"):
        assert str(REPO) not in pth.read_text(), f"editable hook into the checkout: {pth}"


def test_entrypoint_serves_local_from_outside_the_repo(running: Running) -> None:
    answer = httpx.get(
        running.api + "/v1/entitlements",
        params={"customerId": "customer-demo", "featureId": "feature-sso"},
    )
    assert answer.status_code == 200
    assert answer.json()["hasAccess"] is True


def test_entrypoint_stops_cleanly_on_sigterm(image: Image, tmp_path: Path) -> None:
    [entrypoint] = image.runtime.all("ENTRYPOINT")
    port = free_port()
    process = subprocess.Popen(
        [*exec_form(entrypoint), "--local", "--port", str(port)],
        cwd=tmp_path,
        env=dict(image.env, SIDECAR_MCP_PORT=str(free_port()), SIDECAR_GRPC_PORT=str(free_port())),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=0.5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "did not serve within 30 s"
                time.sleep(0.1)
        process.terminate()  # what `docker stop` and the kubelet send
        assert process.wait(timeout=25) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


# --- HEALTHCHECK -------------------------------------------------------------------------


class _Livez(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/livez" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def livez_stub() -> Iterator[type[_Livez]]:
    handler = type("Handler", (_Livez,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.port = server.server_address[1]  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(image: Image, management_port: int) -> int:
    options, command = healthcheck(image.runtime)
    env = dict(
        image.env,
        SIDECAR_MANAGEMENT_PORT=str(management_port),
        SIDECAR_MCP_PORT=str(free_port()),
        SIDECAR_GRPC_PORT=str(free_port()),
    )
    result = subprocess.run(
        command,  # "python" resolves to the venv's, through the image's PATH
        env=env,
        capture_output=True,
        timeout=float(options["timeout"].removesuffix("s")) + 10,
        check=False,
    )
    return result.returncode


def test_healthcheck_command_judges_livez(image: Image, livez_stub: type[_Livez]) -> None:
    port = livez_stub.port  # type: ignore[attr-defined]
    assert run_healthcheck(image, port) == 0
    livez_stub.status = 503
    assert run_healthcheck(image, port) != 0
    assert run_healthcheck(image, free_port()) != 0  # nothing listening


def management_serves(running: Running, path: str) -> httpx.Response | None:
    """GET on the management port; None when the sidecar has none (waited for once)."""
    url = f"http://127.0.0.1:{running.management_port}{path}"
    # The API already answers, so a management port would be up by now, or nearly.
    deadline = time.monotonic() + (1.5 if running.management_up is None else 0)
    while True:
        try:
            response = httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                running.management_up = False
                return None
            time.sleep(0.1)
        else:
            running.management_up = True
            return response


def test_healthcheck_passes_against_the_installed_sidecar(running: Running) -> None:
    if management_serves(running, "/livez") is None:
        pytest.skip("the sidecar does not serve the management port yet (issue 5, part 1)")
    assert run_healthcheck(running.image, running.management_port) == 0


def exported_series(exposition: str) -> set[str]:
    """Series names a Prometheus text exposition offers, including metrics with no samples yet."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in suffixes.get(kind, [""]))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_grafana_dashboard_uses_only_exported_metrics(running: Running) -> None:
    response = management_serves(running, "/metrics")
    if response is None:
        pytest.skip("the sidecar does not serve the management port yet (issue 5, part 1)")
    assert response.status_code == 200
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for q in queries for name in re.findall(r"\bstigg_sidecar_\w+", q)}
    missing = used - exported_series(response.text)
    assert not missing, f"the dashboard queries metrics /metrics does not export: {missing}"
