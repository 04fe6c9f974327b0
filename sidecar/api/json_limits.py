"""A bound on how deeply nested a JSON request body may be.

orjson parses up to 1,024 levels, but everything that walks a parsed body afterwards (webhook
mentions, validation, the spool's encoder) would recurse as deep: a bounded depth, checked
once right after parsing, keeps a hostile body a 400 instead of a ``RecursionError``.
"""

from __future__ import annotations

from typing import Any

# Stigg's webhooks and GraphQL variables nest a dozen levels; 64 leaves ample room.
MAX_JSON_DEPTH = 64


def json_depth_exceeds(value: Any, body: bytes | None = None, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed from ``body``, if given) nests more than ``limit`` levels."""
    # Cheap exit for nearly every body: it cannot nest deeper than it has openers.
    if body is not None and body.count(b"{") + body.count(b"[") <= limit:
        return False
    level: list[Any] = [value]
    for _ in range(limit):
        children: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                children.extend(v for v in item if isinstance(v, dict | list))
        if not children:
            return False
        level = children
    return True


def too_deep_message() -> str:
    return f"JSON nests deeper than {MAX_JSON_DEPTH} levels"
