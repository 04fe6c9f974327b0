"""Hypothesis strategies for Stigg's answers to one document, driven by the schema.

For a document, ``answer_values(document)`` draws the root field's value valid by Stigg's schema
for exactly that selection set: null wherever the type is nullable, lists of random length,
every enum value (and, when asked, values Stigg may add later), scalars of the declared type,
plus unknown extra fields. ``http_answers(document)`` wraps such values in what can come back
over HTTP: a plain ``data`` answer, GraphQL errors with or without ``extensions.code``, with or
without ``data``, partial data, and HTTP 4xx/5xx with JSON or non-JSON bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import graphql
import orjson
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLUnionType,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from hypothesis import strategies as st

from tests.contract.test_documents import stigg_schema

MAX_LIST = 4
# Codes Stigg's SDKs special-case, and some the sidecar has never heard of.
ERROR_CODES = (
    "CustomerNotFound",
    "SubscriptionNotFound",
    "PlanNotFound",
    "FeatureNotFound",
    "DuplicatedEntityNotAllowed",
    "SubscriptionAlreadyCanceledOrExpired",
    "RateLimitExceeded",
    "BadUserInput",
    "BAD_USER_INPUT",
    "InvalidArgumentError",
    "GRAPHQL_VALIDATION_FAILED",
    "INTERNAL_SERVER_ERROR",
    "Unauthenticated",
    "SomeFutureErrorCode",
)
UNKNOWN_ENUM_VALUE = "SOME_FUTURE_VALUE"

_identifiers = st.text("abcdefgh-0123456789", min_size=1, max_size=12)
_texts = st.one_of(_identifiers, st.text(max_size=12))
_dates = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), _identifiers)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_identifiers, inner, max_size=3)
    ),
    max_leaves=6,
)
_floats = st.one_of(
    st.integers(-1000, 1_000_000), st.floats(-1e9, 1e12, allow_nan=False, allow_infinity=False)
)
SCALARS: Mapping[str, st.SearchStrategy[Any]] = {
    "String": _texts,
    "ID": _identifiers,
    "Boolean": st.booleans(),
    "Int": st.integers(-(2**31), 2**31 - 1),
    "Float": _floats,
    "DateTime": _dates,
    "UUID": st.uuids().map(str),
    "JSON": _json,
    "JSONObject": st.dictionaries(_identifiers, _json, max_size=3),
}


@dataclass(frozen=True)
class Document:
    """One parsed document: its operation's root type, root field and fragments."""

    root_field: str
    root_type: GraphQLObjectType
    selection: SelectionSetNode
    fragments: Mapping[str, FragmentDefinitionNode]


@cache
def parse_document(text: str) -> Document:
    schema = stigg_schema()
    parsed = graphql.parse(text)
    [operation] = [d for d in parsed.definitions if isinstance(d, OperationDefinitionNode)]
    root_type = schema.get_root_type(operation.operation)
    assert root_type is not None
    fragments = {
        d.name.value: d for d in parsed.definitions if isinstance(d, FragmentDefinitionNode)
    }
    [field] = operation.selection_set.selections
    assert isinstance(field, FieldNode)
    return Document(field.name.value, root_type, operation.selection_set, fragments)


def _fields(
    selection: SelectionSetNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    type_name: str | None = None,
) -> list[FieldNode]:
    """The fields selected for an object of ``type_name``, fragments expanded: a fragment on
    another object type (one member of a union) does not apply."""
    found: list[FieldNode] = []
    for node in selection.selections:
        if isinstance(node, FieldNode):
            found.append(node)
            continue
        if isinstance(node, InlineFragmentNode):
            condition, inner = node.type_condition, node.selection_set
        elif isinstance(node, FragmentSpreadNode):
            fragment = fragments[node.name.value]
            condition, inner = fragment.type_condition, fragment.selection_set
        else:
            continue
        if _applies(condition.name.value if condition else None, type_name):
            found.extend(_fields(inner, fragments, type_name))
    return found


def _applies(condition: str | None, type_name: str | None) -> bool:
    if condition is None or type_name is None or condition == type_name:
        return True
    # A condition on an interface or union holds for its members; on another object, not.
    return not isinstance(stigg_schema().get_type(condition), GraphQLObjectType)


def _value(
    field_type: GraphQLOutputType,
    node: FieldNode,
    doc: Document,
    *,
    unknown_enums: bool,
    extra_fields: bool,
) -> st.SearchStrategy[Any]:
    if isinstance(field_type, GraphQLNonNull):
        return _non_null_value(
            field_type.of_type, node, doc, unknown_enums=unknown_enums, extra_fields=extra_fields
        )
    inner = _non_null_value(
        field_type, node, doc, unknown_enums=unknown_enums, extra_fields=extra_fields
    )
    return st.one_of(st.none(), inner)


def _non_null_value(
    field_type: GraphQLOutputType,
    node: FieldNode,
    doc: Document,
    *,
    unknown_enums: bool,
    extra_fields: bool,
) -> st.SearchStrategy[Any]:
    if isinstance(field_type, GraphQLNonNull):
        field_type = field_type.of_type
    if isinstance(field_type, GraphQLList):
        item = _value(
            field_type.of_type, node, doc, unknown_enums=unknown_enums, extra_fields=extra_fields
        )
        return st.lists(item, max_size=MAX_LIST)
    if isinstance(field_type, GraphQLEnumType):
        values = sorted(field_type.values)
        if unknown_enums:
            values.append(UNKNOWN_ENUM_VALUE)
        return st.sampled_from(values)
    if isinstance(field_type, GraphQLScalarType):
        return SCALARS[field_type.name]
    assert node.selection_set is not None
    if isinstance(field_type, GraphQLUnionType | GraphQLInterfaceType):
        # One of the concrete types, each with the fields selected for it.
        members = stigg_schema().get_possible_types(field_type)
        return st.one_of(
            *(
                _object(
                    member,
                    node.selection_set,
                    doc,
                    unknown_enums=unknown_enums,
                    extra_fields=extra_fields,
                )
                for member in sorted(members, key=lambda t: t.name)
            )
        )
    assert isinstance(field_type, GraphQLObjectType), field_type
    return _object(
        field_type, node.selection_set, doc, unknown_enums=unknown_enums, extra_fields=extra_fields
    )


