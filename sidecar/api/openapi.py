"""The OpenAPI 3.1 description of the REST API, served at ``GET /openapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

from sidecar import __version__
from sidecar.api.mcp_tools import CheckArguments
from sidecar.api.usage_openapi import USAGE_MODELS, USAGE_SCHEMAS, usage_paths
from sidecar.provisioning import (
    CancelSubscriptionRequest,
    ProvisionCustomerRequest,
    ProvisionSubscriptionRequest,
)
from sidecar.validation import id_schema, schema_components, tool_schema

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_ID = id_schema()
# The sidecar takes dates before 2100 (a year like 5471 is a typo, not a plan).
_DATE_TIME = {"type": "string", "format": "date-time", "pattern": r"^(1\d{3}|20\d\d)-"}
# An optional id in a query string: empty is the same as absent.
_EMPTY = {"type": "string", "maxLength": 0}
_QUERY_ID = {"anyOf": [_ID, _EMPTY]}
_OBJECT = {"type": "object", "additionalProperties": True}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid input; `error.field` names the offending field.",
        401: "Missing or wrong credentials.",
        404: "Unknown customer, subscription, plan or route.",
        409: "Conflicts with existing state (already exists, already cancelled).",
        413: "Request body larger than the configured limit.",
        422: "Stigg rejected the values.",
        502: "Stigg answered with an error, or rejected the sidecar's API key.",
        503: "Stigg is unreachable or rate limiting; retry later.",
        504: "Stigg did not answer in time.",
    }
    return {
        str(status): {
            "description": text[status],
            "content": {JSON: {"schema": _ref("Error")}},
        }
        for status in statuses
    }


_UPSTREAM_ERRORS = (502, 503, 504)


def _body(schema_name: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": _ref(schema_name)}}}


def _ok(schema_name: str, status: int = 200, description: str = "OK") -> dict[str, Any]:
    return {
        str(status): {"description": description, "content": {JSON: {"schema": _ref(schema_name)}}}
    }


def _query_parameters(model: type[Any], **descriptions: str) -> list[dict[str, Any]]:
    """A route's query parameters from the model its MCP tool takes: the same names and
    constraints, an empty optional parameter read as absent, a list given comma-separated."""
    schema = tool_schema(model)
    parameters = []
    for name, prop in schema["properties"].items():
        prop = {key: value for key, value in prop.items() if key != "description"}
        required = name in schema["required"]
        if prop.get("type") == "array":
            prop = {"type": "string"}
        elif not required:
            prop = {"anyOf": [prop, _EMPTY]}
        description = descriptions.get(name) or schema["properties"][name].get("description", "")
        parameters.append(_param(name, "query", description, required=required, schema=prop))
    return parameters


def _param(
    name: str,
    where: str,
    description: str,
    *,
    required: bool = False,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema or _ID,
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": _string("Stable machine-readable code, e.g. invalid_request."),
                    "message": _string("Human-readable explanation."),
                    "field": _string("The offending field, for invalid input."),
                    "stiggCode": _string("Stigg's own error code, when Stigg answered one."),
                },
            }
        },
    },
    "Customer": {
        "type": "object",
        "properties": {
            "customerId": {"type": "string"},
            "name": _nullable({"type": "string"}),
            "email": _nullable({"type": "string"}),
            "billingId": _nullable({"type": "string"}),
            "createdAt": _nullable(_DATE_TIME),
            "updatedAt": _nullable(_DATE_TIME),
            "additionalMetaData": _nullable(_OBJECT),
            "hasActiveSubscription": {"type": "boolean"},
            "subscriptions": {"type": "array", "items": _ref("Subscription")},
        },
    },
    "ProvisionedCustomer": {
        "type": "object",
        "properties": {
            "customer": _ref("Customer"),
            "subscription": _nullable(_ref("Subscription")),
            "subscriptionDecisionStrategy": {"type": "string"},
        },
    },
    "Subscription": {
        "type": "object",
        "properties": {
            "subscriptionId": {"type": "string"},
            "customerId": _nullable({"type": "string"}),
            "planId": _nullable({"type": "string"}),
            "planName": _nullable({"type": "string"}),
            "resourceId": _nullable({"type": "string"}),
            "status": {"type": "string", "description": "ACTIVE, CANCELED, IN_TRIAL, …"},
            "billingPeriod": _nullable({"type": "string"}),
            "startDate": _nullable(_DATE_TIME),
            "endDate": _nullable(_DATE_TIME),
            "cancellationDate": _nullable(_DATE_TIME),
            "effectiveEndDate": _nullable(_DATE_TIME),
            "currentBillingPeriodEnd": _nullable(_DATE_TIME),
            "additionalMetaData": _nullable(_OBJECT),
        },
    },
    "ProvisionSubscriptionResult": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["SUCCESS", "PAYMENT_REQUIRED"]},
            "checkoutUrl": _nullable({"type": "string"}),
            "subscription": _nullable(_ref("Subscription")),
        },
    },
    "Entitlement": {
        "type": "object",
        "required": ["customerId", "featureId", "hasAccess", "isFallback", "accessDeniedReason"],
        "properties": {
            "customerId": {"type": "string"},
            "featureId": {"type": "string"},
            "resourceId": _nullable({"type": "string"}),
            "hasAccess": {"type": "boolean"},
            "isFallback": {
                "type": "boolean",
                "description": "True when no Stigg state (fresh or stale) was available and a"
                " fallback answered.",
            },
            "fallbackReason": {
                "type": "string",
                "description": "Only when isFallback: why Stigg's state could not be used, e.g."
                " upstream_timeout, upstream_unavailable, upstream_invalid_answer.",
            },
            "source": {
                "type": "string",
                "enum": ["cache", "upstream", "stale", "request", "config", "default"],
                "description": "What answered: cached or just-fetched Stigg state, state past its"
                " fresh TTL (Stigg failing), or the request's / config's / global fallback.",
            },
            "accessDeniedReason": _nullable(
                {
                    "type": "string",
                    "description": "Stigg's AccessDeniedReason when denied, null when granted.",
                    "enum": [
                        "CustomerNotFound",
                        "NoActiveSubscription",
                        "NoFeatureEntitlementInSubscription",
                        "RequestedUsageExceedingLimit",
                        "RequestedValuesMismatch",
                        "FeatureNotFound",
                        "CustomerIsArchived",
                        "Unknown",
                    ],
                }
            ),
            "type": _nullable(
                {"type": "string", "enum": ["BOOLEAN", "NUMERIC", "METERED", "ENUM"]}
            ),
            "usageLimit": _nullable({"type": "number"}),
            "currentUsage": _nullable({"type": "number"}),
            "isUnlimited": {"type": "boolean"},
            "hasSoftLimit": {"type": "boolean"},
            "requestedUsage": _nullable({"type": "number"}),
            "value": _nullable({"type": "number", "description": "Configuration value (NUMERIC)."}),
            "enumValues": _nullable({"type": "array", "items": {"type": "string"}}),
            "requestedValues": _nullable({"type": "array", "items": {"type": "string"}}),
            "resetPeriod": _nullable({"type": "string"}),
            "meterType": _nullable(
                {
                    "type": "string",
                    "description": "METERED: Incremental (usage adds up, reset each period) or"
                    " Fluctuating (usage is a current level, such as seats).",
                }
            ),
            "usagePeriodStart": _nullable(_DATE_TIME),
            "usagePeriodEnd": _nullable(_DATE_TIME),
        },
    },
    "EntitlementList": {
        "type": "object",
        "properties": {
            "customerId": {"type": "string"},
            "resourceId": _nullable({"type": "string"}),
            "accessDeniedReason": _nullable({"type": "string"}),
            "isFallback": {"type": "boolean"},
            "fallbackReason": {"type": "string"},
            "source": {"type": "string"},
            "entitlements": {"type": "array", "items": _ref("Entitlement")},
        },
    },
    "GraphQLRequest": {
        "type": "object",
        "required": ["query"],
        "properties": {
            "query": {"type": "string", "minLength": 1, "pattern": r"\S"},
            "variables": _nullable(_OBJECT),
            "operationName": _nullable({"type": "string"}),
        },
    },
}


def _null_means_absent(schema: dict[str, Any]) -> None:
    """The API reads an optional field given as null as absent: say so in the document."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if isinstance(prop, dict):
            _null_means_absent(prop)
            if name not in required and not _allows_null(prop):
                schema["properties"][name] = _nullable(prop)


