"""Stigg's schema with the emulator's root resolvers, a document cache, and execution.

The schema is built once per process and shared by every emulator instance; resolvers find
their ``EmulatorState`` in the execution context. Documents are parsed and validated once per
distinct query string, since validating the official client's large documents costs tens of
milliseconds.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from inspect import isawaitable
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    build_schema,
    execute,
    is_abstract_type,
    is_enum_type,
    is_list_type,
    is_non_null_type,
    is_scalar_type,
    parse,
    validate,
)

from sidecar.emulator.catalog_reads import CATALOG_RESOLVERS
from sidecar.emulator.fields import Info, Resolver, state_of, stigg_errors
from sidecar.emulator.reads import READ_RESOLVERS
from sidecar.emulator.state import EmulatorState

log = logging.getLogger(__name__)

SCHEMA_FILE = Path(__file__).parent / "schema" / "stigg.graphql"
DOCUMENT_CACHE_SIZE = 512

JsonDict = dict[str, Any]

# --- root resolvers ---------------------------------------------------------------------------


@stigg_errors
def _entitlements_state(_root: object, info: Info, **args: Any) -> Any:
    query = args["query"]
    return state_of(info).entitlements_state(query["customerId"], query.get("resourceId"))


@stigg_errors
def _get_customer(_root: object, info: Info, **args: Any) -> Any:
    state, customer_id = state_of(info), args["input"]["customerId"]
    if state.null_for_missing and state.customer(customer_id) is None:
        return None  # nullable: Stigg may answer an unknown customer with null, not an error
    return state.get_customer(customer_id)


@stigg_errors
def _provision_customer(_root: object, info: Info, **args: Any) -> Any:
    return state_of(info).provision_customer(args["input"])


@stigg_errors
def _provision_subscription(_root: object, info: Info, **args: Any) -> Any:
    return state_of(info).provision_subscription(args["input"])


@stigg_errors
def _cancel_subscription(_root: object, info: Info, **args: Any) -> Any:
    return state_of(info).cancel_subscription(args["input"])


@stigg_errors
def _report_usage(_root: object, info: Info, **args: Any) -> Any:
    return state_of(info).report_usage(args["input"])


@stigg_errors
def _report_usage_bulk(_root: object, info: Info, **args: Any) -> Any:
    return state_of(info).report_usage_bulk(args["input"]["usages"])


@stigg_errors
def _report_event(_root: object, info: Info, **args: Any) -> Any:
    state_of(info).report_events(args["events"]["usageEvents"])
    return None


ROOT_RESOLVERS: Mapping[str, Resolver] = {
    "entitlementsState": _entitlements_state,
    "getCustomerByRefId": _get_customer,
    "provisionCustomer": _provision_customer,
    "provisionSubscriptionV2": _provision_subscription,
    "cancelSubscription": _cancel_subscription,
    "reportUsage": _report_usage,
    "reportUsageBulk": _report_usage_bulk,
    "reportEvent": _report_event,
    **READ_RESOLVERS,
    **CATALOG_RESOLVERS,
}


def _unsupported(name: str) -> Resolver:
    def resolver(_root: object, _info: Info, **_args: Any) -> Any:
        raise GraphQLError(
            f"{name} is not supported by the emulator", extensions={"code": "Unsupported"}
        )

    return resolver


@functools.cache
def stigg_schema() -> GraphQLSchema:
    """Stigg's schema, built on first use, every root field bound to a resolver."""
    schema = build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))
    for root in (schema.query_type, schema.mutation_type):
        if root is None:
            continue
        for name, field in root.fields.items():
            field.resolve = ROOT_RESOLVERS.get(name) or _unsupported(name)
    return schema


# --- field resolution -------------------------------------------------------------------------

_MISSING = object()
_SCALAR_PLACEHOLDERS: Mapping[str, Any] = {
    "Boolean": False,
    "Int": 0,
    "Float": 0.0,
    "DateTime": "1970-01-01T00:00:00.000Z",
    "UUID": "00000000-0000-0000-0000-000000000000",
    "JSON": {},
    "JSONObject": {},
}


def resolve_field(source: Any, info: Info, **args: Any) -> Any:
    """Dict lookup like graphql-core's default, calling lazy values; for a field the emulator
    does not model, null if nullable, else an empty value of its type (so any valid document
    gets a complete answer rather than a non-null violation)."""
    if isinstance(source, Mapping):
        value = source.get(info.field_name, _MISSING)
    else:
        value = getattr(source, info.field_name, _MISSING)
    if value is _MISSING:
        return _placeholder(info.return_type, info.schema)
    if callable(value):
        return value(info, **args)
    return value


