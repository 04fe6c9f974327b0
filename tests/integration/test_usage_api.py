"""The usage routes over a real socket: bad input of every kind is a 4xx naming the field and
stores nothing; good input is 202 with ids and reaches the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.emulator import EmulatorServer

Client = TestClient[web.Request, web.Application]
USAGE = {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1}
EVENT = {"eventName": "upload", "customerId": "customer-demo"}


async def stats(client: Client) -> dict[str, Any]:
    response = await client.get("/v1/usage/stats")
    assert response.status == 200
    return await response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/usage", {**USAGE, "value": "1"}, "value"),
        ("/v1/usage", {**USAGE, "value": None}, "value"),
        ("/v1/usage", {**USAGE, "updateBehavior": "INCREMENT"}, "updateBehavior"),
        ("/v1/usage", {**USAGE, "timestamp": "2999-01-01T00:00:00Z"}, "timestamp"),
        ("/v1/usage", {**USAGE, "timestamp": "2026-01-01T00:00:00"}, "timestamp"),
        ("/v1/usage", {**USAGE, "idempotencyKey": ""}, "idempotencyKey"),
        ("/v1/usage", {**USAGE, "idempotencyKey": "k" * 256}, "idempotencyKey"),
        ("/v1/usage", {**USAGE, "dimensions": {"k": "v" * 1001}}, "dimensions.k"),
        ("/v1/usage", {**USAGE, "dimensions": {str(n): n for n in range(51)}}, "dimensions"),
        ("/v1/usage", {"usages": []}, "usages"),
        ("/v1/usage", {"usages": [USAGE] * 1001}, "usages"),
        (
            "/v1/usage",
            {"usages": [USAGE, USAGE, USAGE, {**USAGE, "value": "x"}]},
            "usages[3].value",
        ),
        ("/v1/usage", {"usages": [USAGE, {**USAGE, "featureId": ""}]}, "usages[1].featureId"),
        ("/v1/usage", {"usages": [USAGE], "usage": []}, "usage"),
        ("/v1/events", {"customerId": "customer-demo"}, "eventName"),
        ("/v1/events", {**EVENT, "resourceId": "bad id"}, "resourceId"),
        ("/v1/events", {**EVENT, "timestamp": "2999-01-01T00:00:00Z"}, "timestamp"),
        ("/v1/events", {"events": [EVENT, {**EVENT, "dimensions": []}]}, "events[1].dimensions"),
        ("/v1/events", {"events": [EVENT] * 1001}, "events"),
    ],
)
async def test_bad_reports_name_the_field_and_store_nothing(
    sidecar: Client, emulator: EmulatorServer, path: str, body: Any, field: str
) -> None:
    response = await sidecar.post(path, json=body)
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field)
    current = await stats(sidecar)
    assert current["spooled"]["reports"] == 0
    assert current["usage"]["accepted"] == current["events"]["accepted"] == 0
    assert emulator.state.counters.usages_applied == 0


async def test_non_finite_numbers_and_oversized_bodies_are_refused(sidecar: Client) -> None:
    for raw in (b'{"customerId": "c", "featureId": "f", "value": NaN}', b'{"value": 1e999}'):
        response = await sidecar.post("/v1/usage", data=raw)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"
    big = {"usages": [{**USAGE, "dimensions": {"pad": "x" * 1000}}] * 1000}
    response = await sidecar.post("/v1/usage", json=big)
    assert response.status == 413
    assert (await stats(sidecar))["spooled"]["reports"] == 0


async def test_a_batch_is_202_with_an_id_per_report(sidecar: Client) -> None:
    body = {
        "usages": [
            {**USAGE, "idempotencyKey": "batch-1"},
            USAGE,
            {**USAGE, "idempotencyKey": "batch-1"},
        ]
    }
    response = await sidecar.post("/v1/usage", json=body)
    assert response.status == 202
    answer = await response.json()
    assert (answer["accepted"], answer["duplicates"]) == (2, 1)
    assert [u["status"] for u in answer["usages"]] == ["accepted", "accepted", "duplicate"]
    assert answer["usages"][1]["id"].startswith("sidecar-")
    events = await sidecar.post("/v1/events", json={"events": [EVENT, EVENT]})
    assert events.status == 202
    assert (await events.json())["accepted"] == 2


async def test_dead_letter_routes_validate_their_input(sidecar: Client) -> None:
    for query, field in (("kind=usages", "kind"), ("limit=0", "limit"), ("page=2", "page")):
        response = await sidecar.get(f"/v1/usage/dead-letters?{query}")
        assert response.status == 400
        assert (await response.json())["error"]["field"] == field
    for body, field in (
        ({}, "ids"),
        ({"ids": [1]}, "ids[0]"),
        ({"ids": ["1"], "all": True}, "ids"),
    ):
        response = await sidecar.post("/v1/usage/dead-letters", json=body)
        assert response.status == 400
        assert (await response.json())["error"]["field"] == field
    response = await sidecar.post("/v1/usage/dead-letters", json={"all": True})
    assert (response.status, await response.json()) == (202, {"replayed": 0})
