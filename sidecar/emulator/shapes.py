"""Stigg's GraphQL object shapes as plain dicts, for graphql-core's default-style resolution.

Every non-null field of the types the emulator returns is filled here with a plausible value,
so any valid document over these types executes. Back-references (a subscription's customer,
a product's plans) are zero-argument-friendly callables, which the resolver calls lazily: the
object graph is cyclic and only the selected part is ever built.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sidecar.emulator.catalog import Catalog, Feature, Plan, PlanEntitlement
from sidecar.emulator.periods import iso

JsonDict = dict[str, Any]
Lazy = Callable[..., Any]

# Stable ids for catalog objects: the same catalog gives the same UUIDs in every run.
_NAMESPACE = uuid.UUID("0f6f4b9e-2f0e-4f43-9b7a-5e1a7c0d3b21")

_RESET_CONFIG = {
    "MONTH": {"__typename": "MonthlyResetPeriodConfig", "monthlyAccordingTo": "SubscriptionStart"},
    "WEEK": {"__typename": "WeeklyResetPeriodConfig", "weeklyAccordingTo": "SubscriptionStart"},
    "YEAR": {"__typename": "YearlyResetPeriodConfig", "yearlyAccordingTo": "SubscriptionStart"},
}


def stable_id(kind: str, key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{key}"))


def lazy(build: Callable[[], Any]) -> Lazy:
    """A field value built only when selected (graphql-core passes ``info`` and args)."""

    def resolve(*_args: Any, **_kwargs: Any) -> Any:
        return build()

    return resolve


def reset_period_configuration(reset_period: str | None) -> JsonDict | None:
    if reset_period is None:
        return None
    config = _RESET_CONFIG.get(reset_period)
    return dict(config) if config is not None else None


class Shapes:
    """Renders the catalog's static objects once, and builds the per-request ones."""

    def __init__(self, catalog: Catalog, created_at: datetime) -> None:
        self.catalog = catalog
        self.environment_id = catalog.environment_id
        self._created = iso(created_at)
        self.environment: JsonDict = {
            "__typename": "Environment",
            "id": self.environment_id,
            "displayName": "Stigg emulator",
            "description": "Local emulator seeded from a catalog file",
            "slug": "emulator",
            "type": "DEVELOPMENT",
            "isSandbox": True,
            "hardenClientAccessEnabled": False,
            # Not a secret: the emulator signs nothing.
            "signingToken": "emulator",
            "createdAt": self._created,
            "apiKeys": [],
        }
        self._features = {fid: self._feature(f) for fid, f in catalog.features.items()}
        self._entitlement_features = {
            fid: self._entitlement_feature(f) for fid, f in catalog.features.items()
        }
        self.product = self._product()
        self._plans = {pid: self._plan(p) for pid, p in catalog.plans.items()}

    # --- catalog objects ----------------------------------------------------------------------

    def feature(self, feature_id: str) -> JsonDict:
        return self._features[feature_id]

    def entitlement_feature(self, feature_id: str) -> JsonDict:
        return self._entitlement_features[feature_id]

    def plan(self, plan_id: str) -> JsonDict:
        return self._plans[plan_id]

    def _feature(self, feature: Feature) -> JsonDict:
        return {
            "__typename": "Feature",
            "id": stable_id("feature", feature.id),
            "refId": feature.id,
            "displayName": feature.display_name,
            "description": feature.description,
            "featureType": feature.type,
            "meterType": feature.meter_type,
            "featureUnits": feature.units,
            "featureUnitsPlural": feature.units_plural,
            "featureStatus": "ACTIVE",
            "enumConfiguration": [
                {"value": value, "displayName": value} for value in feature.enum_values
            ]
            or None,
            "hasMeter": feature.is_metered,
            "hasEntitlements": True,
            "additionalMetaData": None,
            "unitTransformation": None,
            "environmentId": self.environment_id,
            "environment": self.environment,
            "createdAt": self._created,
            "updatedAt": self._created,
        }

    def _entitlement_feature(self, feature: Feature) -> JsonDict:
        full = self._feature(feature)
        keys = (
            "id",
            "refId",
            "displayName",
            "description",
            "featureType",
            "meterType",
            "featureUnits",
            "featureUnitsPlural",
            "featureStatus",
            "enumConfiguration",
            "additionalMetaData",
            "unitTransformation",
        )
        return {"__typename": "EntitlementFeature", **{key: full[key] for key in keys}}

    def _product(self) -> JsonDict:
        catalog = self.catalog
        return {
            "__typename": "Product",
            "id": stable_id("product", catalog.product_id),
            "refId": catalog.product_id,
            "displayName": catalog.product_display_name,
            "description": None,
            "additionalMetaData": None,
            "status": "PUBLISHED",
            "isDefaultProduct": True,
            "multipleSubscriptions": any(
                sub.resource_id is not None
                for customer in catalog.customers
                for sub in customer.subscriptions
            ),
            "hasSubscriptions": True,
            "addons": [],
            "autoCancellationRules": [],
            "plans": lazy(lambda: list(self._plans.values())),
            "productSettings": {
                "subscriptionCancellationTime": "END_OF_BILLING_PERIOD",
                "subscriptionEndSetup": "CANCEL_SUBSCRIPTION",
                "subscriptionStartSetup": "PLAN_SELECTION",
                "downgradePlan": None,
                "subscriptionStartPlan": None,
            },
            "subscriptionUpdateUsageResetCutoffRule": {"behavior": "ALWAYS_RESET"},
            "environmentId": self.environment_id,
            "environment": self.environment,
            "createdAt": self._created,
            "updatedAt": self._created,
        }

    def _plan(self, plan: Plan) -> JsonDict:
        plan_uuid = stable_id("plan", plan.id)
        package = [
            self._package_entitlement(plan_uuid, index, ent)
            for index, ent in enumerate(plan.entitlements)
        ]
        return {
            "__typename": "Plan",
            "id": plan_uuid,
            "refId": plan.id,
            "displayName": plan.display_name,
            "description": plan.description,
            "pricingType": plan.pricing_type,
            "status": "PUBLISHED",
            "type": "PLAN",
            "versionNumber": 1,
            "isLatest": True,
            "isParent": False,
            "basePlan": None,
            "billingId": None,
            "additionalMetaData": None,
            "hiddenFromWidgets": [],
            "entitlements": package,
            "inheritedEntitlements": package,
            "packageEntitlements": [
                {**ent, "__typename": "PackageFeatureEntitlement"} for ent in package
            ],
            "inheritedPackageEntitlements": [
                {**ent, "__typename": "PackageFeatureEntitlement"} for ent in package
            ],
            "prices": [],
            "overagePrices": [],
            "compatibleAddons": [],
            "compatiblePackageGroups": [],
            "defaultTrialConfig": None,
            "product": self.product,
            "productId": self.product["id"],
            "environmentId": self.environment_id,
            "environment": self.environment,
            "createdAt": self._created,
            "updatedAt": self._created,
        }

    def _package_entitlement(self, plan_uuid: str, order: int, ent: PlanEntitlement) -> JsonDict:
        feature = self.catalog.features[ent.feature_id]
        numeric = feature.type == "NUMBER"
        return {
            "__typename": "PackageEntitlement",
            "id": stable_id("package-entitlement", f"{plan_uuid}:{ent.feature_id}"),
            "packageId": plan_uuid,
            "featureId": ent.feature_id,
            "feature": self._features[ent.feature_id],
            "behavior": "Increment",
            "isGranted": True,
            "usageLimit": ent.usage_limit,
            "hasUnlimitedUsage": ent.has_unlimited_usage if numeric else None,
            "hasSoftLimit": ent.has_soft_limit if numeric else None,
            "resetPeriod": ent.reset_period,
            "resetPeriodConfiguration": reset_period_configuration(ent.reset_period),
            "enumValues": list(ent.enum_values) if ent.enum_values is not None else None,
            "isCustom": False,
            "hiddenFromWidgets": [],
            "order": float(order),
            "description": None,
            "displayNameOverride": None,
            "environmentId": self.environment_id,
            "createdAt": self._created,
            "updatedAt": self._created,
        }

    # --- per-request objects ------------------------------------------------------------------

    def customer_resource(self, resource_id: str, created_at: datetime, customer: Lazy) -> JsonDict:
        return {
            "__typename": "CustomerResource",
            "resourceId": resource_id,
            "createdAt": iso(created_at),
            "environmentId": self.environment_id,
            "customer": customer,
            "subscriptions": [],
        }

    def usage_measurement(
        self,
        *,
        customer_id: str,
        feature_id: str,
        resource_id: str | None,
        value: float,
        current_usage: float,
        timestamp: datetime,
        created_at: datetime,
        period: tuple[datetime, datetime] | None,
    ) -> JsonDict:
        start, end = (iso(period[0]), iso(period[1])) if period is not None else (None, None)
        return {
            "__typename": "UsageMeasurementWithCurrentUsage",
            "id": str(uuid.uuid4()),
            "customerId": customer_id,
            "featureId": feature_id,
            "resourceId": resource_id,
            "value": value,
            "currentUsage": current_usage,
            "timestamp": iso(timestamp),
            "createdAt": iso(created_at),
            "environmentId": self.environment_id,
            "usagePeriodStart": start,
            "usagePeriodEnd": end,
            "nextResetDate": end,
            "credit": None,
        }


_V2_KEYS = (
    "isGranted",
    "accessDeniedReason",
    "usageLimit",
    "hasUnlimitedUsage",
    "hasSoftLimit",
    "currentUsage",
    "enumValues",
    "entitlementUpdatedAt",
    "usageUpdatedAt",
    "usagePeriodAnchor",
    "usagePeriodStart",
    "usagePeriodEnd",
    "resetPeriod",
    "resetPeriodConfiguration",
    "feature",
    "creditRate",
    "meterId",
)


def feature_entitlement_v2(entitlement: JsonDict) -> JsonDict:
    """The ``FeatureEntitlement`` member of ``EntitlementUnion`` for a v1 ``Entitlement``."""
    v2 = {key: entitlement.get(key) for key in _V2_KEYS}
    v2["__typename"] = "FeatureEntitlement"
    # v2's validUntil is a DateTime where v1's is a Float; neither expires here.
    v2["validUntil"] = None
    return v2


def feature_entitlements_v2(entitlements: Sequence[JsonDict]) -> Lazy:
    return lazy(lambda: [feature_entitlement_v2(e) for e in entitlements])
