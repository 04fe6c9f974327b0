"""What every root resolver shares: the typed resolve info, the state, Stigg's errors, and
Relay-style connections over in-memory lists."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from graphql import GraphQLResolveInfo

from sidecar.emulator.errors import stigg_error
from sidecar.emulator.state import EmulatorError, EmulatorState

JsonDict = dict[str, Any]
Resolver = Callable[..., Any]

if TYPE_CHECKING:
    # Generic over the context type since graphql-core 3.3; the context is the state.
    Info: TypeAlias = GraphQLResolveInfo[EmulatorState]
else:
    Info = GraphQLResolveInfo


def state_of(info: Info) -> EmulatorState:
    return info.context


def stigg_errors(resolver: Resolver) -> Resolver:
    """Turn ``EmulatorError`` into the GraphQL error Stigg sends (code in ``extensions``)."""

    @functools.wraps(resolver)
    def wrapper(root: object, info: Info, **args: Any) -> Any:
        try:
            return resolver(root, info, **args)
        except EmulatorError as exc:
            raise stigg_error(exc.code, exc.message) from None

    return wrapper


def matches(item: Mapping[str, Any], query_filter: Mapping[str, Any] | None) -> bool:
    """Stigg's (nestjs-query) filter on ``item``: ``and``/``or`` and per-field comparisons
    (eq, neq, in, notIn, is, isNot); comparisons on fields the item lacks are not applied."""
    if not query_filter:
        return True
    for key, condition in query_filter.items():
        if condition is None:
            continue
        if key == "and":
            if not all(matches(item, sub) for sub in condition):
                return False
        elif key == "or":
            if not any(matches(item, sub) for sub in condition):
                return False
        elif key in item and isinstance(condition, Mapping) and not _compare(item[key], condition):
            return False
    return True


def _compare(value: Any, condition: Mapping[str, Any]) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "eq": lambda wanted: value == wanted,
        "neq": lambda wanted: value != wanted,
        "in": lambda wanted: value in wanted,
        "notIn": lambda wanted: value not in wanted,
        "is": lambda wanted: value is wanted,
        "isNot": lambda wanted: value is not wanted,
    }
    return all(
        checks[op](wanted)
        for op, wanted in condition.items()
        if op in checks and wanted is not None
    )


def _cursor(index: int) -> str:
    return base64.b64encode(f"arrayconnection:{index}".encode()).decode()


def _offset(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        return int(base64.b64decode(cursor).decode().rsplit(":", 1)[1])
    except (ValueError, IndexError):
        raise EmulatorError("BadUserInput", f"invalid cursor {cursor!r}") from None


def connection(nodes: Sequence[Any], paging: Mapping[str, Any] | None) -> JsonDict:
    """A ``*Connection`` (edges, pageInfo, totalCount) over ``nodes``, with cursor paging."""
    paging = paging or {}
    start, end = 0, len(nodes)
    after, before = _offset(paging.get("after")), _offset(paging.get("before"))
    if after is not None:
        start = after + 1
    if before is not None:
        end = min(end, before)
    if paging.get("first") is not None:
        end = min(end, start + int(paging["first"]))
    if paging.get("last") is not None:
        start = max(start, end - int(paging["last"]))
    indexes = range(start, max(start, end))
    edges = [{"cursor": _cursor(i), "node": nodes[i]} for i in indexes]
    return {
        "edges": edges,
        "totalCount": len(nodes),
        "pageInfo": {
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
            "hasNextPage": end < len(nodes),
            "hasPreviousPage": start > 0,
        },
    }
