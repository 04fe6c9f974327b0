"""The tolerant readers: safe defaults for what Stigg may send, counted and warned about once."""

from __future__ import annotations

import logging
from typing import Any

import graphql
import pytest

from sidecar.metrics import Metrics
from sidecar.upstream import answers
from sidecar.upstream.answers import AnswerDrift
from sidecar.upstream.errors import StiggError, UpstreamProtocolError
from tests.contract.test_documents import stigg_schema


def entitlement(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "isGranted": True,
        "usageLimit": 10,
        "hasUnlimitedUsage": False,
        "currentUsage": 3,
        "feature": {"refId": "f1", "featureType": "NUMBER", "meterType": "Incremental"},
    }
    raw.update(overrides)
    return raw


@pytest.fixture
def drift(monkeypatch: pytest.MonkeyPatch) -> AnswerDrift:
    """A fresh process-wide recorder on a clock the test moves."""
    now = [0.0]
    recorder = AnswerDrift(interval_seconds=60, clock=lambda: now[0])
    recorder.now = now  # type: ignore[attr-defined]
    monkeypatch.setattr(answers, "DRIFT", recorder)
    return recorder


def test_one_warning_per_operation_and_kind_per_interval(
    drift: AnswerDrift, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sidecar.upstream.answers")
    for _ in range(3):
        drift.record("entitlementsState", "unknown_enum", "x")
    drift.record("entitlementsState", "wrong_type", "y")
    drift.record("getCustomerByRefId", "unknown_enum", "z")
    assert drift.counts == {"entitlementsState": 4, "getCustomerByRefId": 1}
    assert len(caplog.records) == 3
    drift.now[0] = 61  # type: ignore[attr-defined]
    drift.record("entitlementsState", "unknown_enum", "x")
    assert len(caplog.records) == 4
    assert "Has Stigg's API changed?" in caplog.records[-1].getMessage()


def test_unknown_enum_values_become_safe_defaults_and_are_counted(drift: AnswerDrift) -> None:
    raw = {
        "accessDeniedReason": None,
        "entitlements": [
            entitlement(
                resetPeriod="FORTNIGHT",
                feature={"refId": "f1", "featureType": "NUMBER", "meterType": "Exponential"},
            ),
            entitlement(feature={"refId": "f2", "featureType": "GRAPH"}),
        ],
    }
    state = answers.entitlements_state(raw)
    metered, other = state["entitlements"]
    # Still enforced against its limit, without assuming a reset.
    assert metered["feature"]["meterType"] == "Fluctuating"
    assert metered["resetPeriod"] is None
    assert other["feature"]["featureType"] == "BOOLEAN"
    assert drift.counts["entitlementsState"] == 3
    denied = answers.entitlements_state(
        {"accessDeniedReason": "CustomerIsFrozen", "entitlements": []}
    )
    assert denied["accessDeniedReason"] == "Unknown"  # an unknown denial still denies


def test_wrong_types_and_missing_fields_are_defaults_not_crashes(drift: AnswerDrift) -> None:
    raw = {
        "entitlements": [
            entitlement(usageLimit="ten", isGranted=None, enumValues=["a", 1, None]),
            "not an object",
            entitlement(feature=None),  # valid: no feature, so no check can match it
            entitlement(feature={"refId": None, "featureType": "BOOLEAN"}),
        ],
        "newField": {"anything": True},
    }
    [read] = answers.entitlements_state(raw)["entitlements"]
    assert (read["usageLimit"], read["isGranted"], read["enumValues"]) == (None, False, ["a"])
    assert drift.counts["entitlementsState"] == 6


def test_valid_answers_are_not_counted(drift: AnswerDrift) -> None:
    answers.entitlements_state({"accessDeniedReason": "NoActiveSubscription", "entitlements": []})
    answers.customer({"customerId": "c1", "subscriptions": None, "newField": 1}, "c1")
    assert drift.counts == {}


def test_null_customer_is_customer_not_found() -> None:
    with pytest.raises(StiggError) as raised:
        answers.customer(None, "ghost")
    assert (raised.value.stigg_code, raised.value.operation) == (
        "CustomerNotFound",
        "getCustomerByRefId",
    )
    assert "ghost" in raised.value.message


@pytest.mark.parametrize(
    "reader",
    [
        answers.entitlements_state,
        answers.cancelled_subscription,
        answers.measurements,
        lambda raw: answers.provisioned_customer(raw, "c1"),
    ],
)
@pytest.mark.parametrize("raw", [None, "text", 3, True])
def test_an_unusable_root_is_upstream_invalid_answer(reader: Any, raw: Any) -> None:
    with pytest.raises(UpstreamProtocolError) as raised:
        reader(raw)
    assert raised.value.code == "upstream_invalid_answer"
    assert "could not be understood" in raised.value.message


def test_measurements_skip_items_without_customer_or_feature(drift: AnswerDrift) -> None:
    read = answers.measurements(
        [{"customerId": "c1", "featureId": "f1", "currentUsage": 2}, {"customerId": "c1"}, None]
    )
    assert [(m["customerId"], m["currentUsage"]) for m in read] == [("c1", 2.0)]
    assert drift.counts["reportUsageBulk"] == 2


@pytest.mark.parametrize(
    ("known", "enum"),
    [
        (answers.ACCESS_DENIED_REASONS, "EntitlementsStateAccessDeniedReason"),
        (answers.FEATURE_TYPES, "FeatureType"),
        (answers.METER_TYPES, "MeterType"),
        (answers.RESET_PERIODS, "EntitlementResetPeriod"),
        (answers.SUBSCRIPTION_STATUSES, "SubscriptionStatus"),
        (answers.BILLING_PERIODS, "BillingPeriod"),
        (answers.DECISION_STRATEGIES, "SubscriptionDecisionStrategy"),
        (answers.PROVISION_STATUSES, "ProvisionSubscriptionStatus"),
    ],
)
def test_known_enum_values_are_the_schemas(known: frozenset[str], enum: str) -> None:
    schema_enum = stigg_schema().get_type(enum)
    assert isinstance(schema_enum, graphql.GraphQLEnumType)
    assert known == set(schema_enum.values)


async def test_counts_are_exported_by_operation(drift: AnswerDrift) -> None:
    drift.record("entitlementsState", "unknown_enum", "x")
    text = (await Metrics(lambda: None).render()).decode()
    assert (
        'stigg_sidecar_upstream_unexpected_answers_total{operation="entitlementsState"} 1.0' in text
    )
    assert (
        'stigg_sidecar_upstream_unexpected_answers_total{operation="reportUsageBulk"} 0.0' in text
    )
