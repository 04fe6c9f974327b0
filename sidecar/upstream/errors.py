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
