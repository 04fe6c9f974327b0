"""JSON logs that never carry a secret; the bearer token; the Unix socket; the passthrough's
fixed destination."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import create_app
from sidecar.config import Secret, StiggSettings
from sidecar.emulator import EmulatorServer
from sidecar.logs import json_handler, register_secrets
from sidecar.upstream.client import StiggClient
from tests.conftest import API_KEY, REPO, free_port, sidecar_settings, start_sidecar
from tests.integration.test_cli import sidecar_env, wait_until_serving

Client = TestClient[web.Request, web.Application]
CHECK = "/v1/entitlements?customerId=customer-demo&featureId=feature-sso"
WEBHOOK_SECRET = "whsec-never-logged-4711"
AUTH_TOKEN = "bearer-never-logged-0815"
WRONG_KEY = "wrong-key-never-logged-42"
REDIS_PASSWORD = "redis-pw-never-logged-99"
SECRETS = (API_KEY, WEBHOOK_SECRET, AUTH_TOKEN, WRONG_KEY, REDIS_PASSWORD)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log line of the process at DEBUG, through the sidecar's own JSON handler."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret reached the log: {secret}"


# --- the redaction choke point -----------------------------------------------------------


def test_a_secret_is_redacted_in_message_args_exception_extra_and_headers(
    captured: io.StringIO,
) -> None:
    register_secrets(Secret(API_KEY), f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0")
    log = logging.getLogger("sidecar.test")
    log.info("key in the message: " + API_KEY)
    log.info("key in args: %s and %r", API_KEY, {"X-API-KEY": API_KEY})
    try:
        raise RuntimeError(f"failed with {API_KEY} and {REDIS_PASSWORD}")
    except RuntimeError:
        log.exception("boom")
    log.warning("extra", extra={"header": API_KEY, "url": f"redis://:{REDIS_PASSWORD}@h"})
    log.info("headers: Authorization: Bearer unregistered-token-1 x-api-key=unregistered-2")
    log.info('json: {"authorization": "Bearer unregistered-3"}')
    text = captured.getvalue()
    assert_no_secret(text)
    for leaked in ("unregistered-token-1", "unregistered-2", "unregistered-3"):
        assert leaked not in text
    records = lines(captured)
    assert len(records) == 6  # one JSON object per line, nothing dropped
    assert "***" in str(records[0]["message"])
    assert "RuntimeError" in str(records[2]["exception"])
    assert records[3]["header"] == "***"


# --- representative scenarios, every line at DEBUG ---------------------------------------


async def test_no_scenario_logs_a_secret(captured: io.StringIO, emulator: EmulatorServer) -> None:
    base = sidecar_settings(emulator.url, max_retries=1)
    settings = replace(
        base,
        webhook_secret=Secret(WEBHOOK_SECRET),
        redis_url=None,
        logging=replace(base.logging, access_log="all"),  # every request leaves a line
    )
    client = await start_sidecar(settings)
    try:
        headers = {"X-API-KEY": API_KEY, "Authorization": f"Bearer {AUTH_TOKEN}"}
        assert (await client.get(CHECK, headers=headers)).status == 200
        await client.get("/v1/customers/customer-demo")
        await client.get("/v1/customers/nobody")
        await client.post("/v1/customers", data=b"{not json")
        await client.post("/v1/usage", json={"usages": [{"customerId": API_KEY}]})
        await client.get("/no/such/route")
        await client.post("/graphql", json={"query": "{ __typename }"}, headers=headers)
        await client.post(
            "/webhooks/stigg",
            json={"messageId": "m1", "type": "x"},
            headers={"Stigg-Webhooks-Secret": "wrong-" + WEBHOOK_SECRET},
        )
        await client.post(
            "/webhooks/stigg",
            json={"messageId": "m2", "type": "x"},
            headers={"Stigg-Webhooks-Secret": WEBHOOK_SECRET},
        )
        async with httpx.AsyncClient() as http:
            for status in (500, 429):
                await http.post(f"{emulator.base_url}/admin/faults", json={"status": status})
                await client.get("/v1/customers/customer-demo")
                await client.get(CHECK.replace("customer-demo", "customer-other"))
            await http.delete(f"{emulator.base_url}/admin/faults")
    finally:
        await client.close()
    wrong = await start_sidecar(replace(settings, api_key=Secret(WRONG_KEY)))  # Stigg says 401
    try:
        assert (await wrong.get("/v1/customers/customer-demo")).status == 502
        await wrong.post("/graphql", json={"query": "{ __typename }"})
        await wrong.get(CHECK)
    finally:
        await wrong.close()
    text = captured.getvalue()
    assert text  # the scenarios did log
    assert_no_secret(text)
    records = lines(captured)
    access = [r for r in records if r["logger"] == "sidecar.access"]
    assert access, "no access log lines"
    first = access[0]
    assert {"requestId", "route", "status", "durationMs", "method", "path", "timestamp"} <= set(
        first
    )
    assert first["route"] == "/v1/entitlements"
    assert all(r["path"] not in ("/livez", "/readyz", "/metrics") for r in access)


def test_local_run_logs_json_without_secrets(tmp_path: Path) -> None:
    port = free_port()
    env = sidecar_env(
        SIDECAR_LOGGING_LEVEL="DEBUG",
        SIDECAR_AUTH_TOKEN=AUTH_TOKEN,
        SIDECAR_WEBHOOK_SECRET=WEBHOOK_SECRET,
        SIDECAR_DATA_DIR=str(tmp_path),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--local", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        api = f"http://127.0.0.1:{port}"
        wait_until_serving(api + "/openapi.json", process)
        auth = {"Authorization": f"Bearer {AUTH_TOKEN}"}
        assert httpx.get(api + CHECK, headers=auth).status_code == 200
        assert httpx.get(api + CHECK).status_code == 401
        httpx.post(api + "/graphql", json={"query": "{ __typename }"}, headers=auth)
        httpx.post(
            api + "/webhooks/stigg", json={}, headers={"Stigg-Webhooks-Secret": WEBHOOK_SECRET}
        )
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert stderr
    assert_no_secret(stderr)
    for line in stderr.splitlines():
        record = orjson.loads(line)  # one JSON object per line, nothing else
        assert {"timestamp", "level", "logger", "message"} <= set(record)


# --- request ids -------------------------------------------------------------------------


_SANE = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


async def test_request_id_is_echoed_or_minted(sidecar: Client) -> None:
    given = await sidecar.get(CHECK, headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    forged = await sidecar.get(CHECK, headers={"X-Request-Id": 'x" injected'})
    assert forged.headers["X-Request-Id"] != 'x" injected'
    minted = await sidecar.get("/no/such/route")
    other = await sidecar.get("/no/such/route")
    assert minted.headers["X-Request-Id"] != other.headers["X-Request-Id"]
    assert _SANE.fullmatch(minted.headers["X-Request-Id"])


# --- bearer token ------------------------------------------------------------------------


async def test_bearer_token_guards_the_api_but_not_webhooks_or_probes(
    emulator: EmulatorServer,
) -> None:
    from tests.integration.test_management import manage

    settings = replace(
        sidecar_settings(emulator.url),
        auth_token=Secret(AUTH_TOKEN),
        webhook_secret=Secret(WEBHOOK_SECRET),
    )
    client = await start_sidecar(settings)
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": AUTH_TOKEN}):
            response = await client.get(CHECK, headers=headers)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["error"]["code"] == "unauthorized"
        assert (await client.get("/openapi.json")).status == 401
        ok = await client.get(CHECK, headers={"Authorization": f"Bearer {AUTH_TOKEN}"})
        assert ok.status == 200
        ok = await client.get(CHECK, headers={"Authorization": f"bearer {AUTH_TOKEN}"})
        assert ok.status == 200
        webhook = await client.post(
            "/webhooks/stigg",
            json={"messageId": "m1", "type": "unknown"},
            headers={"Stigg-Webhooks-Secret": WEBHOOK_SECRET},
        )
        assert webhook.status != 401
        assert (await manage(client, "/livez"))[0] == 200
        assert (await manage(client, "/metrics"))[0] == 200
    finally:
        await client.close()


# --- Unix socket -------------------------------------------------------------------------


def test_api_on_a_unix_socket_replacing_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed process leaves behind
    port = free_port()
    env = sidecar_env(SIDECAR_SERVER_UNIX_SOCKET=str(path), SIDECAR_DATA_DIR=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--local", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/openapi.json", process)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://sidecar") as http:
            answer = http.get(CHECK)
        assert answer.status_code == 200
        assert answer.json()["hasAccess"] is True
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert not path.exists()  # removed on a clean stop


async def test_unix_socket_with_aiohttp_unix_connector(tmp_path: Path) -> None:
    from sidecar.__main__ import bind_unix_socket

    path = str(tmp_path / "api.sock")
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.SockSite(runner, bind_unix_socket(path))
    await site.start()
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session,
            session.get("http://sidecar/") as response,
        ):
            assert await response.json() == {"ok": True}
    finally:
        await runner.cleanup()


# --- the passthrough's destination -------------------------------------------------------


async def test_passthrough_only_reaches_the_configured_url() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host != "stigg.configured.example":
            return httpx.Response(500)
        # A redirect elsewhere must not be followed (with the key).
        return httpx.Response(302, headers={"Location": "http://evil.example/steal"})

    stigg = StiggSettings(api_url="https://stigg.configured.example/graphql", max_retries=0)
    upstream = StiggClient(stigg, Secret(API_KEY), transport=httpx.MockTransport(answer))
    settings = replace(sidecar_settings(stigg.api_url), stigg=stigg)
    client = TestClient(TestServer(create_app(settings, upstream=upstream), host="127.0.0.1"))
    await client.start_server()
    try:
        await client.post(
            "/graphql",
            json={"query": "{ __typename }"},
            headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        )
    finally:
        await client.close()
        await upstream.aclose()
    assert seen
    assert {str(r.url) for r in seen} == {"https://stigg.configured.example/graphql"}


async def test_default_access_log_keeps_errors_and_skips_fast_successes(
    captured: io.StringIO, sidecar: Client
) -> None:
    assert (await sidecar.get(CHECK)).status == 200
    assert (await sidecar.get("/v1/customers/nobody")).status == 404
    access = [r for r in lines(captured) if r["logger"] == "sidecar.access"]
    assert [(r["path"], r["status"]) for r in access] == [("/v1/customers/nobody", 404)]
