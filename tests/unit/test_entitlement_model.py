import dataclasses
from typing import Any

import pytest

from sidecar.entitlements.model import (
    CheckRequest,
    EntitlementsState,
    FeatureEntitlement,
    evaluate,
)

NOW = 1_800_000_000.0


def feature(
    ref_id: str, feature_type: str, meter_type: str | None = None, **fields: Any
) -> dict[str, Any]:
    return {
        "isGranted": True,
        "hasUnlimitedUsage": False,
        "feature": {"refId": ref_id, "featureType": feature_type, "meterType": meter_type},
        **fields,
    }


STATE = EntitlementsState.from_stigg(
    "c1",
    None,
    {
        "accessDeniedReason": None,
        "entitlements": [
            feature("sso", "BOOLEAN"),
            feature("projects", "NUMBER", "None", usageLimit=5),
            feature(
                "calls",
                "NUMBER",
                "Incremental",
                usageLimit=100,
                currentUsage=99,
                resetPeriod="MONTH",
                usagePeriodStart="2026-11-01T00:00:00Z",
                usagePeriodEnd="2030-01-01T00:00:00Z",
            ),
            feature("seats", "NUMBER", "Fluctuating", usageLimit=10, currentUsage=10),
            feature(
                "storage",
                "NUMBER",
                "Incremental",
                usageLimit=10,
                currentUsage=50,
                hasSoftLimit=True,
            ),
            feature("ai", "NUMBER", "Incremental", hasUnlimitedUsage=True, currentUsage=1e9),
            feature("region", "ENUM", enumValues=["us", "eu"]),
        ],
    },
    NOW,
)


def check(feature_id: str, **kwargs: Any) -> dict[str, Any]:
    return evaluate(STATE, CheckRequest("c1", feature_id, **kwargs), NOW)


def test_boolean_granted_and_shape() -> None:
    answer = check("sso")
    assert answer["hasAccess"] is True
    assert answer["accessDeniedReason"] is None
    assert answer["isFallback"] is False
    assert answer["type"] == "BOOLEAN"
    assert answer["customerId"] == "c1"
    assert answer["featureId"] == "sso"


def test_numeric_configuration_value() -> None:
    answer = check("projects")
    assert (answer["hasAccess"], answer["type"], answer["value"], answer["usageLimit"]) == (
        True,
        "NUMERIC",
        5.0,
        5.0,
    )


def test_metered_headroom_and_requested_usage() -> None:
    assert check("calls")["hasAccess"] is True  # 99 of 100 used
    assert check("calls", requested_usage=1)["hasAccess"] is True  # 99 + 1 <= 100
    denied = check("calls", requested_usage=2)
    assert denied["hasAccess"] is False
    assert denied["accessDeniedReason"] == "RequestedUsageExceedingLimit"
    assert denied["currentUsage"] == 99
    assert denied["usageLimit"] == 100
    assert denied["usagePeriodEnd"] == "2030-01-01T00:00:00Z"


def test_metered_at_limit_is_denied_without_requested_usage() -> None:
    answer = check("seats")
    assert answer["hasAccess"] is False
    assert answer["accessDeniedReason"] == "RequestedUsageExceedingLimit"
    assert check("seats", requested_usage=0)["hasAccess"] is True  # 10 + 0 <= 10


def test_soft_limit_and_unlimited_always_grant() -> None:
    assert check("storage", requested_usage=1000)["hasAccess"] is True
    unlimited = check("ai", requested_usage=1e12)
    assert unlimited["hasAccess"] is True
    assert unlimited["isUnlimited"] is True


def test_enum_requested_values() -> None:
    assert check("region", requested_values=("us",))["hasAccess"] is True
    mismatch = check("region", requested_values=("us", "apac"))
    assert mismatch["hasAccess"] is False
    assert mismatch["accessDeniedReason"] == "RequestedValuesMismatch"
    assert mismatch["enumValues"] == ["us", "eu"]


def test_feature_not_in_subscription() -> None:
    answer = check("unknown-feature")
    assert answer["hasAccess"] is False
    assert answer["accessDeniedReason"] == "NoFeatureEntitlementInSubscription"


@pytest.mark.parametrize("reason", ["CustomerNotFound", "NoActiveSubscription"])
def test_customer_level_denial(reason: str) -> None:
    state = EntitlementsState.from_stigg(
        "c2", None, {"accessDeniedReason": reason, "entitlements": []}, NOW
    )
    answer = evaluate(state, CheckRequest("c2", "sso"), NOW)
    assert answer["hasAccess"] is False
    assert answer["accessDeniedReason"] == reason


def test_ended_usage_period_resets_usage_to_zero() -> None:
    state = EntitlementsState.from_stigg(
        "c1",
        None,
        {
            "entitlements": [
                feature(
                    "calls",
                    "NUMBER",
                    "Incremental",
                    usageLimit=100,
                    currentUsage=100,
                    resetPeriod="MONTH",
                    usagePeriodEnd="2026-12-01T00:00:00Z",
                ),
            ]
        },
        NOW,
    )
    before = CheckRequest("c1", "calls")
    end = 1_796_083_200.0  # 2026-12-01T00:00:00Z
    assert evaluate(state, before, end - 1)["hasAccess"] is False
    after = evaluate(state, before, end)
    assert after["hasAccess"] is True
    assert after["currentUsage"] == 0


def test_a_counted_report_changes_only_the_usage_of_only_its_feature() -> None:
    # with_usage / with_entitlement build the new values field by field (the intake's hot
    # path): a field added later must not be dropped or reset by them.
    metered = dataclasses.replace(
        FeatureEntitlement(
            *(f"value-{n}" for n in range(len(dataclasses.fields(FeatureEntitlement))))
        ),
        feature_id="api-calls",
    )
    other = dataclasses.replace(metered, feature_id="seats")
    state = EntitlementsState("c", "r", None, {"api-calls": metered, "seats": other}, 12.5)
    counted = state.with_entitlement(metered.with_usage(7.0))
    assert counted.entitlements["api-calls"] == dataclasses.replace(metered, current_usage=7.0)
    assert counted.entitlements["seats"] is other
    assert dataclasses.replace(counted, entitlements=state.entitlements) == state
    assert state.entitlements["api-calls"] is metered  # the cached state is not changed in place
