"""Answers made without current Stigg state: from a request's or the config's fallback values."""

from __future__ import annotations

from typing import Any

from sidecar.config import FeatureFallback
from sidecar.entitlements.model import (
    REQUESTED_USAGE_EXCEEDING_LIMIT,
    REQUESTED_VALUES_MISMATCH,
    CheckRequest,
    blank_answer,
)

UNKNOWN = "Unknown"


def fallback_answer(
    request: CheckRequest, fallback: FeatureFallback | None, default_has_access: bool, source: str
) -> dict[str, Any]:
    """Evaluate ``request`` against ``fallback`` (or the global default when there is none)."""
    answer = blank_answer(request)
    answer["isFallback"] = True
    answer["source"] = source if fallback is not None else "default"
    if fallback is None:
        answer["hasAccess"] = default_has_access
        answer["accessDeniedReason"] = None if default_has_access else UNKNOWN
        return answer
    answer["usageLimit"] = fallback.usage_limit
    answer["value"] = fallback.value
    answer["isUnlimited"] = fallback.is_unlimited
    answer["enumValues"] = list(fallback.enum_values) if fallback.enum_values is not None else None
    has_access, reason = fallback.has_access, None if fallback.has_access else UNKNOWN
    if has_access and not fallback.is_unlimited and fallback.usage_limit is not None:
        requested = request.requested_usage or 0.0
        if requested > fallback.usage_limit:
            has_access, reason = False, REQUESTED_USAGE_EXCEEDING_LIMIT
    wanted = set(request.requested_values or ())
    if has_access and fallback.enum_values is not None and not wanted <= set(fallback.enum_values):
        has_access, reason = False, REQUESTED_VALUES_MISMATCH
    answer["hasAccess"] = has_access
    answer["accessDeniedReason"] = reason
    return answer
