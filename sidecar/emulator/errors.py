"""Errors shaped the way Stigg's API sends them, for the cases Stigg's SDKs special-case.

Business errors are GraphQL errors with ``extensions.code`` (Stigg's ``ErrorCode`` enum) and
``extensions.isValidationError`` (the caller's input is wrong: a retry will not help); a
failing non-null root nulls ``data``, a failing nullable one answers ``data.<root>: null``
beside the error (graphql-core does both). Failures before execution are HTTP errors: 401 and
429 with a JSON error body (no ``Retry-After``), 5xx from the load balancer in front of the API
with an HTML page, not JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from graphql import GraphQLError

# Codes the SDKs look for that say "this request is wrong" rather than "try again".
VALIDATION_CODES = frozenset(
    {
        "BadUserInput",
        "InvalidArgumentError",
        "CustomerNotFound",
        "SubscriptionNotFound",
        "PlanNotFound",
        "FeatureNotFound",
        "DuplicatedEntityNotAllowed",
        "SubscriptionAlreadyCanceledOrExpired",
    }
)
RATE_LIMITED = "RateLimitExceeded"
UNAUTHENTICATED = "Unauthenticated"


def stigg_error(code: str, message: str) -> GraphQLError:
    """A business error as a resolver raises it: code and validation flag in ``extensions``."""
    return GraphQLError(
        message, extensions={"code": code, "isValidationError": code in VALIDATION_CODES}
    )


def error_response(status: int, message: str, code: str) -> web.Response:
    """An error answered before execution, as JSON (``{"errors": [...]}``)."""
    body: dict[str, Any] = {"errors": [{"message": message, "extensions": {"code": code}}]}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def unauthenticated() -> web.Response:
    return error_response(401, "Unauthorized", UNAUTHENTICATED)


def rate_limited() -> web.Response:
    """Stigg's 429: a JSON error, and no ``Retry-After`` header."""
    return error_response(429, "ThrottlerException: Too Many Requests", RATE_LIMITED)


def gateway_error(status: int) -> web.Response:
    """A 5xx from the load balancer in front of Stigg's API: an HTML page, not GraphQL."""
    page = f"<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>"
    return web.Response(body=page.encode(), status=status, content_type="text/html")