def _object(
    object_type: GraphQLObjectType,
    selection: SelectionSetNode,
    doc: Document,
    *,
    unknown_enums: bool,
    extra_fields: bool,
) -> st.SearchStrategy[dict[str, Any]]:
    members: dict[str, st.SearchStrategy[Any]] = {}
    for node in _fields(selection, doc.fragments, object_type.name):
        key = (node.alias or node.name).value
        if node.name.value == "__typename":
            members[key] = st.just(object_type.name)
            continue
        members[key] = _value(
            object_type.fields[node.name.value].type,
            node,
            doc,
            unknown_enums=unknown_enums,
            extra_fields=extra_fields,
        )
    fixed = st.fixed_dictionaries(members)
    if not extra_fields:
        return fixed
    extras = st.dictionaries(st.sampled_from(["newField", "__typename", "meta"]), _json, max_size=2)
    return st.tuples(fixed, extras).map(lambda pair: {**pair[1], **pair[0]})


def answer_values(
    text: str, *, unknown_enums: bool = False, extra_fields: bool = False
) -> st.SearchStrategy[Any]:
    """The root field's value, valid by the schema for exactly ``text``'s selection set
    (plus unknown enum values and extra fields when asked)."""
    doc = parse_document(text)
    [node] = _fields(doc.selection, doc.fragments)
    field_type = doc.root_type.fields[doc.root_field].type
    return _value(field_type, node, doc, unknown_enums=unknown_enums, extra_fields=extra_fields)


@dataclass(frozen=True)
class HttpAnswer:
    """One HTTP answer from the fake Stigg; ``timeout``: none at all, the read times out."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    timeout: bool = False
    kind: str = "data"  # data | errors | partial | http_error | timeout

    @property
    def is_success(self) -> bool:
        """Whether a GraphQL client would see the root field's value (possibly partial)."""
        return self.kind in ("data", "partial")


def _error_objects() -> st.SearchStrategy[list[Any]]:
    extensions = st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"code": st.sampled_from(ERROR_CODES)},
            optional={"isValidationError": st.booleans(), "identifier": _identifiers},
        ),
        st.fixed_dictionaries({}, optional={"isValidationError": st.booleans()}),
    )
    error = st.builds(
        lambda message, ext, path: {
            k: v
            for k, v in {"message": message, "extensions": ext, "path": path}.items()
            if v is not None
        },
        _texts,
        extensions,
        st.one_of(st.none(), st.just(["root"])),
    )
    return st.lists(error, min_size=1, max_size=3)


def http_answers(text: str) -> st.SearchStrategy[HttpAnswer]:
    """Every kind of answer Stigg (or what stands in front of it) may send to ``text``."""
    root = parse_document(text).root_field
    values = answer_values(text, unknown_enums=True, extra_fields=True)
    json_ = "application/json"

    def dumps(payload: Any) -> bytes:
        return orjson.dumps(payload)

    plain = values.map(lambda v: HttpAnswer(200, dumps({"data": {root: v}}), json_, kind="data"))
    with_extensions = values.map(
        lambda v: HttpAnswer(
            200, dumps({"data": {root: v}, "extensions": {"cost": 1}}), json_, kind="data"
        )
    )
    errors_only = st.builds(
        lambda errors, status, with_data: HttpAnswer(
            status,
            dumps({"errors": errors, "data": None} if with_data else {"errors": errors}),
            json_,
            kind="errors",
        ),
        _error_objects(),
        st.sampled_from([200, 200, 400]),
        st.booleans(),
    )
    null_root = _error_objects().map(
        lambda errors: HttpAnswer(
            200, dumps({"errors": errors, "data": {root: None}}), json_, kind="errors"
        )
    )
    partial = st.tuples(values, _error_objects()).map(
        lambda pair: HttpAnswer(
            200,
            dumps({"errors": pair[1], "data": {root: pair[0]}}),
            json_,
            kind="partial" if pair[0] is not None else "errors",
        )
    )
    http_error = st.builds(
        lambda status, body, content_type: HttpAnswer(
            status, body, content_type, kind="http_error"
        ),
        st.sampled_from([400, 401, 403, 404, 405, 413, 429, 500, 502, 503, 504]),
        st.sampled_from(
            [b"<html><body>502 Bad Gateway</body></html>", b"", b"Too Many Requests", b"{}"]
        ),
        st.sampled_from(["text/html", "text/plain", json_]),
    )
    odd_json = st.sampled_from([b"[]", b"null", b"42", b'{"data": null}', b'{"data": {}}']).map(
        lambda body: HttpAnswer(200, body, json_, kind="http_error")
    )
    timeout = st.just(HttpAnswer(timeout=True, kind="timeout"))
    return st.one_of(
        plain, plain, plain, with_extensions, errors_only, null_root, partial, http_error,
        odd_json, timeout,
    )  # fmt: skip