def _allows_null(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    return (
        kinds == "null"
        or (isinstance(kinds, list) and "null" in kinds)
        or any(_allows_null(s) for s in schema.get("anyOf", ()))
    )


@cache
def _edge_paths() -> dict[str, Any]:
    """Stigg's edge reads (sidecar/api/edge.py): bodies are Stigg's GraphQL responses."""
    customer = _param("customerId", "path", "The customer's id in Stigg.")
    resource = _param("resourceId", "query", "For multi-resource products.", schema=_QUERY_ID)
    graphql_answer = {
        "200": {
            "description": "`{data}` as Stigg's edge answers, or `{errors}` (CustomerNotFound).",
            "content": {JSON: {"schema": _OBJECT}},
        },
        **_errors(400, *_UPSTREAM_ERRORS),
    }

    def read(operation_id: str, summary: str, *parameters: Any) -> dict[str, Any]:
        return {
            "get": {
                "operationId": operation_id,
                "summary": summary,
                "parameters": list(parameters),
                "responses": graphql_answer,
            }
        }

    number = {"type": "number", "minimum": 0}
    # Read case-insensitively; empty or "undefined" (what a JS SDK may send) is absent.
    flag = {"type": "string", "pattern": "^(?i:true|false|undefined)?$"}
    paywall = (
        _param("billingCountryCode", "query", "Prices for this country.", schema=_QUERY_ID),
        _param("fetchAllCountriesPrices", "query", "Every country's prices.", schema=flag),
        _param("includeHiddenPlans", "query", "Hidden plans too.", schema=flag),
    )
    return {
        "/v1/c/{customerId}/entitlements.json": read(
            "edgeEntitlements",
            "Entitlements from the cache; with featureId one (`data.entitlement`).",
            customer,
            resource,
            _param("featureId", "query", "One feature only.", schema=_QUERY_ID),
            _param(
                "requestedUsage", "query", "With featureId.", schema={"anyOf": [number, _EMPTY]}
            ),
        ),
        "/v1/c/{customerId}/entitlements-state.json": read(
            "edgeEntitlementsState", "entitlementsState, from the cache.", customer, resource
        ),
        "/v1/c/{customerId}/subscriptions.json": read(
            "edgeSubscriptions",
            "Active subscriptions, forwarded (single-flight).",
            customer,
            resource,
            _param("resourceIds", "query", "Several resources (repeated)."),
        ),
        "/v1/paywall.json": read("edgePaywall", "The paywall, cached briefly.", *paywall),
        "/v1/p/{productId}/paywall.json": read(
            "edgeProductPaywall",
            "One product's paywall, cached briefly.",
            _param("productId", "path", "The product's id."),
            *paywall,
        ),
        "/v1/config/server-sdk-configuration.json": read(
            "edgeSdkConfiguration", "What Stigg's Node SDK asks at start-up."
        ),
    }


def openapi_document() -> dict[str, Any]:
    customer_id = _param("customerId", "path", "The customer's id in Stigg.")
    paths: dict[str, Any] = {
        "/v1/customers": {
            "post": {
                "operationId": "provisionCustomer",
                "summary": "Create a customer, optionally with a first subscription.",
                "requestBody": _body("ProvisionCustomerRequest"),
                "responses": {
                    **_ok("ProvisionedCustomer", 201, "Created"),
                    **_errors(400, 404, 409, 413, 422, *_UPSTREAM_ERRORS),
                },
            }
        },
        "/v1/customers/{customerId}": {
            "get": {
                "operationId": "getCustomer",
                "summary": "A customer and their subscriptions.",
                "parameters": [customer_id],
                "responses": {**_ok("Customer"), **_errors(400, 404, *_UPSTREAM_ERRORS)},
            }
        },
        "/v1/subscriptions": {
            "post": {
                "operationId": "createSubscription",
                "summary": "Subscribe a customer to a plan (replaces their current plan).",
                "requestBody": _body("ProvisionSubscriptionRequest"),
                "responses": {
                    **_ok("ProvisionSubscriptionResult", 201, "Created"),
                    **_errors(400, 404, 413, 422, *_UPSTREAM_ERRORS),
                },
            }
        },
        "/v1/subscriptions/{subscriptionId}/cancel": {
            "post": {
                "operationId": "cancelSubscription",
                "summary": "Cancel a subscription (immediately unless said otherwise).",
                "parameters": [_param("subscriptionId", "path", "The subscription's id.")],
                "requestBody": _body("CancelSubscriptionRequest", required=False),
                "responses": {
                    **_ok("Subscription"),
                    **_errors(400, 404, 409, 413, *_UPSTREAM_ERRORS),
                },
            }
        },
        "/v1/entitlements": {
            "get": {
                "operationId": "checkEntitlement",
                "summary": "May this customer use this feature (and this much of it)?",
                "parameters": _query_parameters(
                    CheckArguments,
                    requestedUsage="Metered features: denied when currentUsage + requestedUsage"
                    " > usageLimit. Without it, denied when no usage is left.",
                    requestedValues="Enum features: comma-separated values that must all be"
                    " entitled.",
                ),
                "responses": {**_ok("Entitlement"), **_errors(400, *_UPSTREAM_ERRORS)},
            }
        },
        "/v1/customers/{customerId}/entitlements": {
            "get": {
                "operationId": "getEntitlements",
                "summary": "All of a customer's entitlements.",
                "parameters": [
                    customer_id,
                    _param("resourceId", "query", "For multi-resource products.", schema=_QUERY_ID),
                ],
                "responses": {**_ok("EntitlementList"), **_errors(400, *_UPSTREAM_ERRORS)},
            }
        },
        "/v1/customers/{customerId}/entitlements/reload": {
            "post": {
                "operationId": "reloadEntitlements",
                "summary": "Drop the cached state and fetch it from Stigg now.",
                "parameters": [
                    customer_id,
                    _param("resourceId", "query", "For multi-resource products.", schema=_QUERY_ID),
                ],
                "responses": {**_ok("EntitlementList"), **_errors(400, *_UPSTREAM_ERRORS)},
            }
        },
        "/webhooks/stigg": {
            "post": {
                "operationId": "stiggWebhook",
                "summary": "Stigg webhooks: invalidate the customers they name.",
                "description": "Enabled by SIDECAR_WEBHOOK_SECRET; the Stigg-Webhooks-Secret"
                " header must match it. Repeated messageIds are acknowledged and ignored.",
                "parameters": [
                    _param(
                        "Stigg-Webhooks-Secret",
                        "header",
                        "The shared secret.",
                        required=True,
                        schema={"type": "string"},
                    ),
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": _OBJECT}}},
                "responses": {
                    "200": {
                        "description": "Accepted (or a duplicate).",
                        "content": {JSON: {"schema": _OBJECT}},
                    },
                    **_errors(400, 401, 404, 413),
                },
            }
        },
        "/graphql": {
            "post": {
                "operationId": "graphqlPassthrough",
                "summary": "Any Stigg GraphQL request, forwarded with the sidecar's API key.",
                "description": "The answer is Stigg's, passed through unchanged (a GraphQL"
                " response, also for Stigg's own 4xx); the sidecar's own errors are `Error`s.",
                "requestBody": _body("GraphQLRequest"),
                "responses": {
                    "200": {
                        "description": "Stigg's GraphQL response.",
                        "content": {JSON: {"schema": _OBJECT}},
                    },
                    **_errors(413, *_UPSTREAM_ERRORS),
                    "400": {
                        "description": "Invalid request: the sidecar's `Error`, or Stigg's own"
                        " GraphQL error response.",
                        "content": {JSON: {"schema": {"anyOf": [_ref("Error"), _OBJECT]}}},
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document.",
                        "content": {JSON: {"schema": _OBJECT}},
                    }
                },
            }
        },
    }
    paths["/graphql"]["get"] = {
        "operationId": "graphqlWebsocket",
        "summary": "Realtime websocket (graphql-transport-ws), proxied to Stigg.",
        "description": "The sidecar's API key replaces the one in connection_init; the updates"
        " flowing by keep the sidecar's cache current. realtime.proxyMaxConnections at once.",
        "responses": {
            "101": {"description": "Switching to the websocket."},
            **_errors(400, 503),
        },
    }
    paths.update(_edge_paths())
    paths.update(usage_paths())
    requests = schema_components(
        [
            ProvisionCustomerRequest,
            ProvisionSubscriptionRequest,
            CancelSubscriptionRequest,
            *USAGE_MODELS,
        ]
    )
    schemas = {**_SCHEMAS, **USAGE_SCHEMAS, **requests}
    for schema in schemas.values():
        _null_means_absent(schema)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stigg-sidecar",
            "version": __version__,
            "description": "Local entitlement checks, usage reporting and Stigg passthrough.",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }
