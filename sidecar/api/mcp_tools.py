"""The capability spec's seven operations as MCP tools, on the REST API's service layer.

Each tool validates its arguments with the same functions as the matching REST route, calls
the same service, and answers the same JSON object (as ``structuredContent`` and as JSON text).
Every failure is a tool result with ``isError: true`` and the REST API's error object, so an
agent reads what went wrong instead of the client seeing a protocol error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp.types as types
import orjson

from sidecar.api.errors import ApiError, describe_upstream_error
from sidecar.api.json_limits import json_depth_exceeds, too_deep_message
from sidecar.api.rest import MAX_REQUESTED_VALUES
from sidecar.entitlements.model import CheckRequest
from sidecar.provisioning import (
    BILLING_PERIODS,
    CANCELLATION_TIMES,
    cancel_subscription_input,
    provision_customer_input,
    provision_subscription_input,
)
from sidecar.services import Services
from sidecar.upstream.errors import UpstreamError
from sidecar.usage.model import UPDATE_BEHAVIORS, parse_usage
from sidecar.validation import Fields, ValidationError, id_schema

log = logging.getLogger(__name__)

Arguments = Mapping[str, Any]
ToolFunction = Callable[[Services, Arguments], Awaitable[dict[str, Any]]]

# --- JSON schemas (camelCase like the REST API; unknown properties are rejected) ---------


def _id(description: str) -> dict[str, Any]:
    return id_schema(description + " (letters, digits and _.:@+-).")


def _object(
    properties: dict[str, Any], required: tuple[str, ...] = (), description: str | None = None
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }
    if description is not None:
        schema["description"] = description
    return schema


_METADATA = {
    "type": "object",
    "description": "Free-form key/value metadata stored with the entity in Stigg.",
}
_DATE_TIME = {"type": "string", "format": "date-time"}

_SUBSCRIPTION_PROPERTIES: dict[str, Any] = {
    "planId": _id("The plan to subscribe to, e.g. plan-pro"),
    "billingPeriod": {"type": "string", "enum": list(BILLING_PERIODS)},
    "unitQuantity": {"type": "number", "minimum": 1, "description": "Seats or units."},
    "resourceId": _id("The resource (e.g. a workspace) this subscription is for"),
    "subscriptionId": _id("Your id for the new subscription; Stigg makes one up if omitted"),
    "additionalMetaData": _METADATA,
    "startDate": {**_DATE_TIME, "description": "When the subscription starts (ISO-8601)."},
}

_CUSTOMER_ID = _id("The customer's id in Stigg")
_FEATURE_ID = _id("The feature's id in Stigg, e.g. feature-api-calls")
_RESOURCE_ID = _id("Optional resource (e.g. a workspace) the entitlement is scoped to")


@dataclass(frozen=True)
class ToolSpec:
    """One tool: what ``tools/list`` shows and the function ``tools/call`` runs."""

    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool
    destructive: bool
    idempotent: bool
    run: ToolFunction

    def to_mcp(self) -> types.Tool:
        """The tool as ``tools/list`` shows it."""
        return types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=self.input_schema,
            annotations=types.ToolAnnotations(
                title=self.title,
                read_only_hint=self.read_only,
                destructive_hint=self.destructive,
                idempotent_hint=self.idempotent,
                # The tools act on the account's own customers and catalog, not the open web.
                open_world_hint=False,
            ),
        )


# --- the tools: argument validation as in sidecar/api/rest.py, then the same service call ---


def _fields(arguments: Arguments, allowed: tuple[str, ...]) -> Fields:
    return Fields(arguments, allowed=allowed)


def _required_id(fields: Fields, key: str) -> str:
    value = fields.identifier(key, required=True)
    assert value is not None  # required=True raises instead
    return value


async def _provision_customer(services: Services, arguments: Arguments) -> dict[str, Any]:
    payload = provision_customer_input(arguments)
    return await services.provisioning.provision_customer(payload)


async def _get_customer(services: Services, arguments: Arguments) -> dict[str, Any]:
    customer_id = _required_id(_fields(arguments, ("customerId",)), "customerId")
    return await services.provisioning.get_customer(customer_id)


async def _create_subscription(services: Services, arguments: Arguments) -> dict[str, Any]:
    payload = provision_subscription_input(arguments)
    return await services.provisioning.provision_subscription(payload)


async def _cancel_subscription(services: Services, arguments: Arguments) -> dict[str, Any]:
    fields = _fields(arguments, ("subscriptionId", "cancellationTime", "endDate"))
    subscription_id = _required_id(fields, "subscriptionId")
    body = {key: value for key, value in arguments.items() if key != "subscriptionId"}
    payload = cancel_subscription_input(subscription_id, body)
    return await services.provisioning.cancel_subscription(payload)


def _requested_values(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValidationError("requestedValues", "must be a list of non-empty strings")
    if len(value) > MAX_REQUESTED_VALUES:
        raise ValidationError("requestedValues", f"at most {MAX_REQUESTED_VALUES} values")
    return tuple(v.strip() for v in value) or None


async def _check_entitlement(services: Services, arguments: Arguments) -> dict[str, Any]:
    fields = _fields(
        arguments, ("customerId", "featureId", "resourceId", "requestedUsage", "requestedValues")
    )
    check = CheckRequest(
        customer_id=_required_id(fields, "customerId"),
        feature_id=_required_id(fields, "featureId"),
        resource_id=fields.identifier("resourceId"),
        requested_usage=fields.number("requestedUsage", minimum=0),
        requested_values=_requested_values(arguments.get("requestedValues")),
    )
    return await services.entitlements.check(check)


async def _get_entitlements(services: Services, arguments: Arguments) -> dict[str, Any]:
    fields = _fields(arguments, ("customerId", "resourceId"))
    customer_id = _required_id(fields, "customerId")
    return await services.entitlements.list(customer_id, fields.identifier("resourceId"))


async def _report_usage(services: Services, arguments: Arguments) -> dict[str, Any]:
    report = parse_usage(arguments)
    return await services.usage.report(report)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="provision-customer",
        title="Provision customer",
        description=(
            "Create a new customer in Stigg, optionally subscribed to a plan at once "
            "(subscriptionParams). Use it when a new user, team or company signs up. "
            "Fails with a conflict if the customerId already exists: use get-customer to look "
            "one up first when unsure."
        ),
        input_schema=_object(
            {
                "customerId": _id("Your id for the new customer"),
                "name": {"type": "string", "maxLength": 500},
                "email": {"type": "string", "maxLength": 320},
                "billingId": {
                    "type": "string",
                    "maxLength": 255,
                    "description": "The customer's id in the billing system.",
                },
                "additionalMetaData": _METADATA,
                "subscriptionParams": _object(
                    _SUBSCRIPTION_PROPERTIES,
                    ("planId",),
                    "Subscribe the new customer to this plan right away.",
                ),
            },
            ("customerId",),
        ),
        read_only=False,
        destructive=False,
        idempotent=False,
        run=_provision_customer,
    ),
    ToolSpec(
        name="get-customer",
        title="Get customer",
        description=(
            "Look up a customer by id: name, email, metadata and subscriptions (plan, status, "
            "billing period, dates). Use it to see which plan a customer is on or whether "
            "they exist; it changes nothing."
        ),
        input_schema=_object({"customerId": _CUSTOMER_ID}, ("customerId",)),
        read_only=True,
        destructive=False,
        idempotent=True,
        run=_get_customer,
    ),
    ToolSpec(
        name="create-subscription",
        title="Create subscription",
        description=(
            "Subscribe an existing customer to a plan (new subscription, upgrade or downgrade). "
            "Use it when a customer picks or changes a plan; the answer carries the "
            "subscription and its status. Pass subscriptionId to choose its id."
        ),
        input_schema=_object(
            {"customerId": _CUSTOMER_ID, **_SUBSCRIPTION_PROPERTIES}, ("customerId", "planId")
        ),
        read_only=False,
        destructive=False,
        idempotent=False,
        run=_create_subscription,
    ),
    ToolSpec(
        name="cancel-subscription",
        title="Cancel subscription",
        description=(
            "Cancel a subscription by its id: the customer loses the plan's entitlements, "
            "immediately by default or at cancellationTime. Use it only when the customer or "
            "operator asked to cancel. Cancelling again has no further effect (it reports a "
            "conflict)."
        ),
        input_schema=_object(
            {
                "subscriptionId": _id("The subscription to cancel (see get-customer)"),
                "cancellationTime": {"type": "string", "enum": list(CANCELLATION_TIMES)},
                "endDate": {
                    **_DATE_TIME,
                    "description": "End date when cancellationTime is SPECIFIC_DATE.",
                },
            },
            ("subscriptionId",),
        ),
        read_only=False,
        destructive=True,
        idempotent=True,
        run=_cancel_subscription,
    ),
    ToolSpec(
        name="check-entitlement",
        title="Check entitlement",
        description=(
            "Ask whether a customer may use one feature now: hasAccess, the reason when denied "
            "and, for metered features, usageLimit and currentUsage. Use it before doing work "
            "a plan may not include; pass requestedUsage to ask whether that much more usage "
            "fits, or requestedValues for an enum feature. It changes nothing."
        ),
        input_schema=_object(
            {
                "customerId": _CUSTOMER_ID,
                "featureId": _FEATURE_ID,
                "resourceId": _RESOURCE_ID,
                "requestedUsage": {
                    "type": "number",
                    "minimum": 0,
                    "description": "Usage about to be consumed; denied if it exceeds the limit.",
                },
                "requestedValues": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "maxItems": MAX_REQUESTED_VALUES,
                    "description": 'Enum values that must all be entitled, e.g. ["us", "eu"].',
                },
            },
            ("customerId", "featureId"),
        ),
        read_only=True,
        destructive=False,
        idempotent=True,
        run=_check_entitlement,
    ),
    ToolSpec(
        name="get-entitlements",
        title="Get entitlements",
        description=(
            "List everything a customer is entitled to: every feature with its access, limits "
            "and current usage. Use it to explain a customer's plan or to compare plans; to "
            "gate one action, check-entitlement is enough. It changes nothing."
        ),
        input_schema=_object(
            {"customerId": _CUSTOMER_ID, "resourceId": _RESOURCE_ID}, ("customerId",)
        ),
        read_only=True,
        destructive=False,
        idempotent=True,
        run=_get_entitlements,
    ),
    ToolSpec(
        name="report-usage",
        title="Report usage",
        description=(
            "Record usage of a metered feature after it happened, e.g. 10 API calls. Adds "
            "value to the current usage (updateBehavior DELTA, the default) or sets it (SET). "
            "Pass an idempotencyKey and reuse it when retrying: a report with a key already "
            "seen is counted once."
        ),
        input_schema=_object(
            {
                "customerId": _CUSTOMER_ID,
                "featureId": _FEATURE_ID,
                "value": {"type": "number", "description": "Amount used (or the new total)."},
                "resourceId": _RESOURCE_ID,
                "updateBehavior": {"type": "string", "enum": list(UPDATE_BEHAVIORS)},
                "idempotencyKey": {"type": "string", "minLength": 1, "maxLength": 255},
                "timestamp": {**_DATE_TIME, "description": "When it was used; default now."},
                "dimensions": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                    "description": "Extra attributes of the usage event.",
                },
            },
            ("customerId", "featureId", "value"),
        ),
        read_only=False,
        destructive=False,
        idempotent=False,
        run=_report_usage,
    ),
)

TOOLS_BY_NAME: dict[str, ToolSpec] = {tool.name: tool for tool in TOOLS}


# --- results -------------------------------------------------------------------------------


def _result(
    data: dict[str, Any], *, is_error: bool, text: str | None = None
) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text or orjson.dumps(data).decode())],
        structured_content=data,
        is_error=is_error,
    )


def tool_error(code: str, message: str, **extra: Any) -> types.CallToolResult:
    """The REST API's error object as a tool error; the text says it in one line."""
    error: dict[str, Any] = {"code": code, "message": message}
    error.update({key: value for key, value in extra.items() if value is not None})
    text = f"{code}: {message}"
    if extra.get("stiggCode"):
        text += f" (Stigg error {extra['stiggCode']})"
    return _result({"error": error}, is_error=True, text=text)


async def call_tool(
    services: Services, name: str, arguments: Arguments | None
) -> types.CallToolResult:
    """Run one tool; every failure becomes a tool error, never a protocol error."""
    tool = TOOLS_BY_NAME.get(name)
    if tool is None:
        known = ", ".join(TOOLS_BY_NAME)
        return tool_error("unknown_tool", f"no tool named {name!r} (tools: {known})")
    if arguments is not None and json_depth_exceeds(arguments):
        return tool_error("json_too_deep", "arguments: " + too_deep_message())
    try:
        data = await tool.run(services, arguments if arguments is not None else {})
    except ValidationError as exc:
        return tool_error("invalid_request", str(exc), field=exc.field or None)
    except ApiError as exc:
        return tool_error(exc.code, exc.message, **exc.extra)
    except UpstreamError as exc:
        log.warning("mcp %s: stigg %s failed: %s (%s)", name, exc.operation, exc.code, exc.message)
        failure = describe_upstream_error(exc)
        return tool_error(failure.code, failure.message, stiggCode=failure.stigg_code)
    except Exception:
        log.exception("mcp %s: unhandled error", name)
        return tool_error("internal_error", "internal error; see the sidecar's log")
    return _result(data, is_error=False)
