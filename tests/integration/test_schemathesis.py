"""Schemathesis against the OpenAPI document of a running ``stigg-sidecar --local``: default
checks, bounded (about a minute), a fixed seed so a failure reproduces (see schemathesis.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.eventually import eventually_blocking

MAX_EXAMPLES = 60
SEED = 20261202


@pytest.mark.timeout(300)
def test_schemathesis_default_checks_pass(tmp_path: Path) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis is not None, "schemathesis is a dev dependency: uv sync"
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_DATA_DIR": str(tmp_path / "data"),
        "SIDECAR_MCP_ENABLED": "false",
        "SIDECAR_MANAGEMENT_ENABLED": "false",
        # Not the default 50051: another test run may hold it (it failed to start then).
        "SIDECAR_GRPC_PORT": str(free_port()),
        "SIDECAR_LOGGING_LEVEL": "WARNING",
    }
    log = (tmp_path / "sidecar.log").open("w")
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--local", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/openapi.json"
    try:
        eventually_blocking(lambda: _answers(url), 60, "sidecar --local did not start")
        run = subprocess.run(
            [
                schemathesis,
                "run",
                url,
                f"--max-examples={MAX_EXAMPLES}",
                f"--seed={SEED}",
                "--no-color",
            ],
            cwd=REPO,  # reads schemathesis.toml
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    finally:
        sidecar.kill()
        sidecar.wait()
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
