"""The emulator over real loopback sockets: Stigg's HTTP behaviour, faults, admin endpoints."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import graphql
import httpx
import pytest

from sidecar.emulator import EmulatorServer, load_catalog, resolvers
from sidecar.upstream import documents

REPO = Path(__file__).resolve().parents[2]
# Immutable, so one load serves every server of the module.
CATALOG = load_catalog(REPO / "config" / "catalog.yaml")
OFFICIAL = REPO.parent / "shared" / "stigg" / "operations"
KEY = "emulator-test-key"

ENTITLEMENTS = "query($q: FetchEntitlementsQuery!) { entitlementsState(query: $q) { accessDeniedReason entitlements { isGranted currentUsage usageLimit feature { refId } } } }"  # noqa: E501
REPORT = "mutation($i: ReportUsageInput!) { reportUsage(input: $i) { currentUsage } }"


@pytest.fixture
async def server() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(CATALOG, KEY, max_hang_seconds=5) as running:
        yield running


@pytest.fixture
async def http(server: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10, verify=False) as client:
        yield client


async def gql(
    http: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    key: str | None = KEY,
    operation_name: str | None = None,
) -> httpx.Response:
    headers = {"X-API-KEY": key} if key is not None else {}
    body: dict[str, Any] = {"query": query, "variables": variables}
    if operation_name:
        body["operationName"] = operation_name
    return await http.post("/graphql", json=body, headers=headers)


async def check(http: httpx.AsyncClient, customer_id: str = "customer-demo") -> httpx.Response:
    return await gql(http, ENTITLEMENTS, {"q": {"customerId": customer_id}})


async def counters(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/admin/counters")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def set_fault(http: httpx.AsyncClient, **config: Any) -> dict[str, Any]:
    response = await http.post("/admin/faults", json=config)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def one_error(response: httpx.Response) -> dict[str, Any]:
    errors = response.json()["errors"]
    assert len(errors) == 1
    error: dict[str, Any] = errors[0]
    return error


# --- the server itself ------------------------------------------------------------------------


async def test_urls_and_health(server: EmulatorServer, http: httpx.AsyncClient) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/graphql"
    assert server.base_url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0
    response = await http.get("/healthz")
    assert response.status_code == 200


def test_refuses_to_bind_beyond_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmulatorServer(CATALOG, KEY, host="0.0.0.0")


async def test_two_servers_are_independent() -> None:
    async with EmulatorServer(CATALOG, KEY) as one, EmulatorServer(CATALOG, KEY) as two:
        assert one.port != two.port
        one.state.report_usage(
            {"customerId": "customer-demo", "featureId": "feature-seats", "value": 1}
        )
        assert one.state.current_usage("customer-demo", "feature-seats", None) == 5
        assert two.state.current_usage("customer-demo", "feature-seats", None) == 4


async def test_stop_closes_the_port() -> None:
    server = EmulatorServer(CATALOG, KEY)
    await server.start()
    url = server.base_url
    await server.stop()
    async with httpx.AsyncClient(verify=False) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{url}/healthz")


async def test_unknown_paths_answer_json(http: httpx.AsyncClient) -> None:
    response = await http.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "http_error"
    response = await http.delete("/graphql")
    assert response.status_code == 405
    assert "errors" in response.json()
    response = await http.get("/graphql")  # the websocket endpoint, without an upgrade
    assert response.status_code == 400


# --- authentication and request errors --------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "wrong-key", KEY + "x"])
async def test_wrong_or_missing_key_is_401(http: httpx.AsyncClient, key: str | None) -> None:
    response = await gql(http, ENTITLEMENTS, {"q": {"customerId": "customer-demo"}}, key=key)
    assert response.status_code == 401
    assert response.json() == {
        "errors": [{"message": "Unauthorized", "extensions": {"code": "Unauthenticated"}}]
    }


async def test_malformed_bodies_are_400(http: httpx.AsyncClient) -> None:
    headers = {"X-API-KEY": KEY, "Content-Type": "application/json"}
    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"variables": {}}',
        b'{"query": "{ x }", "variables": 3}',
    ):
        response = await http.post("/graphql", content=body, headers=headers)
        assert response.status_code == 400, body
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_parse_failure_is_400(http: httpx.AsyncClient) -> None:
    response = await gql(http, "query { entitlementsState(")
    assert response.status_code == 400
    assert one_error(response)["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"


async def test_field_not_in_schema_is_400(http: httpx.AsyncClient) -> None:
    response = await gql(
        http, 'query { entitlementsState(query: {customerId: "c"}) { notAField } }'
    )
    assert response.status_code == 400
    error = one_error(response)
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "notAField" in error["message"]


async def test_variable_coercion_failure_is_400(http: httpx.AsyncClient) -> None:
    response = await gql(http, ENTITLEMENTS, {"q": {"customerId": 42}})
    assert response.status_code == 400
    assert one_error(response)["extensions"]["code"] == "BAD_USER_INPUT"
    assert (await counters(http))["calls"] == {}


async def test_operation_name_selects_and_is_checked(http: httpx.AsyncClient) -> None:
    document = (
        'query A { entitlementsState(query: {customerId: "customer-demo"}) { accessDeniedReason } }'
        ' query B { entitlementsState(query: {customerId: "x"}) { accessDeniedReason } }'
    )
    response = await gql(http, document, operation_name="B")
    assert response.json()["data"]["entitlementsState"]["accessDeniedReason"] == "CustomerNotFound"
    response = await gql(http, document)
    assert response.status_code == 400
    response = await gql(http, document, operation_name="C")
    assert response.status_code == 400


async def test_unsupported_root_field(http: httpx.AsyncClient) -> None:
    response = await gql(http, "query { coupons { totalCount } }")
    assert response.status_code == 200
    error = one_error(response)
    assert error["message"] == "coupons is not supported by the emulator"
    assert error["extensions"] == {"code": "Unsupported"}
    assert error["path"] == ["coupons"]


# --- business answers and errors --------------------------------------------------------------


async def test_entitlements_over_http(http: httpx.AsyncClient) -> None:
    response = await check(http)
    assert response.status_code == 200
    state = response.json()["data"]["entitlementsState"]
    assert state["accessDeniedReason"] is None
    calls = next(e for e in state["entitlements"] if e["feature"]["refId"] == "feature-api-calls")
    assert calls == {
        "isGranted": True,
        "currentUsage": 1200,
        "usageLimit": 100000,
        "feature": {"refId": "feature-api-calls"},
    }
    missing = (await check(http, "customer-nope")).json()
    assert missing == {
        "data": {
            "entitlementsState": {"accessDeniedReason": "CustomerNotFound", "entitlements": []}
        }
    }


async def test_business_error_is_200_with_stigg_code(http: httpx.AsyncClient) -> None:
    response = await gql(
        http,
        REPORT,
        {"i": {"customerId": "customer-nope", "featureId": "feature-seats", "value": 1}},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    [error] = body["errors"]
    assert error["path"] == ["reportUsage"]
    assert error["extensions"] == {"code": "CustomerNotFound", "isValidationError": True}


async def test_partial_data_when_one_field_fails(http: httpx.AsyncClient) -> None:
    document = (
        'query { getCustomerByRefId(input: {customerId: "customer-nope"}) { name }'
        ' entitlementsState(query: {customerId: "customer-free"}) { accessDeniedReason } }'
    )
    body = (await gql(http, document)).json()
    assert body["data"] == {
        "getCustomerByRefId": None,
        "entitlementsState": {"accessDeniedReason": None},
    }
    assert body["errors"][0]["extensions"]["code"] == "CustomerNotFound"


async def test_bulk_over_100_is_rejected_over_http(http: httpx.AsyncClient) -> None:
    usages = [{"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1}] * 101
    response = await gql(
        http,
        documents.REPORT_USAGE_BULK.document,
        {"input": {"usages": usages}},
    )
    assert response.status_code == 200
    assert one_error(response)["extensions"]["code"] == "InvalidArgumentError"
    usage = await http.get(
        "/admin/usage", params={"customerId": "customer-demo", "featureId": "feature-api-calls"}
    )
    assert usage.json()["currentUsage"] == 1200


async def test_sidecar_documents_execute(http: httpx.AsyncClient) -> None:
    """The documents the sidecar really sends, end to end, each with a meaningful answer."""

    async def run(operation: documents.Operation, variables: dict[str, Any]) -> Any:
        response = await gql(http, operation.document, variables)
        body = response.json()
        assert response.status_code == 200, body
        assert "errors" not in body, body
        return body["data"][operation.root_field]

    state = await run(documents.ENTITLEMENTS_STATE, {"query": {"customerId": "customer-demo"}})
    assert len(state["entitlements"]) == 6
    customer = await run(documents.GET_CUSTOMER, {"input": {"customerId": "customer-demo"}})
    assert customer["subscriptions"][0]["plan"]["refId"] == "plan-pro"
    provisioned = await run(
        documents.PROVISION_CUSTOMER,
        {"input": {"customerId": "c-http", "subscriptionParams": {"planId": "plan-free"}}},
    )
    assert provisioned["subscription"]["plan"]["refId"] == "plan-free"
    subscribed = await run(
        documents.PROVISION_SUBSCRIPTION,
        {"input": {"customerId": "c-http", "planId": "plan-pro", "resourceId": "r-1"}},
    )
    assert subscribed["subscription"]["resource"] == {"resourceId": "r-1"}
    canceled = await run(
        documents.CANCEL_SUBSCRIPTION,
        {"input": {"subscriptionRefId": subscribed["subscription"]["subscriptionId"]}},
    )
    assert canceled["status"] == "CANCELED"
    reported = await run(
        documents.REPORT_USAGE_BULK,
        {
            "input": {
                "usages": [{"customerId": "c-http", "featureId": "feature-api-calls", "value": 2}]
            }
        },
    )
    assert [m["currentUsage"] for m in reported] == [2]
    bulk = await run(
        documents.REPORT_USAGE_BULK,
        {
            "input": {
                "usages": [
                    {"customerId": "c-http", "featureId": "feature-api-calls", "value": 3},
                    {"customerId": "c-http", "featureId": "feature-seats", "value": 1},
                ]
            }
        },
    )
    assert [m["currentUsage"] for m in bulk] == [5, 1]
    event = {"eventName": "e", "customerId": "c-http", "idempotencyKey": "ev-1"}
    assert await run(documents.REPORT_EVENT, {"input": {"usageEvents": [event]}}) is None


# --- the official client's documents ----------------------------------------------------------


@pytest.fixture
def no_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a selected non-null field had to be filled with an empty placeholder."""
    original = resolvers._placeholder

    def strict(field_type: Any, schema: graphql.GraphQLSchema) -> Any:
        if graphql.is_non_null_type(field_type):
            raise AssertionError(f"non-null field of type {field_type} is not modelled")
        return original(field_type, schema)

    monkeypatch.setattr(resolvers, "_placeholder", strict)


