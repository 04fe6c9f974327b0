"""Every REST route and /graphql, through the sidecar to the emulator over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.emulator import EmulatorServer
from tests.conftest import API_KEY, sidecar_settings, start_sidecar
from tests.eventually import eventually

Client = TestClient[web.Request, web.Application]


@pytest.fixture(params=[False, True], ids=["missing-is-error", "missing-is-null"])
def null_for_missing(request: pytest.FixtureRequest) -> bool:
    """Every scenario here runs against both ways Stigg may answer an unknown customer."""
    return bool(request.param)


async def admin(emulator: EmulatorServer, method: str, path: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        response = await http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()


async def get_json(client: Client, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = await client.get(path, **kwargs)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def post_json(client: Client, path: str, body: Any, status: int) -> Any:
    response = await client.post(path, json=body)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


def error_of(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


# --- customers and subscriptions ---------------------------------------------------------


async def test_get_customer_from_catalog(sidecar: Client) -> None:
    customer = await get_json(sidecar, "/v1/customers/customer-demo")
    assert customer["customerId"] == "customer-demo"
    assert customer["name"] == "Demo Co"
    [subscription] = [s for s in customer["subscriptions"] if s["status"] == "ACTIVE"]
    assert subscription["planId"] == "plan-pro"
    assert subscription["subscriptionId"] == "subscription-demo-pro"


async def test_unknown_customer_is_404(sidecar: Client) -> None:
    error = error_of(await get_json(sidecar, "/v1/customers/nobody-here", status=404))
    assert error["code"] == "not_found"
    assert error["stiggCode"] == "CustomerNotFound"


async def test_provision_customer_then_subscribe_then_cancel(sidecar: Client) -> None:
    created = await post_json(
        sidecar,
        "/v1/customers",
        {
            "customerId": "acme",
            "name": "Acme",
            "email": "ops@acme.test",
            "additionalMetaData": {"tier": "gold"},
        },
        201,
    )
    assert created["customer"]["customerId"] == "acme"
    assert created["subscription"] is None
    denied = await get_json(sidecar, "/v1/entitlements?customerId=acme&featureId=feature-sso")
    assert (denied["hasAccess"], denied["accessDeniedReason"]) == (False, "NoActiveSubscription")

    result = await post_json(
        sidecar,
        "/v1/subscriptions",
        {
            "customerId": "acme",
            "planId": "plan-pro",
            "billingPeriod": "MONTHLY",
            "subscriptionId": "sub-acme-1",
        },
        201,
    )
    assert result["subscription"]["status"] == "ACTIVE"
    assert result["subscription"]["planId"] == "plan-pro"
    granted = await get_json(sidecar, "/v1/entitlements?customerId=acme&featureId=feature-sso")
    assert granted["hasAccess"] is True

    cancelled = await post_json(sidecar, "/v1/subscriptions/sub-acme-1/cancel", None, 200)
    assert cancelled["status"] == "CANCELED"
    after = await get_json(sidecar, "/v1/entitlements?customerId=acme&featureId=feature-sso")
    assert after["hasAccess"] is False
    again = error_of(await post_json(sidecar, "/v1/subscriptions/sub-acme-1/cancel", {}, 409))
    assert again["stiggCode"] == "SubscriptionAlreadyCanceledOrExpired"


async def test_provision_customer_with_subscription(sidecar: Client) -> None:
    created = await post_json(
        sidecar,
        "/v1/customers",
        {"customerId": "beta", "subscriptionParams": {"planId": "plan-free"}},
        201,
    )
    assert created["subscription"]["planId"] == "plan-free"
    duplicate = error_of(await post_json(sidecar, "/v1/customers", {"customerId": "beta"}, 409))
    assert duplicate["stiggCode"] == "DuplicatedEntityNotAllowed"


async def test_subscription_for_unknown_plan_or_customer_is_404(sidecar: Client) -> None:
    plan = error_of(
        await post_json(
            sidecar,
            "/v1/subscriptions",
            {"customerId": "customer-demo", "planId": "plan-nope"},
            404,
        )
    )
    assert plan["stiggCode"] == "PlanNotFound"
    customer = error_of(
        await post_json(
            sidecar, "/v1/subscriptions", {"customerId": "ghost", "planId": "plan-pro"}, 404
        )
    )
    assert customer["stiggCode"] == "CustomerNotFound"
    cancel = error_of(await post_json(sidecar, "/v1/subscriptions/nope/cancel", None, 404))
    assert cancel["stiggCode"] == "SubscriptionNotFound"


# --- entitlements ------------------------------------------------------------------------


async def test_check_every_feature_type(sidecar: Client) -> None:
    base = "/v1/entitlements?customerId=customer-demo&featureId="
    sso = await get_json(sidecar, base + "feature-sso")
    assert (sso["hasAccess"], sso["type"], sso["isFallback"]) == (True, "BOOLEAN", False)
    projects = await get_json(sidecar, base + "feature-max-projects")
    assert (projects["type"], projects["value"]) == ("NUMERIC", 50)
    calls = await get_json(sidecar, base + "feature-api-calls")
    assert calls["type"] == "METERED"
    assert (calls["usageLimit"], calls["currentUsage"]) == (100000, 1200)
    assert calls["isUnlimited"] is False
    assert calls["resetPeriod"] == "MONTH"
    assert calls["usagePeriodEnd"] is not None
    region = await get_json(sidecar, base + "feature-region&requestedValues=us,eu")
    assert (region["hasAccess"], region["enumValues"]) == (True, ["us", "eu"])
    apac = await get_json(sidecar, base + "feature-region&requestedValues=apac")
    assert (apac["hasAccess"], apac["accessDeniedReason"]) == (False, "RequestedValuesMismatch")


async def test_requested_usage_like_stigg(sidecar: Client) -> None:
    base = "/v1/entitlements?customerId=customer-free&featureId=feature-api-calls"
    assert (await get_json(sidecar, base))["hasAccess"] is True  # 999 of 1000
    assert (await get_json(sidecar, base + "&requestedUsage=1"))["hasAccess"] is True
    over = await get_json(sidecar, base + "&requestedUsage=2")
    assert (over["hasAccess"], over["accessDeniedReason"]) == (
        False,
        "RequestedUsageExceedingLimit",
    )


async def test_denials_for_unknown_customer_and_feature(sidecar: Client) -> None:
    ghost = await get_json(sidecar, "/v1/entitlements?customerId=ghost&featureId=feature-sso")
    assert (ghost["hasAccess"], ghost["accessDeniedReason"]) == (False, "CustomerNotFound")
    free = await get_json(
        sidecar, "/v1/entitlements?customerId=customer-free&featureId=feature-sso"
    )
    assert free["accessDeniedReason"] == "NoFeatureEntitlementInSubscription"
    nosub = await get_json(
        sidecar, "/v1/entitlements?customerId=customer-no-subscription&featureId=feature-sso"
    )
    assert nosub["accessDeniedReason"] == "NoActiveSubscription"


async def test_list_entitlements(sidecar: Client) -> None:
    body = await get_json(sidecar, "/v1/customers/customer-demo/entitlements")
    assert body["customerId"] == "customer-demo"
    by_feature = {e["featureId"]: e for e in body["entitlements"]}
    assert {"feature-sso", "feature-api-calls", "feature-seats", "feature-region"} <= set(
        by_feature
    )
    assert all(e["hasAccess"] is True for e in by_feature.values())
    ghost = await get_json(sidecar, "/v1/customers/ghost/entitlements")
    assert (ghost["accessDeniedReason"], ghost["entitlements"]) == ("CustomerNotFound", [])


# --- usage -------------------------------------------------------------------------------


async def emulator_usage(emulator: EmulatorServer, customer_id: str, feature_id: str) -> float:
    usage = await admin(
        emulator,
        "GET",
        "/admin/usage",
        params={"customerId": customer_id, "featureId": feature_id},
    )
    return float(usage["currentUsage"])


async def wait_for_usage(
    emulator: EmulatorServer, customer_id: str, feature_id: str, expected: float
) -> None:
    """Reports are delivered in the background: poll the emulator, for at most 10 s."""

    async def delivered() -> bool:
        return await emulator_usage(emulator, customer_id, feature_id) == expected

    await eventually(delivered, 10, f"{customer_id}/{feature_id} never reached {expected}", 0.05)


async def test_report_usage_reaches_stigg_once_per_key(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    report = {
        "customerId": "customer-demo",
        "featureId": "feature-api-calls",
        "value": 5,
        "idempotencyKey": "order-42",
    }
    first = await post_json(sidecar, "/v1/usage", report, 202)
    assert (first["id"], first["idempotencyKey"], first["status"]) == (
        "order-42",
        "order-42",
        "accepted",
    )
    again = await post_json(sidecar, "/v1/usage", report, 202)  # a client retry
    assert again["status"] == "duplicate"
    minted = await post_json(
        sidecar,
        "/v1/usage",
        {
            "customerId": "customer-demo",
            "featureId": "feature-seats",
            "value": 7,
            "updateBehavior": "SET",
        },
        202,
    )
    assert minted["idempotencyKey"].startswith("sidecar-")
    await wait_for_usage(emulator, "customer-demo", "feature-api-calls", 1205)
    await wait_for_usage(emulator, "customer-demo", "feature-seats", 7)
    counters = await admin(emulator, "GET", "/admin/counters")
    assert counters["usagesApplied"] == 2
    assert set(counters["calls"]) == {"reportUsageBulk"}


async def test_report_usage_for_unknown_customer_is_dead_lettered(sidecar: Client) -> None:
    accepted = await post_json(
        sidecar,
        "/v1/usage",
        {"customerId": "ghost", "featureId": "feature-api-calls", "value": 1},
        202,
    )
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        letters = (await get_json(sidecar, "/v1/usage/dead-letters"))["deadLetters"]
        if letters:
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    [letter] = letters
    assert letter["code"] == "CustomerNotFound"
    assert letter["report"]["idempotencyKey"] == accepted["idempotencyKey"]


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/usage", {"featureId": "f", "value": 1}, "customerId"),
        ("/v1/usage", {"customerId": "c", "featureId": "f", "value": "1"}, "value"),
        ("/v1/usage", {"customerId": "c", "featureId": "f", "value": True}, "value"),
        (
            "/v1/usage",
            {"customerId": "c", "featureId": "f", "value": 1, "updateBehavior": "ADD"},
            "updateBehavior",
        ),
        (
            "/v1/usage",
            {"customerId": "c", "featureId": "f", "value": 1, "timestamp": "2999-01-01T00:00:00Z"},
            "timestamp",
        ),
        (
            "/v1/usage",
            {"customerId": "c", "featureId": "f", "value": 1, "timestamp": "yesterday"},
            "timestamp",
        ),
        (
            "/v1/usage",
            {"customerId": "c", "featureId": "f", "value": 1, "dimensions": {"a": [1]}},
            "dimensions.a",
        ),
        ("/v1/usage", {"customerId": "c", "featureId": "f", "value": 1, "extra": 1}, "extra"),
        ("/v1/usage", {"customerId": "bad id", "featureId": "f", "value": 1}, "customerId"),
        ("/v1/usage", [1, 2], "body"),
        ("/v1/customers", {"name": "x"}, "customerId"),
        (
            "/v1/customers",
            {"customerId": "c", "subscriptionParams": {"planId": 3}},
            "subscriptionParams.planId",
        ),
        ("/v1/subscriptions", {"customerId": "c"}, "planId"),
        (
            "/v1/subscriptions",
            {"customerId": "c", "planId": "p", "billingPeriod": "WEEKLY"},
            "billingPeriod",
        ),
        (
            "/v1/subscriptions",
            {"customerId": "c", "planId": "p", "unitQuantity": 0},
            "unitQuantity",
        ),
    ],
)
async def test_bad_bodies_get_400_naming_the_field(
    sidecar: Client, emulator: EmulatorServer, path: str, body: Any, field: str
) -> None:
    error = error_of(await post_json(sidecar, path, body, 400))
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert field.split(".")[0] in error["message"]
    counters = await admin(emulator, "GET", "/admin/counters")
    assert counters["calls"] == {}  # nothing reached Stigg


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("featureId=feature-sso", "customerId"),
        ("customerId=customer-demo", "featureId"),
        ("customerId=customer-demo&featureId=feature-sso&requestedUsage=lots", "requestedUsage"),
        ("customerId=customer-demo&featureId=feature-sso&requestedUsage=nan", "requestedUsage"),
        ("customerId=customer-demo&featureId=feature-sso&requestedUsage=-1", "requestedUsage"),
        ("customerId=customer-demo&featureId=feature-sso&featureID=x", "featureID"),
    ],
)
async def test_bad_check_queries_get_400(sidecar: Client, query: str, field: str) -> None:
    error = error_of(await get_json(sidecar, f"/v1/entitlements?{query}", status=400))
    assert error["field"] == field


async def test_malformed_json_unknown_route_wrong_method_and_huge_body(sidecar: Client) -> None:
    response = await sidecar.post(
        "/v1/usage", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert error_of(await response.json())["code"] == "invalid_json"
    for non_finite in (b'{"value": NaN}', b'{"value": 1e400}'):
        response = await sidecar.post("/v1/usage", data=non_finite)
        assert response.status == 400
        assert error_of(await response.json())["code"] == "invalid_json"
    assert error_of(await get_json(sidecar, "/v2/nothing", status=404))["code"] == "not_found"
    response = await sidecar.delete("/v1/usage")
    assert response.status == 405
    assert error_of(await response.json())["code"] == "method_not_allowed"
    response = await sidecar.post("/v1/usage", data=b"[" + b"1," * 600_000 + b"1]")
    assert response.status == 413
    assert error_of(await response.json())["code"] == "payload_too_large"
    # The process keeps serving after all of that.
    assert (await get_json(sidecar, "/v1/customers/customer-demo"))["customerId"]


# --- graphql passthrough -----------------------------------------------------------------


async def test_graphql_passthrough(sidecar: Client, emulator: EmulatorServer) -> None:
    query = (
        "query($q: FetchEntitlementsQuery!) { entitlementsState(query: $q) "
        "{ accessDeniedReason entitlements { feature { refId } } } }"
    )
    response = await sidecar.post(
        "/graphql",
        json={"query": query, "variables": {"q": {"customerId": "customer-demo"}}},
        headers={"X-API-KEY": "attacker-key"},
    )  # ignored: the sidecar injects its own
    assert response.status == 200
    body = await response.json()
    refs = {e["feature"]["refId"] for e in body["data"]["entitlementsState"]["entitlements"]}
    assert "feature-sso" in refs
    invalid = await sidecar.post("/graphql", json={"query": "{ noSuchField }"})
    assert invalid.status == 400
    assert "errors" in await invalid.json()  # Stigg's own GraphQL error, passed through
    missing = await sidecar.post("/graphql", json={"variables": {}})
    assert error_of(await missing.json())["field"] == "query"


# --- upstream faults ---------------------------------------------------------------------


async def test_upstream_5xx_is_503_and_recovers(sidecar: Client, emulator: EmulatorServer) -> None:
    await admin(emulator, "POST", "/admin/faults", json={"status": 500})
    error = error_of(await get_json(sidecar, "/v1/customers/customer-demo", status=503))
    assert error["code"] == "upstream_unavailable"
    await admin(emulator, "DELETE", "/admin/faults")
    ok = await get_json(sidecar, "/v1/customers/customer-demo")
    assert ok["customerId"] == "customer-demo"


async def test_transient_5xx_on_a_read_is_retried(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    await admin(emulator, "POST", "/admin/faults", json={"status": 503, "times": 1})
    ok = await get_json(sidecar, "/v1/customers/customer-demo")
    assert ok["customerId"] == "customer-demo"


async def test_upstream_hang_is_504(emulator: EmulatorServer) -> None:
    client = await start_sidecar(
        sidecar_settings(emulator.url, read_timeout_seconds=0.2, max_retries=0)
    )
    try:
        await admin(emulator, "POST", "/admin/faults", json={"hang": True})
        error = error_of(await get_json(client, "/v1/customers/customer-demo", status=504))
        assert error["code"] == "upstream_timeout"
    finally:
        await admin(emulator, "DELETE", "/admin/faults")
        await client.close()


async def test_rate_limited_is_503_with_retry_after(
    sidecar: Client, emulator: EmulatorServer
) -> None:
    await admin(emulator, "POST", "/admin/faults", json={"status": 429})
    response = await sidecar.get("/v1/customers/customer-demo")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert error_of(await response.json())["code"] == "upstream_rate_limited"


async def test_wrong_api_key_is_502_and_never_echoed(emulator: EmulatorServer) -> None:
    settings = sidecar_settings(emulator.url)
    from dataclasses import replace

    from sidecar.config import Secret

    client = await start_sidecar(replace(settings, api_key=Secret("wrong-key-xyz")))
    try:
        response = await client.get("/v1/customers/customer-demo")
        text = await response.text()
        assert response.status == 502
        assert "wrong-key-xyz" not in text
        assert API_KEY not in text
        assert error_of(await response.json())["code"] == "upstream_auth_failed"
        response = await client.post("/graphql", json={"query": "{ __typename }"})
        assert response.status == 502
        assert "wrong-key-xyz" not in await response.text()
        # Checks keep answering, from the fallback chain.
        check = await get_json(
            client, "/v1/entitlements?customerId=customer-demo&featureId=feature-sso"
        )
        assert (check["isFallback"], check["source"]) == (True, "default")
    finally:
        await client.close()


async def test_unreachable_upstream_is_503() -> None:
    from tests.conftest import free_port

    client = await start_sidecar(sidecar_settings(f"http://127.0.0.1:{free_port()}/graphql"))
    try:
        error = error_of(await get_json(client, "/v1/customers/customer-demo", status=503))
        assert error["code"] == "upstream_unavailable"
    finally:
        await client.close()


# --- OpenAPI -----------------------------------------------------------------------------


async def test_openapi_describes_every_route(sidecar: Client) -> None:
    document = await get_json(sidecar, "/openapi.json")
    assert document["openapi"].startswith("3.1")
    served = set()
    for resource in sidecar.app.router.resources():
        info = resource.get_info()
        served.add(info.get("path") or info.get("formatter"))
    assert served <= set(document["paths"])
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    error = {"$ref": "#/components/schemas/Error"}
                    if (path, method, status) == ("/graphql", "post", "400"):  # or Stigg's
                        assert error in schema["anyOf"]
                    else:
                        assert schema == error


async def test_openapi_document_is_valid_openapi_31(sidecar: Client) -> None:
    from openapi_spec_validator import validate

    validate(await get_json(sidecar, "/openapi.json"))  # raises on any violation


# --- an unknown customer, whichever way Stigg says so ----------------------------------------


async def test_unknown_customer_on_every_route_that_takes_one(sidecar: Client) -> None:
    """404 where the route is about the customer; a CustomerNotFound denial for checks (as
    Stigg answers them), identical whether Stigg sent null or a CustomerNotFound error."""
    for error in (
        error_of(await get_json(sidecar, "/v1/customers/ghost-x", status=404)),
        error_of(
            await post_json(
                sidecar, "/v1/subscriptions", {"customerId": "ghost-x", "planId": "plan-pro"}, 404
            )
        ),
    ):
        assert (error["code"], error["stiggCode"]) == ("not_found", "CustomerNotFound")
        assert "ghost-x" in error["message"]
    check = await get_json(sidecar, "/v1/entitlements?customerId=ghost-x&featureId=feature-sso")
    assert (check["hasAccess"], check["isFallback"], check["accessDeniedReason"]) == (
        False,
        False,
        "CustomerNotFound",
    )
    for listing in (
        await get_json(sidecar, "/v1/customers/ghost-x/entitlements"),
        await post_json(sidecar, "/v1/customers/ghost-x/entitlements/reload", None, 200),
    ):
        assert (listing["accessDeniedReason"], listing["entitlements"]) == ("CustomerNotFound", [])
