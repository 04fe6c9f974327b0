"""The SQLite spool on a full filesystem (a small tmpfs in a private mount namespace): new
reports get 503, what was accepted is still delivered and acknowledged, /readyz and a metric
say the disk is full, and the log holds counted lines, not a traceback per request."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.eventually import eventually_blocking
from tests.integration.usage_processes import emulator_process, sidecar_env

TMPFS_BYTES = 12 * 1024 * 1024  # the 8 MiB reserve, and room for a few thousand reports
FLOOD = 60_000
PER_REQUEST = 100


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {where}"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def test_disk_full_keeps_delivering_and_logs_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "spool"
    data_dir.mkdir()
    if not _can_mount_tmpfs(data_dir):
        pytest.skip("needs unshare -rm to mount a small tmpfs (unprivileged user namespaces)")
    with emulator_process() as emulator:
        api_port, management_port = free_port(), free_port()
        env = sidecar_env(
            emulator,
            data_dir,
            SIDECAR_MANAGEMENT_ENABLED="true",
            SIDECAR_MANAGEMENT_HOST="127.0.0.1",
            SIDECAR_MANAGEMENT_PORT=str(management_port),
        )
        # Stigg refuses usage for now: every accepted report stays on the disk.
        emulator.admin(
            "POST", "/admin/faults", json={"status": 503, "operations": ["reportUsageBulk"]}
        )
        before = emulator.usage("customer-demo")
        log_path = tmp_path / "sidecar.log"
        script = (
            f"mount -t tmpfs -o size={TMPFS_BYTES} tmpfs {data_dir} && "
            f"exec {sys.executable} -m sidecar --port {api_port}"
        )
        with log_path.open("w") as log:
            process = subprocess.Popen(
                ["unshare", "-rm", "sh", "-c", script],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
        management = httpx.Client(base_url=f"http://127.0.0.1:{management_port}", timeout=10)
        try:
            eventually_blocking(
                lambda: _answers(api, "/v1/usage/stats"), 30, "sidecar did not start"
            )
            accepted = refused = 0
            for _ in range(FLOOD // PER_REQUEST):
                body = [
                    {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1}
                ] * PER_REQUEST
                response = api.post("/v1/usage", json={"usages": body})
                if response.status_code == 202:
                    accepted += response.json()["accepted"]
                else:
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "spool_full"
                    refused += PER_REQUEST
            assert accepted > 0, refused
            assert refused > 0, accepted
            readyz = management.get("/readyz").json()
            assert readyz.get("usageSpool") == "diskFull", readyz
            assert "stigg_sidecar_usage_spool_full 1.0" in management.get("/metrics").text

            # Stigg is back; the disk is still full.
            emulator.admin("DELETE", "/admin/faults")
            started = time.monotonic()
            eventually_blocking(
                lambda: emulator.usage("customer-demo") - before >= accepted,
                60,
                f"{accepted} accepted reports were not all delivered",
                interval=0.2,
            )
            delivered_in = time.monotonic() - started
            eventually_blocking(
                lambda: api.get("/v1/usage/stats").json()["spooled"].get("reports") == 0,
                30,
                "delivered reports were not acknowledged (removed from the spool)",
            )
            assert emulator.usage("customer-demo") - before == accepted  # none twice
            text = log_path.read_text()
            assert "Traceback" not in text
            disk_full_lines = [line for line in text.splitlines() if "is full" in line]
            assert 1 <= len(disk_full_lines) <= 3, disk_full_lines
            print(
                f"accepted={accepted} refused={refused} delivered_in={delivered_in:.1f}s "
                f"log_lines={len(text.splitlines())} log_bytes={len(text)}"
            )
            assert process.poll() is None
        finally:
            api.close()
            management.close()
            process.kill()
            process.wait()


def _answers(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False