def official(name: str) -> str:
    return (OFFICIAL / f"{name}.graphql").read_text(encoding="utf-8")


@pytest.mark.skipif(
    not OFFICIAL.is_dir(), reason="../shared/stigg/operations is not beside the repo"
)
@pytest.mark.usefixtures("no_placeholders")
async def test_official_client_documents_execute(http: httpx.AsyncClient) -> None:
    async def run(name: str, variables: dict[str, Any]) -> Any:
        document = official(name)
        assert graphql.validate(resolvers.stigg_schema(), graphql.parse(document)) == []
        response = await gql(http, document, variables)
        body = response.json()
        assert response.status_code == 200, body
        assert "errors" not in body, body
        [value] = body["data"].values()
        return value

    state = await run("GetEntitlementsState", {"query": {"customerId": "customer-demo"}})
    assert {e["feature"]["refId"] for e in state["entitlements"]} == {
        "feature-sso",
        "feature-api-calls",
        "feature-max-projects",
        "feature-seats",
        "feature-storage-gb",
        "feature-region",
    }
    assert {e["__typename"] for e in state["entitlementsV2"]} == {"FeatureEntitlement"}

    customer = await run("GetCustomerById", {"input": {"customerId": "customer-workspaces"}})
    assert customer["customerId"] == "customer-workspaces"
    assert {s["resource"]["resourceId"] for s in customer["subscriptions"]} == {
        "workspace-alpha",
        "workspace-beta",
    }
    plan = customer["subscriptions"][0]["plan"]
    assert plan["product"]["refId"] == "product-saas"
    assert {e["featureId"] for e in plan["entitlements"]} >= {"feature-api-calls"}

    provisioned = await run(
        "ProvisionCustomer",
        {
            "input": {
                "customerId": "c-official",
                "name": "Official",
                "subscriptionParams": {"planId": "plan-enterprise"},
            }
        },
    )
    assert provisioned["customer"]["customerId"] == "c-official"
    assert provisioned["subscription"]["plan"]["refId"] == "plan-enterprise"
    assert provisioned["subscriptionDecisionStrategy"] == "REQUESTED_PLAN"

    subscribed = await run(
        "ProvisionSubscription", {"input": {"customerId": "c-official", "planId": "plan-pro"}}
    )
    assert subscribed["status"] == "SUCCESS"
    canceled = await run(
        "CancelSubscription",
        {"input": {"subscriptionRefId": subscribed["subscription"]["subscriptionId"]}},
    )
    assert canceled["status"] == "CANCELED"

    bulk = await run(
        "ReportUsageBulk",
        {
            "input": {
                "usages": [
                    {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 5},
                    {"customerId": "customer-demo", "featureId": "feature-seats", "value": 1},
                ]
            }
        },
    )
    assert [(m["featureId"], m["currentUsage"]) for m in bulk] == [
        ("feature-api-calls", 1205),
        ("feature-seats", 5),
    ]
    single = await run(
        "ReportUsage",
        {"input": {"customerId": "customer-demo", "featureId": "feature-seats", "value": 1}},
    )
    assert single["currentUsage"] == 6
    event = {"eventName": "e", "customerId": "customer-demo", "idempotencyKey": "official-1"}
    assert await run("ReportEvent", {"input": {"usageEvents": [event]}}) is None


