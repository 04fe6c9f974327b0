"""Which customers a webhook or a passed-through GraphQL mutation is about."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import graphql
import orjson


def customer_ids(payload: Any) -> Iterator[str]:
    """Every customer named anywhere in a JSON value (``customerId``, ``customer.{refId,id}``)."""
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key == "customerId" and isinstance(value, str):
                yield value
            elif key == "customer" and isinstance(value, dict):
                # Stigg's webhooks and responses put the customer's own id in one of these.
                for id_key in ("customerId", "refId", "id"):
                    if isinstance(value.get(id_key), str):
                        yield value[id_key]
                        break
            yield from customer_ids(value)
    elif isinstance(payload, list):
        for item in payload:
            yield from customer_ids(item)


def mutated_customers(request: Mapping[str, Any], response_body: bytes) -> set[str]:
    """Customers a GraphQL request may have changed: none unless it runs a mutation."""
    query = request.get("query")
    if not isinstance(query, str) or "mutation" not in query:
        return set()  # cheap exit for the common case: queries
    try:
        document = graphql.parse(query)
    except graphql.GraphQLError:
        return set()
    name = request.get("operationName")
    operations = [
        d
        for d in document.definitions
        if isinstance(d, graphql.OperationDefinitionNode)
        and (not name or (d.name is not None and d.name.value == name))
    ]
    if not any(op.operation is graphql.OperationType.MUTATION for op in operations):
        return set()
    found = set(customer_ids(request.get("variables")))
    found.update(_literal_customer_ids(document))
    with contextlib.suppress(orjson.JSONDecodeError):
        found.update(customer_ids(orjson.loads(response_body)))
    return found


def _literal_customer_ids(document: graphql.DocumentNode) -> set[str]:
    """``customerId: "…"`` written inline in the document rather than as a variable."""
    found: set[str] = set()

    class Visitor(graphql.Visitor):
        def enter_object_field(self, node: graphql.ObjectFieldNode, *_: Any) -> None:
            self._collect(node.name.value, node.value)

        def enter_argument(self, node: graphql.ArgumentNode, *_: Any) -> None:
            self._collect(node.name.value, node.value)

        def _collect(self, name: str, value: graphql.ValueNode) -> None:
            if name == "customerId" and isinstance(value, graphql.StringValueNode):
                found.add(value.value)

    graphql.visit(document, Visitor())
    return found
