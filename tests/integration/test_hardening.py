"""Hardening found by an adversarial run (issue 15): hostile bodies, queries and tool calls get
a 4xx naming what is wrong, never a 500."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.api.json_limits import MAX_JSON_DEPTH
from sidecar.api.management import MANAGEMENT
from sidecar.config import Secret
from sidecar.emulator import EmulatorServer
from tests.conftest import sidecar_settings, start_sidecar

Client = TestClient[web.Request, web.Application]
WEBHOOK_SECRET = "hardening-webhook-secret"


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.fixture
async def hardened(emulator: EmulatorServer) -> AsyncIterator[Client]:
    settings = replace(sidecar_settings(emulator.url), webhook_secret=Secret(WEBHOOK_SECRET))
    client = await start_sidecar(settings)
    try:
        yield client
    finally:
        await client.close()


async def _post(client: Client, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    response = await client.post(
        path, data=body, headers={"Content-Type": "application/json", **headers}
    )
    return response.status, await response.json()


@pytest.mark.parametrize(
    ("path", "body_for"),
    [
        ("/webhooks/stigg", lambda inner: b'{"messageId":"m1","data":' + inner + b"}"),
        (
            "/graphql",
            lambda inner: (
                b'{"query":"query Q($v: JSON){ __typename }","variables":{"v":' + inner + b"}}"
            ),
        ),
        (
            "/v1/usage",
            lambda inner: b'{"customerId":"c","featureId":"f","value":1,"x":' + inner + b"}",
        ),
        ("/v1/customers", lambda inner: b'{"customerId":"c","metadata":' + inner + b"}"),
    ],
)
async def test_deeply_nested_json_is_400_naming_the_limit(
    hardened: Client, path: str, body_for: Any
) -> None:
    # 1,000 levels: under orjson's own limit, so it parses; it must not reach a recursive walk.
    status, body = await _post(
        hardened, path, body_for(nested(1000)), **{"Stigg-Webhooks-Secret": WEBHOOK_SECRET}
    )
    assert status == 400, body
    assert body["error"]["code"] == "json_too_deep"
    assert str(MAX_JSON_DEPTH) in body["error"]["message"]


async def test_json_at_the_depth_limit_is_still_accepted(hardened: Client) -> None:
    # Exactly the limit: the webhook body itself is one level, 63 more inside it.
    body = b'{"messageId":"m2","data":' + nested(MAX_JSON_DEPTH - 1) + b"}"
    status, answer = await _post(
        hardened, "/webhooks/stigg", body, **{"Stigg-Webhooks-Secret": WEBHOOK_SECRET}
    )
    assert status == 200, answer


@pytest.mark.parametrize("after", ["\u00b9", "\u0663", "1-\u00b2", "12abc", "-1"])
async def test_dead_letter_cursor_that_is_not_an_ascii_id_is_400(
    hardened: Client, after: str
) -> None:
    response = await hardened.get("/v1/usage/dead-letters", params={"after": after})
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["field"] == "after"


@pytest.mark.parametrize("bad_id", ["\u00b9", "\u0663\u0663", "7-\u00b2", "64661409875083808039"])
async def test_replaying_a_dead_letter_id_with_unicode_digits_is_400(
    hardened: Client, bad_id: str
) -> None:
    status, body = await _post(
        hardened, "/v1/usage/dead-letters", b'{"ids":["1","' + bad_id.encode() + b'"]}'
    )
    assert status == 400, body
    assert body["error"]["field"] == "ids[1]"


# --- low-level HTTP parse errors (items 6 and 9) -----------------------------------------------

HOSTILE_REQUESTS = {
    "bad request line": b"GET /v1/usage/stats HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "request line too long": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header too long": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    "invalid header character": b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad\x01: 1\r\n\r\n",
    "smuggling: content-length and chunked": (
        b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "smuggling: two content-lengths": (
        b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    ),
}


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send raw bytes; the status, headers, body, and whether the server closed the socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
        closed = await asyncio.wait_for(reader.read(1), 5) == b""
        return int(status_line.split()[1]), headers, body, closed
    finally:
        writer.close()


@pytest.mark.parametrize("case", sorted(HOSTILE_REQUESTS))
async def test_http_parse_errors_answer_json_and_close(hardened: Client, case: str) -> None:
    assert hardened.server.port is not None
    status, headers, body, closed = await _raw(hardened.server.port, HOSTILE_REQUESTS[case])
    assert status == 400
    assert headers["content-type"].startswith("application/json"), body
    assert orjson.loads(body)["error"]["code"] == "bad_http_request"
    assert closed  # a request the server could not parse never shares a connection


async def test_http_parse_errors_on_the_management_port_answer_json(hardened: Client) -> None:
    port = hardened.app[MANAGEMENT].port
    assert port is not None
    status, _, body, closed = await _raw(port, HOSTILE_REQUESTS["bad request line"])
    assert status == 400
    assert orjson.loads(body)["error"]["code"] == "bad_http_request"
    assert closed


async def test_http_parse_errors_are_logged_once_per_interval_without_traceback(
    hardened: Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert hardened.server.port is not None
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        await _raw(hardened.server.port, HOSTILE_REQUESTS["invalid header character"])
    assert not [r for r in caplog.records if r.name == "aiohttp.server"]
    # At most one line (none if another test logged this fault within the interval).
    ours = [r for r in caplog.records if r.name == "sidecar.http"]
    assert len(ours) <= 1, [r.getMessage() for r in ours]
    assert all(r.exc_info is None and "BadHttpMessage" in r.getMessage() for r in ours)


# --- passthrough failures and the checks' circuit breaker (item 3) ------------------------------


async def test_passthrough_5xx_does_not_deny_checks(
    hardened: Client, emulator: EmulatorServer
) -> None:
    # Stigg fails every passed-through `plans` query, and answers entitlement reads fine.
    fault = {"status": 500, "operations": ["plans"]}
    async with hardened.session.post(emulator.base_url + "/admin/faults", json=fault) as response:
        assert response.status == 200
    query = b'{"query":"query { plans { totalCount } }"}'
    answers = await asyncio.gather(
        *(_post(hardened, "/graphql", query) for _ in range(8)), return_exceptions=True
    )
    assert all(not isinstance(a, BaseException) and a[0] >= 500 for a in answers), answers
    # A customer nobody checked yet: the answer must come from Stigg, not the fallback.
    response = await hardened.get(
        "/v1/entitlements", params={"customerId": "customer-demo", "featureId": "feature-sso"}
    )
    check = await response.json()
    assert (check["hasAccess"], check["isFallback"]) == (True, False), check


# --- a restart with a cold cache while Stigg is slow (item 7) -----------------------------------

ENTITLED = [("customer-demo", "feature-sso"), ("customer-demo", "feature-api-calls")]


async def _check(client: Client, customer_id: str, feature_id: str) -> dict[str, Any]:
    response = await client.get(
        "/v1/entitlements", params={"customerId": customer_id, "featureId": feature_id}
    )
    assert response.status == 200
    return dict(await response.json())


async def test_restart_while_stigg_is_slow_answers_from_the_snapshot(
    emulator: EmulatorServer,
) -> None:
    settings = sidecar_settings(emulator.url)  # one data directory for both runs
    first = await start_sidecar(settings)
    try:
        for customer_id, feature_id in ENTITLED:
            assert (await _check(first, customer_id, feature_id))["hasAccess"] is True
    finally:
        await first.close()  # a clean stop writes the snapshot
    # Stigg answers, but far slower than a check's deadline.
    async with (
        aiohttp.ClientSession() as session,
        session.post(emulator.base_url + "/admin/faults", json={"latencyMs": 3000}) as set_fault,
    ):
        assert set_fault.status == 200
    second = await start_sidecar(settings)  # no Redis: L1 is all there is
    try:
        for customer_id, feature_id in ENTITLED:
            answer = await _check(second, customer_id, feature_id)
            assert (answer["hasAccess"], answer["isFallback"], answer["source"]) == (
                True,
                False,
                "stale",
            ), answer
    finally:
        await second.close()