# --- faults -----------------------------------------------------------------------------------


async def test_latency_fault(http: httpx.AsyncClient) -> None:
    answer = await set_fault(http, latencyMs=300)
    assert answer["latencyMs"] == 300
    started = time.monotonic()
    response = await check(http)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert response.json()["data"]["entitlementsState"]["accessDeniedReason"] is None
    assert (await counters(http))["faultedRequests"] == 1


@pytest.mark.parametrize("status", [500, 503, 429, 401])
async def test_status_fault(http: httpx.AsyncClient, status: int) -> None:
    await set_fault(http, status=status)
    response = await check(http)
    assert response.status_code == status
    assert "Retry-After" not in response.headers
    if status >= 500:  # from the load balancer in front of Stigg: a page, not GraphQL
        assert response.headers["content-type"].startswith("text/html")
    else:
        expected = {429: "RateLimitExceeded", 401: "Unauthenticated"}[status]
        assert response.json()["errors"][0]["extensions"]["code"] == expected
    seen = await counters(http)
    assert seen["faultedRequests"] == 1
    # A faulted request never reaches execution.
    assert seen["calls"] == {}
    assert seen["requests"] == 1


async def test_times_limits_the_fault(http: httpx.AsyncClient) -> None:
    await set_fault(http, status=503, times=2)
    statuses = [(await check(http)).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert (await http.get("/admin/faults")).json() is None
    seen = await counters(http)
    assert (seen["faultedRequests"], seen["calls"]) == (2, {"entitlementsState": 2})


async def test_operations_filter(http: httpx.AsyncClient) -> None:
    answer = await set_fault(http, status=503, operations=["reportUsage", "reportUsageBulk"])
    assert answer["operations"] == ["reportUsage", "reportUsageBulk"]
    assert (await check(http)).status_code == 200
    response = await gql(
        http,
        REPORT,
        {"i": {"customerId": "customer-demo", "featureId": "feature-seats", "value": 1}},
    )
    assert response.status_code == 503
    usage = await http.get(
        "/admin/usage", params={"customerId": "customer-demo", "featureId": "feature-seats"}
    )
    assert usage.json()["currentUsage"] == 4


async def test_hang_is_released_by_clearing_faults(http: httpx.AsyncClient) -> None:
    await set_fault(http, hang=True, status=503)
    pending = asyncio.create_task(check(http))
    deadline = time.monotonic() + 2
    while (await counters(http))["faultedRequests"] < 1:
        assert time.monotonic() < deadline, "the request never reached the emulator"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert not pending.done()
    cleared = await http.delete("/admin/faults")
    assert cleared.status_code == 200
    response = await asyncio.wait_for(pending, timeout=2)
    # Released requests are executed normally, whatever status the fault had.
    assert response.status_code == 200
    assert (await counters(http))["calls"] == {"entitlementsState": 1}


async def test_clearing_during_latency_releases_the_coming_hang(http: httpx.AsyncClient) -> None:
    await set_fault(http, latencyMs=200, hang=True)
    pending = asyncio.create_task(check(http))
    await asyncio.sleep(0.05)
    await http.delete("/admin/faults")
    response = await asyncio.wait_for(pending, timeout=2)
    assert response.status_code == 200


async def test_hang_gives_up_after_the_cap() -> None:
    server = EmulatorServer(CATALOG, KEY, max_hang_seconds=0.2)
    async with server, httpx.AsyncClient(base_url=server.base_url, verify=False) as http:
        await set_fault(http, hang=True, status=503)
        started = time.monotonic()
        response = await check(http)
        assert 0.2 <= time.monotonic() - started < 2
        assert response.status_code == 503


async def test_stop_releases_hung_requests() -> None:
    server = EmulatorServer(CATALOG, KEY)
    await server.start()
    async with httpx.AsyncClient(base_url=server.base_url, verify=False) as http:
        await set_fault(http, hang=True)
        pending = asyncio.create_task(check(http))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 3
        response = await asyncio.wait_for(pending, timeout=3)
        assert response.status_code == 200


@pytest.mark.parametrize(
    "config",
    [
        {"latency": 10},
        {"status": 200},
        {"status": "503"},
        {"times": 0},
        {"hang": "yes"},
        {"operations": []},
        {"latencyMs": -1},
    ],
)
async def test_invalid_fault_config_is_400(http: httpx.AsyncClient, config: Any) -> None:
    response = await http.post("/admin/faults", json=config)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_fault"
    assert (await http.get("/admin/faults")).json() is None


async def test_a_new_fault_replaces_the_old_one(http: httpx.AsyncClient) -> None:
    await set_fault(http, status=503)
    await set_fault(http, status=429, operations=["reportUsage"])
    assert (await check(http)).status_code == 200


# --- counters and admin -----------------------------------------------------------------------


async def test_counters(http: httpx.AsyncClient) -> None:
    await check(http)
    bulk = documents.REPORT_USAGE_BULK.document
    usages = [
        {
            "customerId": "customer-demo",
            "featureId": "feature-api-calls",
            "value": 1,
            "idempotencyKey": f"k{i % 2}",
        }
        for i in range(3)
    ]
    await gql(http, bulk, {"input": {"usages": usages}})
    await gql(http, bulk, {"input": {"usages": usages[:1]}})
    events = [
        {"eventName": "e", "customerId": "customer-demo", "idempotencyKey": f"e{i}"}
        for i in range(4)
    ]
    await gql(http, documents.REPORT_EVENT.document, {"input": {"usageEvents": events}})
    await gql(http, documents.REPORT_EVENT.document, {"input": {"usageEvents": events[:2]}})
    await gql(http, "query { nope }")  # invalid: counted as a request, not a call
    assert await counters(http) == {
        "requests": 6,
        "calls": {"entitlementsState": 1, "reportUsageBulk": 2, "reportEvent": 2},
        "bulkSizes": [3, 1],
        "usagesApplied": 2,
        "duplicateKeys": 2,
        "eventsAccepted": 4,
        "duplicateEvents": 2,
        "eventBatchSizes": [4, 2],
        "faultedRequests": 0,
    }


async def test_admin_usage(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/admin/usage",
        params={
            "customerId": "customer-workspaces",
            "featureId": "feature-api-calls",
            "resourceId": "workspace-beta",
        },
    )
    assert response.json() == {
        "customerId": "customer-workspaces",
        "featureId": "feature-api-calls",
        "resourceId": "workspace-beta",
        "currentUsage": 20,
    }
    missing = await http.get(
        "/admin/usage", params={"customerId": "customer-nope", "featureId": "feature-seats"}
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "CustomerNotFound"
    incomplete = await http.get("/admin/usage", params={"customerId": "customer-demo"})
    assert incomplete.status_code == 400


async def test_reset(http: httpx.AsyncClient, server: EmulatorServer) -> None:
    await gql(
        http,
        REPORT,
        {"i": {"customerId": "customer-demo", "featureId": "feature-seats", "value": 9}},
    )
    await gql(
        http,
        documents.PROVISION_CUSTOMER.document,
        {"input": {"customerId": "c-gone"}},
    )
    await set_fault(http, status=503, operations=["getCustomerByRefId"])
    await http.post("/admin/clock", json={"advanceSeconds": 3600})
    response = await http.post("/admin/reset")
    assert response.status_code == 200
    assert server.state.customer("c-gone") is None
    assert server.state.current_usage("customer-demo", "feature-seats", None) == 4
    assert (await http.get("/admin/faults")).json() is None
    seen = await counters(http)
    assert (seen["requests"], seen["calls"], seen["usagesApplied"]) == (0, {}, 0)


async def test_clock_advance_resets_usage_periods(http: httpx.AsyncClient) -> None:
    before = (await http.get("/admin/clock")).json()["now"]
    assert before.endswith("Z")
    moved = await http.post("/admin/clock", json={"advanceSeconds": 32 * 86400})
    assert moved.status_code == 200
    assert moved.json()["now"] > before
    calls = await http.get(
        "/admin/usage", params={"customerId": "customer-demo", "featureId": "feature-api-calls"}
    )
    assert calls.json()["currentUsage"] == 0
    seats = await http.get(
        "/admin/usage", params={"customerId": "customer-demo", "featureId": "feature-seats"}
    )
    assert seats.json()["currentUsage"] == 4
    for bad in ({"advanceSeconds": -5}, {"advanceSeconds": "1"}, {}):
        response = await http.post("/admin/clock", json=bad)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_request"


async def test_document_cache_parses_each_query_once(http: httpx.AsyncClient) -> None:
    resolvers.prepare.cache_clear()
    for _ in range(3):
        await check(http)
    info = resolvers.prepare.cache_info()
    assert (info.misses, info.hits) == (1, 2)


# --- Stigg's error shapes and nullForMissing ---------------------------------------------------

GET_CUSTOMER = documents.GET_CUSTOMER.document


async def test_unknown_customer_is_an_error_or_null_with_null_for_missing(
    http: httpx.AsyncClient,
) -> None:
    variables = {"input": {"customerId": "customer-nope"}}
    body = (await gql(http, GET_CUSTOMER, variables)).json()
    assert body["data"] == {"getCustomerByRefId": None}  # nullable root: data beside the error
    assert one_error_of(body)["extensions"] == {
        "code": "CustomerNotFound",
        "isValidationError": True,
    }
    assert (await set_fault(http, nullForMissing=True))["nullForMissing"] is True
    body = (await gql(http, GET_CUSTOMER, variables)).json()
    assert body == {"data": {"getCustomerByRefId": None}}
    # Known customers and non-nullable roots are unchanged.
    known = (await gql(http, GET_CUSTOMER, {"input": {"customerId": "customer-demo"}})).json()
    assert known["data"]["getCustomerByRefId"]["customerId"] == "customer-demo"
    cancel = {"input": {"subscriptionRefId": "nope"}}
    body = (await gql(http, documents.CANCEL_SUBSCRIPTION.document, cancel)).json()
    assert body["data"] is None
    assert one_error_of(body)["extensions"]["code"] == "SubscriptionNotFound"


def one_error_of(body: dict[str, Any]) -> dict[str, Any]:
    [error] = body["errors"]
    assert isinstance(error, dict)
    return error


@pytest.mark.parametrize(
    ("document", "variables", "code"),
    [
        (
            documents.PROVISION_SUBSCRIPTION.document,
            {"input": {"customerId": "customer-demo", "planId": "plan-nope"}},
            "PlanNotFound",
        ),
        (
            documents.PROVISION_CUSTOMER.document,
            {"input": {"customerId": "customer-demo"}},
            "DuplicatedEntityNotAllowed",
        ),
        (
            documents.PROVISION_SUBSCRIPTION.document,
            {"input": {"customerId": "ghost", "planId": "plan-pro"}},
            "CustomerNotFound",
        ),
        (
            documents.PROVISION_SUBSCRIPTION.document,
            {"input": {"customerId": "customer-demo", "planId": "plan-pro", "startDate": "x"}},
            "BadUserInput",
        ),
    ],
)
async def test_business_errors_carry_code_and_validation_flag(
    http: httpx.AsyncClient, document: str, variables: dict[str, Any], code: str
) -> None:
    response = await gql(http, document, variables)
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None  # a non-null root failed
    error = one_error_of(body)
    assert error["extensions"] == {"code": code, "isValidationError": True}
    assert error["path"]


async def test_null_for_missing_must_be_a_boolean(http: httpx.AsyncClient) -> None:
    response = await http.post("/admin/faults", json={"nullForMissing": "yes"})
    assert response.status_code == 400
    assert "nullForMissing" in response.json()["error"]["message"]
