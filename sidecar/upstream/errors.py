"""Typed failures of calls to Stigg, so callers decide by kind rather than by message."""

from __future__ import annotations


class UpstreamError(Exception):
    """A call to Stigg did not produce a usable answer."""

    code = "upstream_error"

    def __init__(self, message: str, *, operation: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation


class UpstreamUnavailable(UpstreamError):
    """Stigg could not be reached or answered with a server error (5xx)."""

    code = "upstream_unavailable"


class CircuitOpen(UpstreamUnavailable):
    """Not sent: Stigg failed repeatedly and the circuit breaker is failing fast."""

    code = "upstream_circuit_open"


class UpstreamTimeout(UpstreamError):
    """Stigg did not answer within the configured timeout."""

    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """Stigg answered 429; it sends no Retry-After, so callers back off on their own."""

    code = "upstream_rate_limited"


class UpstreamAuthError(UpstreamError):
    """Stigg rejected the sidecar's API key (401/403): an operator problem, not a client one."""

    code = "upstream_auth_failed"


class UpstreamProtocolError(UpstreamError):
    """Stigg answered something we cannot use: not GraphQL, or not the shape we asked for."""

    code = "upstream_invalid_answer"


class StiggError(UpstreamError):
    """Stigg executed the request and answered with a GraphQL error (``extensions.code``)."""

    def __init__(
        self,
        message: str,
        *,
        stigg_code: str,
        operation: str = "",
        is_validation_error: bool = False,
    ) -> None:
        super().__init__(message, operation=operation)
        self.stigg_code = stigg_code
        self.is_validation_error = is_validation_error
        self.code = stigg_code


# The one reading of Stigg's error codes, shared by the API's status mapping and the usage
# flusher's choice between retrying and dead-lettering.
NOT_FOUND_CODES = frozenset(
    {
        "CustomerNotFound",
        "PlanNotFound",
        "SubscriptionNotFound",
        "FeatureNotFound",
        "CustomerResourceNotFound",
        "AddonNotFound",
    }
)
CONFLICT_CODES = frozenset({"DuplicatedEntityNotAllowed", "SubscriptionAlreadyCanceledOrExpired"})
INVALID_CODES = frozenset(
    {
        "BadUserInput",
        "BAD_USER_INPUT",
        "InvalidArgumentError",
        "InvalidQuantity",
        "GRAPHQL_VALIDATION_FAILED",
        "MeteringNotAvailableForFeatureType",
        "NoActiveSubscriptionForCustomer",
    }
)


def classify(exc: StiggError) -> str:
    """``not_found``, ``conflict``, ``invalid`` (the request itself is wrong: sending it
    again cannot help) or ``other``."""
    if exc.stigg_code in NOT_FOUND_CODES:
        return "not_found"
    if exc.stigg_code in CONFLICT_CODES:
        return "conflict"
    if exc.is_validation_error or exc.stigg_code in INVALID_CODES:
        return "invalid"
    return "other"
