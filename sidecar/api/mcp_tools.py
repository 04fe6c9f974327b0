"""The capability spec's seven operations as MCP tools, on the REST API's service layer.

Each tool validates its arguments with the same model as the matching REST route (its input
schema is generated from that model), calls the same service, and answers the same JSON object
(as ``structuredContent`` and as JSON text).
Every failure is a tool result with ``isError: true`` and the REST API's error object, so an
agent reads what went wrong instead of the client seeing a protocol error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import mcp.types as types
import orjson
from pydantic import Field

from sidecar.api.errors import ApiError, describe_upstream_error
from sidecar.api.json_limits import json_depth_exceeds, too_deep_message
from sidecar.api.rest import MAX_REQUESTED_VALUES
from sidecar.entitlements.model import CheckRequest
from sidecar.provisioning import (
    CancelSubscriptionRequest,
    CustomerRef,
    ProvisionCustomerRequest,
    ProvisionSubscriptionRequest,
    cancel_subscription_input,
    provision_customer_input,
    provision_subscription_input,
)
from sidecar.services import Services
from sidecar.upstream.errors import UpstreamError
from sidecar.usage.model import UsageReport, parse_usage
from sidecar.validation import Id, ValidationError, tool_schema, validate

log = logging.getLogger(__name__)

Arguments = Mapping[str, Any]
ToolFunction = Callable[[Services, Arguments], Awaitable[dict[str, Any]]]

# --- the arguments of the tools without a REST body (the rest take the body's model) --------

_ResourceId = Annotated[
    Id | None, Field(description="The resource (e.g. a workspace) the entitlements are scoped to.")
]


class EntitlementsArguments(CustomerRef):
    """`get-entitlements`."""

    resource_id: _ResourceId = None


class CheckArguments(CustomerRef):
    """`check-entitlement`: the query of `GET /v1/entitlements` as a JSON object."""

    feature_id: Annotated[Id, Field(description="The feature's id, e.g. feature-api-calls.")]
    resource_id: _ResourceId = None
    requested_usage: Annotated[
        float | None,
        Field(ge=0, description="Usage about to be consumed; denied beyond the limit."),
    ] = None
    requested_values: (
        Annotated[
            list[Annotated[str, Field(pattern=r"\S")]],
            Field(
                max_length=MAX_REQUESTED_VALUES,
                description='Enum values that must all be entitled, e.g. ["us", "eu"].',
            ),
        ]
        | None
    ) = None


class CancelArguments(CancelSubscriptionRequest):
    """`cancel-subscription`: the path's id and the REST body in one object."""

    subscription_id: Annotated[Id, Field(description="The subscription (see get-customer).")]


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


async def _provision_customer(services: Services, arguments: Arguments) -> dict[str, Any]:
    payload = provision_customer_input(arguments)
    return await services.provisioning.provision_customer(payload)


async def _get_customer(services: Services, arguments: Arguments) -> dict[str, Any]:
    customer_id = validate(CustomerRef, arguments).customer_id
    return await services.provisioning.get_customer(customer_id)


async def _create_subscription(services: Services, arguments: Arguments) -> dict[str, Any]:
    payload = provision_subscription_input(arguments)
    return await services.provisioning.provision_subscription(payload)


async def _cancel_subscription(services: Services, arguments: Arguments) -> dict[str, Any]:
    subscription_id = validate(CancelArguments, arguments).subscription_id
    body = {key: value for key, value in arguments.items() if key != "subscriptionId"}
    payload = cancel_subscription_input(subscription_id, body)
    return await services.provisioning.cancel_subscription(payload)


async def _check_entitlement(services: Services, arguments: Arguments) -> dict[str, Any]:
    arguments_ = validate(CheckArguments, arguments)
    values = arguments_.requested_values
    check = CheckRequest(
        customer_id=arguments_.customer_id,
        feature_id=arguments_.feature_id,
        resource_id=arguments_.resource_id,
        requested_usage=arguments_.requested_usage,
        requested_values=tuple(v.strip() for v in values) or None if values else None,
    )
    return await services.entitlements.check(check)


async def _get_entitlements(services: Services, arguments: Arguments) -> dict[str, Any]:
    arguments_ = validate(EntitlementsArguments, arguments)
    return await services.entitlements.list(arguments_.customer_id, arguments_.resource_id)


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
        input_schema=tool_schema(ProvisionCustomerRequest),
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
        input_schema=tool_schema(CustomerRef),
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
        input_schema=tool_schema(ProvisionSubscriptionRequest),
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
        input_schema=tool_schema(CancelArguments),
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
        input_schema=tool_schema(CheckArguments),
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
        input_schema=tool_schema(EntitlementsArguments),
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
        input_schema=tool_schema(UsageReport),
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
