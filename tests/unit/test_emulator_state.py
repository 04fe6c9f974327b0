"""The emulator's in-memory Stigg, without HTTP: entitlements, usage, periods, provisioning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.emulator import Clock, EmulatorError, EmulatorState, load_catalog
from sidecar.emulator.catalog import parse_catalog
from sidecar.emulator.periods import add_months, current_period, iso

CATALOG = Path(__file__).resolve().parents[2] / "config" / "catalog.yaml"
START = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


class FakeTime:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def time() -> FakeTime:
    return FakeTime(START)


@pytest.fixture
def state(time: FakeTime) -> EmulatorState:
    return EmulatorState(load_catalog(CATALOG), Clock(time))


def by_feature(state: EmulatorState, customer_id: str, resource_id: str | None = None) -> Any:
    answer = state.entitlements_state(customer_id, resource_id)
    assert answer["accessDeniedReason"] is None
    return {e["feature"]["refId"]: e for e in answer["entitlements"]}


def usage(customer_id: str, feature_id: str, value: float, **extra: Any) -> dict[str, Any]:
    return {"customerId": customer_id, "featureId": feature_id, "value": value, **extra}


def error_code(excinfo: pytest.ExceptionInfo[EmulatorError]) -> str:
    return excinfo.value.code


# --- entitlements -----------------------------------------------------------------------------


def test_boolean_feature_is_granted_without_limits(state: EmulatorState) -> None:
    sso = by_feature(state, "customer-demo")["feature-sso"]
    assert sso["isGranted"] is True
    assert sso["accessDeniedReason"] is None
    assert sso["usageLimit"] is None
    assert sso["currentUsage"] is None
    assert sso["feature"]["featureType"] == "BOOLEAN"
    assert sso["feature"]["__typename"] == "EntitlementFeature"


def test_configuration_number_has_a_value_but_no_usage(state: EmulatorState) -> None:
    projects = by_feature(state, "customer-demo")["feature-max-projects"]
    assert projects["isGranted"] is True
    assert projects["usageLimit"] == 50
    assert projects["currentUsage"] is None
    assert projects["feature"]["meterType"] == "None"
    assert projects["resetPeriod"] is None


def test_incremental_feature_reports_usage_and_its_period(state: EmulatorState) -> None:
    calls = by_feature(state, "customer-demo")["feature-api-calls"]
    assert calls["isGranted"] is True
    assert calls["usageLimit"] == 100000
    assert calls["currentUsage"] == 1200
    assert calls["resetPeriod"] == "MONTH"
    assert calls["resetPeriodConfiguration"]["monthlyAccordingTo"] == "SubscriptionStart"
    # Anchored at the subscription start (the emulator's start, Jan 31): Feb has 28 days.
    assert calls["usagePeriodAnchor"] == "2025-01-31T12:00:00.000Z"
    assert calls["usagePeriodStart"] == "2025-01-31T12:00:00.000Z"
    assert calls["usagePeriodEnd"] == "2025-02-28T12:00:00.000Z"
    assert calls["nextResetDate"] == calls["usagePeriodEnd"]
    assert calls["feature"]["featureUnitsPlural"] == "calls"


def test_fluctuating_feature_has_usage_but_no_period(state: EmulatorState) -> None:
    seats = by_feature(state, "customer-demo")["feature-seats"]
    assert (seats["usageLimit"], seats["currentUsage"]) == (20, 4)
    assert seats["usagePeriodEnd"] is None
    assert seats["feature"]["meterType"] == "Fluctuating"


def test_enum_feature_lists_granted_values(state: EmulatorState) -> None:
    assert by_feature(state, "customer-demo")["feature-region"]["enumValues"] == ["us", "eu"]
    assert by_feature(state, "customer-free")["feature-region"]["enumValues"] == ["us"]
    enterprise = by_feature(state, "customer-enterprise")["feature-region"]
    assert enterprise["enumValues"] == ["us", "eu", "apac"]


def test_unlimited_entitlements(state: EmulatorState) -> None:
    entitlements = by_feature(state, "customer-enterprise")
    calls = entitlements["feature-api-calls"]
    assert calls["hasUnlimitedUsage"] is True
    assert calls["usageLimit"] is None
    assert calls["isGranted"] is True
    assert calls["currentUsage"] == 250000
    assert entitlements["feature-max-projects"]["hasUnlimitedUsage"] is True


def test_features_outside_the_plan_are_absent(state: EmulatorState) -> None:
    assert set(by_feature(state, "customer-free")) == {
        "feature-api-calls",
        "feature-max-projects",
        "feature-seats",
        "feature-region",
    }


def test_hard_limit_reached_denies_access(state: EmulatorState) -> None:
    assert by_feature(state, "customer-free")["feature-api-calls"]["isGranted"] is True
    state.report_usage(usage("customer-free", "feature-api-calls", 1))
    calls = by_feature(state, "customer-free")["feature-api-calls"]
    assert calls["currentUsage"] == 1000
    assert calls["isGranted"] is False
    assert calls["accessDeniedReason"] == "RequestedUsageExceedingLimit"


def test_soft_limit_stays_granted_over_the_limit(state: EmulatorState) -> None:
    state.report_usage(usage("customer-demo", "feature-storage-gb", 150))
    storage = by_feature(state, "customer-demo")["feature-storage-gb"]
    assert storage["hasSoftLimit"] is True
    assert storage["currentUsage"] == 150
    assert storage["isGranted"] is True
    assert storage["accessDeniedReason"] is None


def test_unknown_customer_and_no_subscription_are_reasons_not_errors(
    state: EmulatorState,
) -> None:
    missing = state.entitlements_state("customer-nope")
    assert missing["accessDeniedReason"] == "CustomerNotFound"
    assert missing["entitlements"] == []
    nothing = state.entitlements_state("customer-no-subscription")
    assert nothing["accessDeniedReason"] == "NoActiveSubscription"
    assert nothing["entitlements"] == []


def test_entitlements_are_per_resource(state: EmulatorState) -> None:
    alpha = by_feature(state, "customer-workspaces", "workspace-alpha")
    beta = by_feature(state, "customer-workspaces", "workspace-beta")
    assert alpha["feature-api-calls"]["usageLimit"] == 100000
    assert alpha["feature-api-calls"]["currentUsage"] == 10
    assert alpha["feature-api-calls"]["resourceId"] == "workspace-alpha"
    assert beta["feature-api-calls"]["usageLimit"] == 1000
    assert beta["feature-api-calls"]["currentUsage"] == 20
    # No subscription without a resource: the customer-level view has nothing.
    whole = state.entitlements_state("customer-workspaces")
    assert whole["accessDeniedReason"] == "NoActiveSubscription"


def test_entitlements_v2_mirror_v1(state: EmulatorState) -> None:
    answer = state.entitlements_state("customer-demo")
    v2 = answer["entitlementsV2"]()
    assert [e["__typename"] for e in v2] == ["FeatureEntitlement"] * len(answer["entitlements"])
    assert [e["feature"]["refId"] for e in v2] == [
        e["feature"]["refId"] for e in answer["entitlements"]
    ]


def test_several_subscriptions_merge_generously(time: FakeTime) -> None:
    catalog = parse_catalog(
        {
            "features": [
                {"id": "f-bool", "type": "BOOLEAN"},
                {"id": "f-num", "type": "NUMBER", "meterType": "Incremental"},
                {"id": "f-cfg", "type": "NUMBER"},
                {"id": "f-enum", "type": "ENUM", "enumValues": ["a", "b", "c"]},
            ],
            "plans": [
                {
                    "id": "small",
                    "entitlements": [
                        {"feature": "f-num", "usageLimit": 10},
                        {"feature": "f-cfg", "hasUnlimitedUsage": True},
                        {"feature": "f-enum", "enumValues": ["c"]},
                    ],
                },
                {
                    "id": "big",
                    "entitlements": [
                        {"feature": "f-bool"},
                        {"feature": "f-num", "usageLimit": 50},
                        {"feature": "f-cfg", "usageLimit": 5},
                        {"feature": "f-enum", "enumValues": ["a"]},
                    ],
                },
            ],
            "customers": [
                {
                    "id": "c",
                    "subscriptions": [
                        {"id": "s1", "planId": "small"},
                        {"id": "s2", "planId": "big"},
                    ],
                }
            ],
        }
    )
    entitlements = by_feature(EmulatorState(catalog, Clock(time)), "c")
    assert entitlements["f-bool"]["isGranted"] is True
    assert entitlements["f-num"]["usageLimit"] == 50
    assert entitlements["f-cfg"]["hasUnlimitedUsage"] is True
    # In the feature's declared order, not the plans'.
    assert entitlements["f-enum"]["enumValues"] == ["a", "c"]


# --- usage ------------------------------------------------------------------------------------


def test_delta_adds_and_set_replaces(state: EmulatorState) -> None:
    added = state.report_usage(usage("customer-demo", "feature-seats", 3))
    assert added["currentUsage"] == 7
    assert added["value"] == 3
    lowered = state.report_usage(usage("customer-demo", "feature-seats", -2))
    assert lowered["currentUsage"] == 5
    replaced = state.report_usage(usage("customer-demo", "feature-seats", 11, updateBehavior="SET"))
    assert replaced["currentUsage"] == 11
    assert state.current_usage("customer-demo", "feature-seats", None) == 11
    assert state.counters.usages_applied == 3


def test_measurement_has_stigg_fields(state: EmulatorState, time: FakeTime) -> None:
    measurement = state.report_usage(usage("customer-demo", "feature-api-calls", 5))
    assert measurement["__typename"] == "UsageMeasurementWithCurrentUsage"
    assert measurement["customerId"] == "customer-demo"
    assert measurement["featureId"] == "feature-api-calls"
    assert measurement["resourceId"] is None
    assert measurement["currentUsage"] == 1205
    assert measurement["timestamp"] == measurement["createdAt"] == iso(time.now)
    assert measurement["usagePeriodEnd"] == "2025-02-28T12:00:00.000Z"
    assert measurement["environmentId"]
    assert len(measurement["id"]) == 36


def test_idempotency_key_is_counted_once(state: EmulatorState) -> None:
    first = state.report_usage(usage("customer-demo", "feature-api-calls", 10, idempotencyKey="k"))
    again = state.report_usage(usage("customer-demo", "feature-api-calls", 10, idempotencyKey="k"))
    assert first["currentUsage"] == again["currentUsage"] == 1210
    assert state.current_usage("customer-demo", "feature-api-calls", None) == 1210
    assert state.counters.duplicate_keys == 1
    assert state.counters.usages_applied == 1


def test_duplicate_key_inside_one_bulk_is_counted_once(state: EmulatorState) -> None:
    results = state.report_usage_bulk(
        [
            usage("customer-demo", "feature-api-calls", 1, idempotencyKey="a"),
            usage("customer-demo", "feature-api-calls", 1, idempotencyKey="a"),
            usage("customer-demo", "feature-api-calls", 1, idempotencyKey="b"),
        ]
    )
    assert [r["currentUsage"] for r in results] == [1201, 1201, 1202]
    assert state.counters.duplicate_keys == 1


def test_bulk_is_atomic(state: EmulatorState) -> None:
    with pytest.raises(EmulatorError) as excinfo:
        state.report_usage_bulk(
            [
                usage("customer-demo", "feature-api-calls", 1, idempotencyKey="x1"),
                usage("customer-demo", "feature-nope", 1),
            ]
        )
    assert error_code(excinfo) == "FeatureNotFound"
    assert "usages[1]" in excinfo.value.message
    assert state.current_usage("customer-demo", "feature-api-calls", None) == 1200
    assert state.counters.usages_applied == 0
    # The key of the rejected batch was not consumed: a corrected resend counts.
    state.report_usage_bulk([usage("customer-demo", "feature-api-calls", 1, idempotencyKey="x1")])
    assert state.current_usage("customer-demo", "feature-api-calls", None) == 1201


def test_bulk_over_stiggs_limit_is_rejected(state: EmulatorState) -> None:
    with pytest.raises(EmulatorError) as excinfo:
        state.report_usage_bulk([usage("customer-demo", "feature-api-calls", 1)] * 101)
    assert error_code(excinfo) == "InvalidArgumentError"
    assert state.current_usage("customer-demo", "feature-api-calls", None) == 1200
    state.report_usage_bulk([usage("customer-demo", "feature-api-calls", 1)] * 100)
    assert state.current_usage("customer-demo", "feature-api-calls", None) == 1300
    assert state.counters.bulk_sizes == [101, 100]


@pytest.mark.parametrize(
    ("item", "code"),
    [
        (usage("customer-nope", "feature-api-calls", 1), "CustomerNotFound"),
        (usage("customer-demo", "feature-nope", 1), "FeatureNotFound"),
        (usage("customer-demo", "feature-sso", 1), "MeteringNotAvailableForFeatureType"),
        (usage("customer-demo", "feature-api-calls", float("inf")), "BadUserInput"),
        (usage("customer-demo", "feature-api-calls", float("nan")), "BadUserInput"),
        (usage("customer-demo", "feature-seats", 1e308 * 10), "BadUserInput"),
    ],
)
def test_invalid_usage_is_rejected(state: EmulatorState, item: dict[str, Any], code: str) -> None:
    with pytest.raises(EmulatorError) as excinfo:
        state.report_usage(item)
    assert error_code(excinfo) == code


def test_usage_overflowing_to_infinity_is_rejected(state: EmulatorState) -> None:
    state.report_usage(usage("customer-demo", "feature-seats", 1.5e308, updateBehavior="SET"))
    with pytest.raises(EmulatorError) as excinfo:
        state.report_usage(usage("customer-demo", "feature-seats", 1.5e308))
    assert error_code(excinfo) == "BadUserInput"
    assert state.current_usage("customer-demo", "feature-seats", None) == 1.5e308


def test_usage_is_per_resource(state: EmulatorState) -> None:
    state.report_usage(
        usage("customer-workspaces", "feature-api-calls", 5, resourceId="workspace-beta")
    )
    assert state.current_usage("customer-workspaces", "feature-api-calls", "workspace-beta") == 25
    assert state.current_usage("customer-workspaces", "feature-api-calls", "workspace-alpha") == 10


# --- usage periods ----------------------------------------------------------------------------


def test_incremental_usage_resets_when_the_period_ends(
    state: EmulatorState, time: FakeTime
) -> None:
    time.now = datetime(2025, 2, 28, 11, 59, tzinfo=UTC)
    assert state.current_usage("customer-demo", "feature-api-calls", None) == 1200
    time.now = datetime(2025, 2, 28, 12, 0, tzinfo=UTC)
    assert state.current_usage("customer-demo", "feature-api-calls", None) == 0
    calls = by_feature(state, "customer-demo")["feature-api-calls"]
    assert calls["currentUsage"] == 0
    # Periods advance from the anchor (Jan 31), so March's period ends on the 31st again.
    assert calls["usagePeriodStart"] == "2025-02-28T12:00:00.000Z"
    assert calls["usagePeriodEnd"] == "2025-03-31T12:00:00.000Z"
    assert calls["usagePeriodAnchor"] == "2025-01-31T12:00:00.000Z"
    # New usage counts from zero in the new period.
    assert state.report_usage(usage("customer-demo", "feature-api-calls", 7))["currentUsage"] == 7


def test_reset_unblocks_a_customer_at_its_limit(state: EmulatorState) -> None:
    state.report_usage(usage("customer-free", "feature-api-calls", 1))
    assert by_feature(state, "customer-free")["feature-api-calls"]["isGranted"] is False
    state.clock.advance(timedelta(days=31).total_seconds())
    assert by_feature(state, "customer-free")["feature-api-calls"]["isGranted"] is True


def test_fluctuating_usage_never_resets(state: EmulatorState) -> None:
    state.clock.advance(timedelta(days=400).total_seconds())
    assert state.current_usage("customer-demo", "feature-seats", None) == 4


def test_clock_refuses_to_go_back(state: EmulatorState) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        state.clock.advance(-1)


def test_period_arithmetic() -> None:
    anchor = datetime(2024, 1, 31, tzinfo=UTC)
    assert add_months(anchor, 1) == datetime(2024, 2, 29, tzinfo=UTC)
    assert add_months(anchor, 13) == datetime(2025, 2, 28, tzinfo=UTC)
    assert current_period(anchor, "MONTH", datetime(2024, 3, 30, tzinfo=UTC)) == (
        datetime(2024, 2, 29, tzinfo=UTC),
        datetime(2024, 3, 31, tzinfo=UTC),
    )
    assert current_period(anchor, "DAY", datetime(2024, 2, 2, 5, tzinfo=UTC)) == (
        datetime(2024, 2, 2, tzinfo=UTC),
        datetime(2024, 2, 3, tzinfo=UTC),
    )
    hour = current_period(anchor, "HOUR", datetime(2024, 1, 31, 3, 30, tzinfo=UTC))
    assert hour == (datetime(2024, 1, 31, 3, tzinfo=UTC), datetime(2024, 1, 31, 4, tzinfo=UTC))
    week = current_period(anchor, "WEEK", datetime(2024, 2, 8, tzinfo=UTC))
    assert week == (datetime(2024, 2, 7, tzinfo=UTC), datetime(2024, 2, 14, tzinfo=UTC))
    year = current_period(anchor, "YEAR", datetime(2026, 1, 30, tzinfo=UTC))
    assert year == (datetime(2025, 1, 31, tzinfo=UTC), datetime(2026, 1, 31, tzinfo=UTC))
    # Before the anchor: the first period.
    assert current_period(anchor, "DAY", datetime(2023, 1, 1, tzinfo=UTC))[0] == anchor


# --- customers and subscriptions --------------------------------------------------------------


def test_get_customer_fills_stigg_fields(state: EmulatorState) -> None:
    customer = state.get_customer("customer-demo")
    assert customer["customerId"] == customer["refId"] == "customer-demo"
    assert customer["name"] == "Demo Co"
    assert customer["email"] == "ops@demo.example"
    assert customer["additionalMetaData"] == {"segment": "startup"}
    assert customer["hasActiveSubscription"] is True
    assert customer["hasActiveResource"] is False
    assert customer["totalActiveSubscription"] == 1
    assert customer["promotionalEntitlements"] == []
    [subscription] = customer["subscriptions"]
    assert subscription["subscriptionId"] == "subscription-demo-pro"
    assert subscription["status"] == "ACTIVE"
    assert subscription["plan"]["refId"] == "plan-pro"
    assert subscription["billingPeriod"] == "MONTHLY"
    assert subscription["pricingType"] == "PAID"
    assert subscription["customer"]()["customerId"] == "customer-demo"
    with pytest.raises(EmulatorError) as excinfo:
        state.get_customer("customer-nope")
    assert error_code(excinfo) == "CustomerNotFound"


def test_provision_customer_without_subscription(state: EmulatorState) -> None:
    answer = state.provision_customer({"customerId": "c-1", "name": "One", "email": "a@b.c"})
    assert answer["subscriptionDecisionStrategy"] == "SKIPPED_SUBSCRIPTION_CREATION"
    assert answer["subscription"] is None
    assert answer["customer"]["customerId"] == "c-1"
    assert answer["customer"]["hasActiveSubscription"] is False
    assert state.entitlements_state("c-1")["accessDeniedReason"] == "NoActiveSubscription"


def test_provision_customer_with_subscription(state: EmulatorState) -> None:
    answer = state.provision_customer(
        {"customerId": "c-2", "subscriptionParams": {"planId": "plan-pro", "subscriptionId": "s-2"}}
    )
    assert answer["subscriptionDecisionStrategy"] == "REQUESTED_PLAN"
    assert answer["subscription"]["subscriptionId"] == "s-2"
    assert answer["subscription"]["plan"]["refId"] == "plan-pro"
    assert {e["feature"]["refId"] for e in answer["entitlements"]} >= {"feature-sso"}
    assert by_feature(state, "c-2")["feature-api-calls"]["currentUsage"] == 0


def test_provision_customer_mints_an_id(state: EmulatorState) -> None:
    customer_id = state.provision_customer({"name": "Anon"})["customer"]["customerId"]
    assert customer_id.startswith("customer-")
    assert state.customer(customer_id) is not None


def test_provision_customer_errors(state: EmulatorState) -> None:
    with pytest.raises(EmulatorError) as excinfo:
        state.provision_customer({"customerId": "customer-demo"})
    assert error_code(excinfo) == "DuplicatedEntityNotAllowed"
    with pytest.raises(EmulatorError) as excinfo:
        state.provision_customer({"customerId": "c-3", "subscriptionParams": {"planId": "plan-x"}})
    assert error_code(excinfo) == "PlanNotFound"
    # Failed provisioning creates nothing.
    assert state.customer("c-3") is None


def test_provision_subscription_replaces_the_active_one(state: EmulatorState) -> None:
    answer = state.provision_subscription(
        {"customerId": "customer-free", "planId": "plan-pro", "subscriptionId": "sub-upgrade"}
    )
    assert answer["status"] == "SUCCESS"
    assert answer["checkoutUrl"] is None
    assert answer["subscription"]["subscriptionId"] == "sub-upgrade"
    assert answer["subscription"]["status"] == "ACTIVE"
    old = state.subscription("subscription-free-1")
    assert old is not None
    assert old.status == "CANCELED"
    assert by_feature(state, "customer-free")["feature-api-calls"]["usageLimit"] == 100000
    customer = state.get_customer("customer-free")
    assert [s["status"] for s in customer["subscriptions"]] == ["CANCELED", "ACTIVE"]
    assert customer["totalActiveSubscription"] == 1


def test_provision_subscription_for_a_resource_leaves_others(state: EmulatorState) -> None:
    state.provision_subscription(
        {
            "customerId": "customer-workspaces",
            "planId": "plan-enterprise",
            "resourceId": "workspace-beta",
        }
    )
    alpha = state.subscription("subscription-workspace-alpha")
    beta = state.subscription("subscription-workspace-beta")
    assert alpha is not None
    assert beta is not None
    assert (alpha.status, beta.status) == ("ACTIVE", "CANCELED")
    beta_calls = by_feature(state, "customer-workspaces", "workspace-beta")["feature-api-calls"]
    assert beta_calls["hasUnlimitedUsage"] is True


def test_provision_subscription_errors(state: EmulatorState) -> None:
    with pytest.raises(EmulatorError) as excinfo:
        state.provision_subscription({"customerId": "customer-nope", "planId": "plan-pro"})
    assert error_code(excinfo) == "CustomerNotFound"
    with pytest.raises(EmulatorError) as excinfo:
        state.provision_subscription({"customerId": "customer-demo", "planId": "plan-x"})
    assert error_code(excinfo) == "PlanNotFound"
    with pytest.raises(EmulatorError) as excinfo:
        state.provision_subscription(
            {
                "customerId": "customer-demo",
                "planId": "plan-free",
                "subscriptionId": "subscription-free-1",
            }
        )
    assert error_code(excinfo) == "DuplicatedEntityNotAllowed"
    with pytest.raises(EmulatorError) as excinfo:
        state.provision_subscription(
            {"customerId": "customer-demo", "planId": "plan-free", "startDate": "yesterday"}
        )
    assert error_code(excinfo) == "BadUserInput"
    # None of these touched the existing subscription.
    current = state.subscription("subscription-demo-pro")
    assert current is not None
    assert current.status == "ACTIVE"


def test_start_date_anchors_usage_periods(state: EmulatorState) -> None:
    state.provision_subscription(
        {"customerId": "customer-demo", "planId": "plan-pro", "startDate": "2025-01-10T00:00:00Z"}
    )
    calls = by_feature(state, "customer-demo")["feature-api-calls"]
    assert calls["usagePeriodStart"] == "2025-01-10T00:00:00.000Z"
    assert calls["usagePeriodEnd"] == "2025-02-10T00:00:00.000Z"


def test_cancel_subscription(state: EmulatorState, time: FakeTime) -> None:
    canceled = state.cancel_subscription({"subscriptionRefId": "subscription-demo-pro"})
    assert canceled["status"] == "CANCELED"
    assert canceled["cancellationDate"] == canceled["endDate"] == iso(time.now)
    assert canceled["effectiveEndDate"] == iso(time.now)
    assert state.entitlements_state("customer-demo")["accessDeniedReason"] == "NoActiveSubscription"
    with pytest.raises(EmulatorError) as excinfo:
        state.cancel_subscription({"subscriptionRefId": "subscription-demo-pro"})
    assert error_code(excinfo) == "SubscriptionAlreadyCanceledOrExpired"
    with pytest.raises(EmulatorError) as excinfo:
        state.cancel_subscription({"subscriptionRefId": "subscription-nope"})
    assert error_code(excinfo) == "SubscriptionNotFound"


# --- events, listeners, reset -----------------------------------------------------------------


def event(key: str) -> dict[str, Any]:
    return {"eventName": "api-call", "customerId": "customer-demo", "idempotencyKey": key}


def test_events_are_deduplicated_and_counted(state: EmulatorState) -> None:
    state.report_events([event("e1"), event("e2"), event("e1")])
    state.report_events([event("e2"), event("e3")])
    assert state.counters.events_accepted == 3
    assert state.counters.duplicate_events == 2
    assert state.counters.event_batch_sizes == [3, 2]
    assert [e["idempotencyKey"] for e in state.events] == ["e1", "e2", "e3"]


def test_event_batches_over_stiggs_limit_are_rejected(state: EmulatorState) -> None:
    with pytest.raises(EmulatorError) as excinfo:
        state.report_events([event(str(i)) for i in range(1001)])
    assert error_code(excinfo) == "InvalidArgumentError"
    assert state.counters.events_accepted == 0
    state.report_events([event(str(i)) for i in range(1000)])
    assert state.counters.events_accepted == 1000


def test_listeners_hear_every_change(state: EmulatorState) -> None:
    heard: list[tuple[Any, ...]] = []
    remove = state.add_listener(heard.append)

    def broken(_event: tuple[Any, ...]) -> None:
        raise RuntimeError("listener bug")

    state.add_listener(broken)
    state.report_usage(usage("customer-demo", "feature-seats", 1))
    state.report_usage_bulk(
        [
            usage("customer-workspaces", "feature-api-calls", 1, resourceId="workspace-alpha"),
            usage("customer-workspaces", "feature-api-calls", 1, resourceId="workspace-alpha"),
        ]
    )
    state.provision_subscription({"customerId": "customer-free", "planId": "plan-pro"})
    state.cancel_subscription({"subscriptionRefId": "subscription-demo-pro"})
    state.provision_customer({"customerId": "c-9"})
    assert heard == [
        ("usage", "customer-demo", "feature-seats", None),
        ("usage", "customer-workspaces", "feature-api-calls", "workspace-alpha"),
        ("entitlements", "customer-free", None),
        ("entitlements", "customer-demo", None),
        ("entitlements", "c-9", None),
    ]
    # The broken listener did not stop the change.
    assert state.current_usage("customer-demo", "feature-seats", None) == 5
    remove()
    state.report_usage(usage("customer-demo", "feature-seats", 1))
    assert len(heard) == 5


def test_duplicate_only_usage_notifies_nobody(state: EmulatorState) -> None:
    state.report_usage(usage("customer-demo", "feature-seats", 1, idempotencyKey="once"))
    heard: list[tuple[Any, ...]] = []
    state.add_listener(heard.append)
    state.report_usage(usage("customer-demo", "feature-seats", 1, idempotencyKey="once"))
    assert heard == []


def test_reset_restores_the_catalog(state: EmulatorState, time: FakeTime) -> None:
    state.report_usage(usage("customer-demo", "feature-api-calls", 1, idempotencyKey="r"))
    state.provision_customer({"customerId": "c-temp"})
    state.cancel_subscription({"subscriptionRefId": "subscription-demo-pro"})
    state.clock.advance(3600)
    state.reset()
    assert state.customer("c-temp") is None
    assert state.clock.now() == time.now
    assert by_feature(state, "customer-demo")["feature-api-calls"]["currentUsage"] == 1200
    assert state.counters.usages_applied == 0
    # Idempotency keys are forgotten with the usage they protected.
    state.report_usage(usage("customer-demo", "feature-api-calls", 1, idempotencyKey="r"))
    assert state.current_usage("customer-demo", "feature-api-calls", None) == 1201