def _placeholder(field_type: GraphQLOutputType, schema: GraphQLSchema) -> Any:
    if not is_non_null_type(field_type):
        return None
    inner = field_type.of_type
    if is_list_type(inner):
        return []
    if is_enum_type(inner):
        return next(iter(inner.values))
    if is_scalar_type(inner):
        return _SCALAR_PLACEHOLDERS.get(inner.name, "")
    if is_abstract_type(inner):
        return {"__typename": schema.get_possible_types(inner)[0].name}
    return {}


# --- documents --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    name: str | None
    kind: OperationType
    root_fields: tuple[str, ...]


@dataclass(frozen=True)
class PreparedDocument:
    """A query string parsed and validated once; ``error_code`` set when it cannot run."""

    document: DocumentNode | None
    error_code: str | None = None
    errors: tuple[JsonDict, ...] = ()
    operations: tuple[Operation, ...] = ()

    def operation(self, name: str | None) -> Operation | str:
        """The operation to run, or why none can be chosen."""
        if name:
            for operation in self.operations:
                if operation.name == name:
                    return operation
            return f'Unknown operation named "{name}".'
        if len(self.operations) == 1:
            return self.operations[0]
        return "Must provide operation name if query contains multiple operations."


@functools.lru_cache(maxsize=DOCUMENT_CACHE_SIZE)
def prepare(query: str) -> PreparedDocument:
    try:
        document = parse(query)
    except GraphQLError as exc:
        return PreparedDocument(None, "GRAPHQL_PARSE_FAILED", (_request_error(exc, ""),))
    errors = validate(stigg_schema(), document)
    if errors:
        formatted = tuple(_request_error(e, "GRAPHQL_VALIDATION_FAILED") for e in errors)
        return PreparedDocument(None, "GRAPHQL_VALIDATION_FAILED", formatted)
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    operations = tuple(
        Operation(
            name=d.name.value if d.name else None,
            kind=d.operation,
            root_fields=tuple(dict.fromkeys(_root_fields(d.selection_set, fragments))),
        )
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    )
    return PreparedDocument(document, operations=operations)


def _root_fields(
    selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> list[str]:
    names: list[str] = []
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if not selection.name.value.startswith("__"):
                names.append(selection.name.value)
        elif isinstance(selection, InlineFragmentNode):
            names.extend(_root_fields(selection.selection_set, fragments))
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                names.extend(_root_fields(fragment.selection_set, fragments))
    return names


def _request_error(error: GraphQLError, code: str) -> JsonDict:
    formatted: JsonDict = dict(error.formatted)
    formatted["extensions"] = {"code": code or "GRAPHQL_PARSE_FAILED"}
    return formatted


# --- execution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What ``/graphql`` sends back: an HTTP status and a JSON body."""

    status: int
    body: JsonDict
    # False when the request failed before any resolver ran (variable coercion).
    executed: bool = True


def run(
    state: EmulatorState,
    prepared: PreparedDocument,
    operation: Operation,
    variables: Mapping[str, Any] | None,
) -> Answer:
    assert prepared.document is not None
    result = execute(
        stigg_schema(),
        prepared.document,
        context_value=state,
        variable_values=dict(variables) if variables is not None else None,
        operation_name=operation.name,
        field_resolver=resolve_field,
    )
    if isawaitable(result):  # every resolver is synchronous, so this is a bug
        raise TypeError("emulator resolvers must be synchronous")
    errors = result.errors or []
    if result.data is None and errors and all(e.path is None for e in errors):
        # Apollo answers variable coercion problems before execution with 400.
        body = {"errors": [_request_error(e, "BAD_USER_INPUT") for e in errors]}
        return Answer(400, body, executed=False)
    payload: JsonDict = {"data": result.data}
    if errors:
        payload["errors"] = [_field_error(e) for e in errors]
    return Answer(200, payload)


def _field_error(error: GraphQLError) -> JsonDict:
    formatted: JsonDict = dict(error.formatted)
    if not formatted.get("extensions"):
        # Not one of ours: a resolver bug or an unmodelled non-null. Visible, not fatal.
        if error.original_error is not None:
            log.error("emulator resolver failed: %r", error.original_error)
        formatted["extensions"] = {"code": "INTERNAL_SERVER_ERROR"}
    return formatted
