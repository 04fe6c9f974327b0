"""The catalog loader: the shipped catalog, and one clear error per kind of mistake."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.emulator import CatalogError, load_catalog
from sidecar.emulator.catalog import parse_catalog

CATALOG = Path(__file__).resolve().parents[2] / "config" / "catalog.yaml"


def test_shipped_catalog_has_the_documented_ids() -> None:
    catalog = load_catalog(CATALOG)
    types = {fid: (f.type, f.meter_type) for fid, f in catalog.features.items()}
    assert types == {
        "feature-sso": ("BOOLEAN", None),
        "feature-max-projects": ("NUMBER", "None"),
        "feature-api-calls": ("NUMBER", "Incremental"),
        "feature-seats": ("NUMBER", "Fluctuating"),
        "feature-storage-gb": ("NUMBER", "Incremental"),
        "feature-region": ("ENUM", None),
    }
    assert catalog.features["feature-region"].enum_values == ("us", "eu", "apac")
    assert {"plan-free", "plan-pro", "plan-enterprise"} <= set(catalog.plans)
    pro = {e.feature_id: e for e in catalog.plans["plan-pro"].entitlements}
    assert pro["feature-storage-gb"].has_soft_limit is True
    assert pro["feature-api-calls"].reset_period == "MONTH"
    enterprise = {e.feature_id: e for e in catalog.plans["plan-enterprise"].entitlements}
    assert enterprise["feature-api-calls"].has_unlimited_usage is True
    customers = {c.id: c for c in catalog.customers}
    assert {
        "customer-demo",
        "customer-free",
        "customer-enterprise",
        "customer-no-subscription",
    } <= set(customers)
    demo = customers["customer-demo"]
    assert demo.name == "Demo Co"
    assert [s.id for s in demo.subscriptions] == ["subscription-demo-pro"]
    assert dict(demo.usage) == {"feature-api-calls": 1200, "feature-seats": 4}
    assert [s.id for s in customers["customer-free"].subscriptions] == ["subscription-free-1"]
    assert dict(customers["customer-free"].usage) == {"feature-api-calls": 999}
    assert customers["customer-no-subscription"].subscriptions == ()


BASE: dict[str, Any] = {
    "features": [
        {"id": "f-bool", "type": "BOOLEAN"},
        {"id": "f-calls", "type": "NUMBER", "meterType": "Incremental"},
        {"id": "f-seats", "type": "NUMBER", "meterType": "Fluctuating"},
        {"id": "f-region", "type": "ENUM", "enumValues": ["us", "eu"]},
    ],
    "plans": [
        {
            "id": "p",
            "entitlements": [
                {"feature": "f-bool"},
                {"feature": "f-calls", "usageLimit": 10, "resetPeriod": "DAY"},
                {"feature": "f-region", "enumValues": ["us"]},
            ],
        }
    ],
    "customers": [
        {
            "id": "c",
            "subscriptions": [{"id": "s", "planId": "p", "startDate": "2025-01-01T00:00:00Z"}],
            "usage": {"f-calls": 3},
        }
    ],
}


def broken(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path (list indexes as numbers) replaced."""
    raw = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return raw


def test_base_is_valid() -> None:
    catalog = parse_catalog(BASE)
    assert catalog.customers[0].subscriptions[0].start_date == datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            broken("features.2.type", "STRING"),
            "features[2].type: must be one of BOOLEAN, NUMBER, ENUM",
        ),
        (
            broken("features.1.meterType", "Sometimes"),
            "features[1].meterType: must be one of None, Incremental, Fluctuating",
        ),
        (broken("features.3.enumValues", []), "features[3].enumValues: an ENUM feature needs"),
        (broken("features.1.id", "f-bool"), "features[1].id: duplicate feature 'f-bool'"),
        (
            broken("plans.0.entitlements.0.feature", "f-nope"),
            "plans[0].entitlements[0].feature: unknown feature 'f-nope'",
        ),
        (
            broken("plans.0.entitlements.1", {"feature": "f-calls"}),
            "plans[0].entitlements[1]: give exactly one of usageLimit or hasUnlimitedUsage",
        ),
        (
            broken(
                "plans.0.entitlements.1",
                {"feature": "f-calls", "usageLimit": 1, "hasUnlimitedUsage": True},
            ),
            "plans[0].entitlements[1]: give exactly one of usageLimit or hasUnlimitedUsage",
        ),
        (
            broken("plans.0.entitlements.1", {"feature": "f-calls", "usageLimit": "lots"}),
            "plans[0].entitlements[1].usageLimit: must be a finite number",
        ),
        (
            broken(
                "plans.0.entitlements.1",
                {"feature": "f-seats", "usageLimit": 5, "resetPeriod": "MONTH"},
            ),
            "plans[0].entitlements[1].resetPeriod: only Incremental features reset",
        ),
        (
            broken(
                "plans.0.entitlements.1",
                {"feature": "f-calls", "usageLimit": 5, "resetPeriod": "FORTNIGHT"},
            ),
            "plans[0].entitlements[1].resetPeriod: must be one of HOUR, DAY, WEEK, MONTH, YEAR",
        ),
        (
            broken("plans.0.entitlements.2", {"feature": "f-region", "enumValues": ["mars"]}),
            "plans[0].entitlements[2].enumValues: 'mars' is not a value of 'f-region'",
        ),
        (
            broken("plans.0.entitlements.0", {"feature": "f-bool", "usageLimit": 1}),
            "plans[0].entitlements[0].usageLimit: not allowed for BOOLEAN feature 'f-bool'",
        ),
        (
            broken("plans.0.entitlements.2", {"feature": "f-bool"}),
            "plans[0].entitlements[2].feature: 'f-bool' is already granted by this plan",
        ),
        (
            broken("customers.0.subscriptions.0.planId", "p-nope"),
            "customers[0].subscriptions[0].planId: unknown plan 'p-nope'",
        ),
        (
            broken("customers.0.subscriptions.0.startDate", "soon"),
            "customers[0].subscriptions[0].startDate: must be an ISO-8601 date-time",
        ),
        (
            broken("customers.0.usage", {"f-bool": 1}),
            "customers[0].usage.f-bool: 'f-bool' is not a metered feature",
        ),
        (
            broken("customers.0.usage", {"f-nope": 1}),
            "customers[0].usage.f-nope: unknown feature 'f-nope'",
        ),
        (
            broken("customers.0.subscription", []),
            "customers[0].subscription: unknown key (expected one of",
        ),
        (broken("plans", {"id": "p"}), "plans: must be a list"),
        (["not", "a", "mapping"], "catalog: must be a mapping"),
    ],
)
def test_errors_name_the_path(raw: Any, message: str) -> None:
    with pytest.raises(CatalogError) as excinfo:
        parse_catalog(raw)
    assert str(excinfo.value).startswith(message)


def test_duplicate_customer_and_subscription_ids() -> None:
    raw = copy.deepcopy(BASE)
    raw["customers"].append(copy.deepcopy(raw["customers"][0]))
    with pytest.raises(CatalogError, match=r"customers\[1\]\.subscriptions\[0\]\.id: duplicate"):
        parse_catalog(raw)
    raw["customers"][1]["subscriptions"][0]["id"] = "s-2"
    with pytest.raises(CatalogError, match=r"customers\[1\]\.id: duplicate customer 'c'"):
        parse_catalog(raw)


def test_invalid_yaml_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("features: [\n  - id: x\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid YAML at line"):
        load_catalog(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):  # noqa: PT011 - the CLI maps any OSError to one line
        load_catalog(tmp_path / "nope.yaml")
