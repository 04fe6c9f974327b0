"""The emulator's root fields for the official SDKs' reads and changes, executed as GraphQL."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.emulator import load_catalog
from sidecar.emulator.periods import Clock
from sidecar.emulator.resolvers import Operation, prepare, run
from sidecar.emulator.state import EmulatorState
from tests.conftest import CATALOG


@pytest.fixture
def state() -> EmulatorState:
    return EmulatorState(load_catalog(CATALOG), Clock())


def execute(state: EmulatorState, query: str, **variables: Any) -> dict[str, Any]:
    prepared = prepare(query)
    assert prepared.document is not None, prepared.errors
    operation = prepared.operation(None)
    assert isinstance(operation, Operation)
    return run(state, prepared, operation, variables).body


def data(state: EmulatorState, query: str, **variables: Any) -> dict[str, Any]:
    body = execute(state, query, **variables)
    assert "errors" not in body, body["errors"]
    return body["data"]  # type: ignore[no-any-return]


def error_code(state: EmulatorState, query: str, **variables: Any) -> str:
    body = execute(state, query, **variables)
    return body["errors"][0]["extensions"]["code"]  # type: ignore[no-any-return]


ENTITLEMENT = """query($q: FetchEntitlementQuery!) { entitlement(query: $q) {
  isGranted accessDeniedReason usageLimit currentUsage enumValues feature { refId } } }"""


def entitlement(state: EmulatorState, customer: str, feature: str, **options: Any) -> Any:
    query = {"customerId": customer, "featureId": feature}
    if options:
        query["options"] = options
    return data(state, ENTITLEMENT, q=query)["entitlement"]


def test_entitlement_decides_requested_usage_and_values(state: EmulatorState) -> None:
    granted = entitlement(state, "customer-demo", "feature-api-calls", requestedUsage=1)
    assert granted["isGranted"] is True
    over = entitlement(state, "customer-demo", "feature-api-calls", requestedUsage=1e12)
    assert (over["isGranted"], over["accessDeniedReason"]) == (
        False,
        "RequestedUsageExceedingLimit",
    )
    region = entitlement(state, "customer-demo", "feature-region", requestedValues=["mars"])
    assert region["accessDeniedReason"] == "RequestedValuesMismatch"
    nobody = entitlement(state, "nobody", "feature-sso")
    assert (nobody["isGranted"], nobody["accessDeniedReason"]) == (False, "CustomerNotFound")


def test_cached_entitlements_and_v2(state: EmulatorState) -> None:
    listed = data(
        state,
        'query { cachedEntitlements(query: {customerId: "customer-demo"}) { feature { refId } } }',
    )["cachedEntitlements"]
    assert {"feature": {"refId": "feature-sso"}} in listed
    assert error_code(
        state, 'query { cachedEntitlements(query: {customerId: "nobody"}) { isGranted } }'
    ) == ("CustomerNotFound")
    v2 = data(
        state,
        """query { entitlementV2(query: {customerId: "customer-demo", featureId: "feature-sso"})
        { __typename ... on FeatureEntitlement { isGranted } } }""",
    )["entitlementV2"]
    assert v2 == {"__typename": "FeatureEntitlement", "isGranted": True}


GRANT = """mutation($i: GrantPromotionalEntitlementsInput!) {
  grantPromotionalEntitlements(input: $i) { status period endDate feature { refId } } }"""
REVOKE = """mutation($i: RevokePromotionalEntitlementInput!) {
  revokePromotionalEntitlement(input: $i) { status } }"""


def test_promotional_grant_and_revoke_change_entitlements_and_notify(
    state: EmulatorState,
) -> None:
    events: list[Any] = []
    state.add_listener(events.append)
    customer = "customer-no-subscription"
    assert entitlement(state, customer, "feature-sso")["accessDeniedReason"] == (
        "NoActiveSubscription"
    )
    promotions = data(
        state,
        GRANT,
        i={
            "customerId": customer,
            "promotionalEntitlements": [{"featureId": "feature-sso", "period": "ONE_MONTH"}],
        },
    )["grantPromotionalEntitlements"]
    assert promotions[0]["status"] == "Active"
    assert promotions[0]["endDate"] is not None
    assert entitlement(state, customer, "feature-sso")["isGranted"] is True
    assert ("entitlements", customer, None) in events
    events.clear()
    revoked = data(state, REVOKE, i={"customerId": customer, "featureId": "feature-sso"})
    assert revoked["revokePromotionalEntitlement"]["status"] == "Expired"
    assert entitlement(state, customer, "feature-sso")["isGranted"] is False
    assert ("entitlements", customer, None) in events
    assert (
        error_code(state, REVOKE, i={"customerId": customer, "featureId": "feature-sso"})
        == "PromotionalEntitlementNotFoundError"
    )


def test_promotion_ends_with_its_period(state: EmulatorState) -> None:
    customer = "customer-no-subscription"
    data(
        state,
        GRANT,
        i={
            "customerId": customer,
            "promotionalEntitlements": [{"featureId": "feature-sso", "period": "ONE_WEEK"}],
        },
    )
    state.clock.advance(8 * 24 * 3600)
    assert entitlement(state, customer, "feature-sso")["isGranted"] is False


SUBSCRIPTIONS = """query($f: SubscriptionQueryFilter, $p: CursorPaging) {
  subscriptions(filter: $f, paging: $p) {
    totalCount pageInfo { hasNextPage endCursor } edges { node { subscriptionId status } } } }"""


def test_subscriptions_filter_and_paging(state: EmulatorState) -> None:
    page = data(
        state, SUBSCRIPTIONS, f={"customerId": {"eq": "customer-workspaces"}}, p={"first": 1}
    )["subscriptions"]
    assert page["totalCount"] == 2
    assert page["pageInfo"]["hasNextPage"] is True
    rest = data(
        state,
        SUBSCRIPTIONS,
        f={"customerId": {"eq": "customer-workspaces"}},
        p={"after": page["pageInfo"]["endCursor"]},
    )["subscriptions"]
    ids = [e["node"]["subscriptionId"] for e in page["edges"] + rest["edges"]]
    assert sorted(ids) == ["subscription-workspace-alpha", "subscription-workspace-beta"]
    active = data(
        state,
        'query { getActiveSubscriptions(input: {customerId: "customer-workspaces", '
        'resourceIds: ["workspace-beta"]}) { subscriptionId } }',
    )["getActiveSubscriptions"]
    assert active == [{"subscriptionId": "subscription-workspace-beta"}]


def test_usage_history_records_each_report(state: EmulatorState) -> None:
    start = "2000-01-01T00:00:00.000Z"
    before = state.current_usage("customer-demo", "feature-api-calls", None)
    for value in (2, 3):
        state.report_usage(
            {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": value}
        )
    history = data(
        state,
        """query($i: UsageHistoryV2Input!) { usageHistoryV2(input: $i) {
          series { points { value } } } }""",
        i={"customerId": "customer-demo", "featureId": "feature-api-calls", "startDate": start},
    )["usageHistoryV2"]
    values = [p["value"] for p in history["series"][0]["points"]]
    assert values == [before + 2, before + 5]


def test_update_and_archive_customer(state: EmulatorState) -> None:
    updated = data(
        state,
        'mutation { updateOneCustomer(input: {customerId: "customer-demo", name: "Renamed"}) '
        "{ name } }",
    )
    assert updated["updateOneCustomer"] == {"name": "Renamed"}
    data(state, 'mutation { archiveCustomer(input: {customerId: "customer-demo"}) { refId } }')
    assert (
        error_code(
            state, 'query { getCustomerByRefId(input: {customerId: "customer-demo"}) { name } }'
        )
        == "CustomerNotFound"
    )


def test_catalog_reads(state: EmulatorState) -> None:
    catalog = data(
        state,
        """query { sdkConfiguration { sentryDsn }
          plans(filter: {refId: {eq: "plan-pro"}}) { totalCount edges { node { refId } } }
          features { totalCount } addons { totalCount } products { edges { node { refId } } }
          paywall(input: {}) { plans { refId } currency { code } } }""",
    )
    assert catalog["sdkConfiguration"] == {"sentryDsn": None}
    assert catalog["plans"] == {"totalCount": 1, "edges": [{"node": {"refId": "plan-pro"}}]}
    assert catalog["features"]["totalCount"] == len(state.catalog.features)
    assert catalog["addons"]["totalCount"] == 0
    assert catalog["products"]["edges"] == [{"node": {"refId": "product-saas"}}]
    assert len(catalog["paywall"]["plans"]) == len(state.catalog.plans)
