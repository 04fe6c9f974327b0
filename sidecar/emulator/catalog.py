"""The emulator's seed: features, plans and customers, loaded from a YAML catalog file.

Every problem is reported as one ``CatalogError`` naming the path of the offending value
(``plans[1].entitlements[0].feature: unknown feature 'feature-x'``), because a developer
running ``--local`` should be able to fix the file from that one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

FEATURE_TYPES = ("BOOLEAN", "NUMBER", "ENUM")
METER_TYPES = ("None", "Incremental", "Fluctuating")
RESET_PERIODS = ("HOUR", "DAY", "WEEK", "MONTH", "YEAR")
PRICING_TYPES = ("FREE", "PAID", "CUSTOM")
BILLING_PERIODS = ("MONTHLY", "ANNUALLY")

DEFAULT_ENVIRONMENT_ID = "5d2b7a6e-0c1f-4d8a-9a43-000000e1a70e"
DEFAULT_PRODUCT_ID = "product-default"


# libyaml's loader when present: the pure-Python one takes tens of ms for the demo catalog,
# which every test that starts an emulator pays.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CatalogError(ValueError):
    """The catalog file is not valid; the message names the offending path."""


@dataclass(frozen=True)
class Feature:
    """A feature of the product (Stigg's ``Feature``, identified by its refId)."""

    id: str
    display_name: str
    type: str
    meter_type: str | None
    units: str | None = None
    units_plural: str | None = None
    description: str | None = None
    enum_values: tuple[str, ...] = ()

    @property
    def is_metered(self) -> bool:
        """Whether usage can be reported for it (a NUMBER with a meter)."""
        return self.meter_type in ("Incremental", "Fluctuating")


@dataclass(frozen=True)
class PlanEntitlement:
    """What one plan grants for one feature."""

    feature_id: str
    usage_limit: float | None = None
    has_unlimited_usage: bool = False
    has_soft_limit: bool = False
    reset_period: str | None = None
    enum_values: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Plan:
    id: str
    display_name: str
    pricing_type: str
    entitlements: tuple[PlanEntitlement, ...]
    description: str | None = None


@dataclass(frozen=True)
class CatalogSubscription:
    id: str
    plan_id: str
    resource_id: str | None = None
    billing_period: str | None = None
    start_date: datetime | None = None
    # Usage seeded for this subscription's resource (customer-level usage has no resource).
    usage: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CatalogCustomer:
    id: str
    name: str | None
    email: str | None
    additional_meta_data: Mapping[str, Any]
    subscriptions: tuple[CatalogSubscription, ...]
    usage: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Catalog:
    """A validated catalog: every reference points at something that exists."""

    features: Mapping[str, Feature]
    plans: Mapping[str, Plan]
    customers: tuple[CatalogCustomer, ...]
    environment_id: str = DEFAULT_ENVIRONMENT_ID
    product_id: str = DEFAULT_PRODUCT_ID
    product_display_name: str = "Default product"


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog YAML file (``OSError`` if it cannot be read)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        raw = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader, C or Python
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CatalogError(f"not valid YAML{where}") from None
    return parse_catalog(raw)


def parse_catalog(raw: object) -> Catalog:
    """Validate an already-parsed catalog document (a mapping)."""
    top = _mapping(raw, "catalog", {"environmentId", "product", "features", "plans", "customers"})
    environment_id = _opt_str(top, "environmentId", "") or DEFAULT_ENVIRONMENT_ID
    product_id, product_name = DEFAULT_PRODUCT_ID, "Default product"
    if top.get("product") is not None:
        product = _mapping(top["product"], "product", {"id", "displayName"})
        product_id = _req_str(product, "id", "product")
        product_name = _opt_str(product, "displayName", "product") or product_id

    features: dict[str, Feature] = {}
    for index, item in enumerate(_list(top.get("features"), "features")):
        feature = _feature(item, f"features[{index}]")
        if feature.id in features:
            raise CatalogError(f"features[{index}].id: duplicate feature '{feature.id}'")
        features[feature.id] = feature

    plans: dict[str, Plan] = {}
    for index, item in enumerate(_list(top.get("plans"), "plans")):
        plan = _plan(item, f"plans[{index}]", features)
        if plan.id in plans:
            raise CatalogError(f"plans[{index}].id: duplicate plan '{plan.id}'")
        plans[plan.id] = plan

    customers: list[CatalogCustomer] = []
    customer_ids: set[str] = set()
    subscription_ids: set[str] = set()
    for index, item in enumerate(_list(top.get("customers"), "customers")):
        where = f"customers[{index}]"
        customer = _customer(item, where, features, plans, subscription_ids)
        if customer.id in customer_ids:
            raise CatalogError(f"{where}.id: duplicate customer '{customer.id}'")
        customer_ids.add(customer.id)
        customers.append(customer)

    return Catalog(
        features=MappingProxyType(features),
        plans=MappingProxyType(plans),
        customers=tuple(customers),
        environment_id=environment_id,
        product_id=product_id,
        product_display_name=product_name,
    )


def _feature(raw: object, where: str) -> Feature:
    keys = {"id", "displayName", "type", "meterType", "units", "unitsPlural", "description"}
    item = _mapping(raw, where, keys | {"enumValues"})
    feature_id = _req_str(item, "id", where)
    feature_type = _choice(item.get("type"), f"{where}.type", FEATURE_TYPES)
    meter_type: str | None = None
    if feature_type == "NUMBER":
        # YAML reads a bare `None` as the string "None"; `null` means the same here.
        meter_raw = item.get("meterType")
        meter_type = "None" if meter_raw is None else meter_raw
        meter_type = _choice(meter_type, f"{where}.meterType", METER_TYPES)
    elif item.get("meterType") not in (None, "None"):
        raise CatalogError(f"{where}.meterType: only NUMBER features have a meter")
    enum_values: tuple[str, ...] = ()
    if feature_type == "ENUM":
        enum_values = _str_list(item.get("enumValues"), f"{where}.enumValues")
        if not enum_values:
            raise CatalogError(f"{where}.enumValues: an ENUM feature needs at least one value")
    elif "enumValues" in item:
        raise CatalogError(f"{where}.enumValues: only ENUM features have values")
    return Feature(
        id=feature_id,
        display_name=_opt_str(item, "displayName", where) or feature_id,
        type=feature_type,
        meter_type=meter_type,
        units=_opt_str(item, "units", where),
        units_plural=_opt_str(item, "unitsPlural", where),
        description=_opt_str(item, "description", where),
        enum_values=enum_values,
    )


def _plan(raw: object, where: str, features: Mapping[str, Feature]) -> Plan:
    item = _mapping(raw, where, {"id", "displayName", "description", "pricingType", "entitlements"})
    plan_id = _req_str(item, "id", where)
    pricing = item.get("pricingType", "PAID")
    entitlements: list[PlanEntitlement] = []
    seen: set[str] = set()
    for index, ent in enumerate(_list(item.get("entitlements"), f"{where}.entitlements")):
        entitlement = _entitlement(ent, f"{where}.entitlements[{index}]", features)
        if entitlement.feature_id in seen:
            raise CatalogError(
                f"{where}.entitlements[{index}].feature: '{entitlement.feature_id}' "
                "is already granted by this plan"
            )
        seen.add(entitlement.feature_id)
        entitlements.append(entitlement)
    return Plan(
        id=plan_id,
        display_name=_opt_str(item, "displayName", where) or plan_id,
        pricing_type=_choice(pricing, f"{where}.pricingType", PRICING_TYPES),
        entitlements=tuple(entitlements),
        description=_opt_str(item, "description", where),
    )


def _entitlement(raw: object, where: str, features: Mapping[str, Feature]) -> PlanEntitlement:
    keys = {"feature", "usageLimit", "hasUnlimitedUsage", "hasSoftLimit", "resetPeriod"}
    item = _mapping(raw, where, keys | {"enumValues"})
    feature_id = _req_str(item, "feature", where)
    feature = features.get(feature_id)
    if feature is None:
        raise CatalogError(f"{where}.feature: unknown feature '{feature_id}'")

    def forbid(*names: str) -> None:
        for name in names:
            if name in item:
                raise CatalogError(
                    f"{where}.{name}: not allowed for {feature.type} feature '{feature_id}'"
                )

    if feature.type == "BOOLEAN":
        forbid("usageLimit", "hasUnlimitedUsage", "hasSoftLimit", "resetPeriod", "enumValues")
        return PlanEntitlement(feature_id=feature_id)
    if feature.type == "ENUM":
        forbid("usageLimit", "hasUnlimitedUsage", "hasSoftLimit", "resetPeriod")
        values = _str_list(item.get("enumValues"), f"{where}.enumValues")
        if not values:
            raise CatalogError(f"{where}.enumValues: grant at least one value")
        for value in values:
            if value not in feature.enum_values:
                allowed = ", ".join(feature.enum_values)
                raise CatalogError(
                    f"{where}.enumValues: '{value}' is not a value of '{feature_id}' ({allowed})"
                )
        return PlanEntitlement(feature_id=feature_id, enum_values=values)

    forbid("enumValues")
    unlimited = _bool(item, "hasUnlimitedUsage", where)
    limit = _number(item["usageLimit"], f"{where}.usageLimit") if "usageLimit" in item else None
    if unlimited == (limit is not None):
        raise CatalogError(f"{where}: give exactly one of usageLimit or hasUnlimitedUsage: true")
    if limit is not None and limit < 0:
        raise CatalogError(f"{where}.usageLimit: must not be negative")
    soft = _bool(item, "hasSoftLimit", where)
    if soft and not feature.is_metered:
        raise CatalogError(f"{where}.hasSoftLimit: only metered features have a soft limit")
    reset: str | None = None
    if item.get("resetPeriod") is not None:
        reset = _choice(item["resetPeriod"], f"{where}.resetPeriod", RESET_PERIODS)
        if feature.meter_type != "Incremental":
            raise CatalogError(f"{where}.resetPeriod: only Incremental features reset their usage")
    return PlanEntitlement(
        feature_id=feature_id,
        usage_limit=limit,
        has_unlimited_usage=unlimited,
        has_soft_limit=soft,
        reset_period=reset,
    )


def _customer(
    raw: object,
    where: str,
    features: Mapping[str, Feature],
    plans: Mapping[str, Plan],
    subscription_ids: set[str],
) -> CatalogCustomer:
    keys = {"id", "name", "email", "additionalMetaData", "subscriptions", "usage"}
    item = _mapping(raw, where, keys)
    customer_id = _req_str(item, "id", where)
    metadata = item.get("additionalMetaData") or {}
    if not isinstance(metadata, Mapping):
        raise CatalogError(f"{where}.additionalMetaData: must be a mapping")
    subscriptions: list[CatalogSubscription] = []
    for index, sub in enumerate(_list(item.get("subscriptions"), f"{where}.subscriptions")):
        sub_where = f"{where}.subscriptions[{index}]"
        subscription = _subscription(sub, sub_where, features, plans)
        if subscription.id in subscription_ids:
            raise CatalogError(f"{sub_where}.id: duplicate subscription '{subscription.id}'")
        subscription_ids.add(subscription.id)
        subscriptions.append(subscription)
    return CatalogCustomer(
        id=customer_id,
        name=_opt_str(item, "name", where),
        email=_opt_str(item, "email", where),
        additional_meta_data=MappingProxyType(dict(metadata)),
        subscriptions=tuple(subscriptions),
        usage=_usage(item.get("usage"), f"{where}.usage", features),
    )


def _subscription(
    raw: object, where: str, features: Mapping[str, Feature], plans: Mapping[str, Plan]
) -> CatalogSubscription:
    keys = {"id", "planId", "resourceId", "billingPeriod", "startDate", "usage"}
    item = _mapping(raw, where, keys)
    plan_id = _req_str(item, "planId", where)
    if plan_id not in plans:
        raise CatalogError(f"{where}.planId: unknown plan '{plan_id}'")
    billing = item.get("billingPeriod")
    resource_id = _opt_str(item, "resourceId", where)
    usage = _usage(item.get("usage"), f"{where}.usage", features)
    if usage and resource_id is None:
        raise CatalogError(
            f"{where}.usage: usage of a subscription without resourceId goes under the customer"
        )
    return CatalogSubscription(
        id=_req_str(item, "id", where),
        plan_id=plan_id,
        resource_id=resource_id,
        billing_period=None
        if billing is None
        else _choice(billing, f"{where}.billingPeriod", BILLING_PERIODS),
        start_date=_datetime(item.get("startDate"), f"{where}.startDate"),
        usage=usage,
    )


def _usage(
    raw: object, where: str, features: Mapping[str, Feature]
) -> tuple[tuple[str, float], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a mapping of feature id to usage")
    seeded: list[tuple[str, float]] = []
    for feature_id, value in raw.items():
        feature = features.get(str(feature_id))
        if feature is None:
            raise CatalogError(f"{where}.{feature_id}: unknown feature '{feature_id}'")
        if not feature.is_metered:
            raise CatalogError(f"{where}.{feature_id}: '{feature_id}' is not a metered feature")
        seeded.append((feature.id, _number(value, f"{where}.{feature_id}")))
    return tuple(seeded)


# --- small typed readers; each names the path in its error -----------------------------------


def _mapping(raw: object, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a mapping")
    for key in raw:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise CatalogError(f"{where}.{key}: unknown key (expected one of {expected})")
    return raw


def _list(raw: object, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CatalogError(f"{where}: must be a list")
    return raw


def _req_str(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}.{key}: required, a non-empty string")
    return value


def _opt_str(item: Mapping[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CatalogError(f"{where}.{key}: must be a string")
    return value


def _str_list(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise CatalogError(f"{where}: must be a list of non-empty strings")
    if len(set(raw)) != len(raw):
        raise CatalogError(f"{where}: values must be unique")
    return tuple(raw)


def _choice(raw: object, where: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise CatalogError(f"{where}: must be one of {', '.join(allowed)}")
    return str(raw)


def _bool(item: Mapping[str, Any], key: str, where: str) -> bool:
    value = item.get(key, False)
    if not isinstance(value, bool):
        raise CatalogError(f"{where}.{key}: must be true or false")
    return value


def _number(raw: object, where: str) -> float:
    # bool is an int in Python, and `usageLimit: yes` is a typo worth catching.
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise CatalogError(f"{where}: must be a finite number")
    return float(raw)


def _datetime(raw: object, where: str) -> datetime | None:
    if raw is None:
        return None
    # YAML already turns unquoted timestamps into datetimes; quoted ones arrive as strings.
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw)
        except ValueError:
            raise CatalogError(f"{where}: must be an ISO-8601 date-time") from None
    if isinstance(raw, date) and not isinstance(raw, datetime):
        raw = datetime.combine(raw, time(), tzinfo=UTC)
    if not isinstance(raw, datetime):
        raise CatalogError(f"{where}: must be an ISO-8601 date-time")
    return raw.replace(tzinfo=UTC) if raw.tzinfo is None else raw.astimezone(UTC)
