"""``python -m sidecar.emulator`` in its own process, as crash tests use it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
KEY = "process-test-key"

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("null_for_missing", [False, True])
def test_standalone_emulator_prints_its_url_and_serves(null_for_missing: bool) -> None:
    flags = ["--null-for-missing"] if null_for_missing else []
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar.emulator",
            "--catalog",
            "config/catalog.yaml",
            "--api-key",
            KEY,
            *flags,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        assert url.endswith("/graphql")
        response = httpx.post(
            url,
            json={
                "query": 'query { entitlementsState(query: {customerId: "customer-free"}) '
                "{ entitlements { currentUsage feature { refId } } } }"
            },
            headers={"X-API-KEY": KEY},
        )
        entitlements = response.json()["data"]["entitlementsState"]["entitlements"]
        usage = {e["feature"]["refId"]: e["currentUsage"] for e in entitlements}
        assert usage["feature-api-calls"] == 999
        lookup = httpx.post(
            url,
            json={"query": 'query { getCustomerByRefId(input: {customerId: "nobody"}) { name } }'},
            headers={"X-API-KEY": KEY},
        ).json()
        assert lookup["data"] == {"getCustomerByRefId": None}
        assert ("errors" in lookup) is not null_for_missing
        assert httpx.post(url, json={"query": "{ x }"}).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    # The key is never echoed.
    assert KEY not in stderr


def test_bad_catalog_fails_with_one_line(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("features:\n  - id: f\n    type: STRING\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.emulator", "--catalog", str(catalog), "--api-key", KEY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().endswith("features[0].type: must be one of BOOLEAN, NUMBER, ENUM")
    assert result.stdout == ""
