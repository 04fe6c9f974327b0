"""The one HTTP client to Stigg's GraphQL API: pooled, with timeouts, typed errors, safe retries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
import orjson

from sidecar.backoff import full_jitter
from sidecar.config import Secret, StiggSettings
from sidecar.upstream import answers
from sidecar.upstream.breaker import BreakerState, CircuitBreaker
from sidecar.upstream.documents import Operation
from sidecar.upstream.errors import (
    CircuitOpen,
    StiggError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

# (operation, outcome, seconds) for every call attempt; see ``outcome_of`` for the outcomes.
Observer = Callable[[str, str, float], None]
OUTCOMES = (
    "success",
    "stigg_error",
    "unavailable",
    "timeout",
    "rate_limited",
    "auth_failed",
    "circuit_open",
    "bad_response",
)


def outcome_of(exc: BaseException | None) -> str:
    """The metrics label of a call that ended with ``exc`` (None: it succeeded)."""
    if exc is None:
        return "success"
    if isinstance(exc, StiggError):
        return "stigg_error"  # Stigg answered, with an error: it is up
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamRateLimited):
        return "rate_limited"
    if isinstance(exc, UpstreamAuthError):
        return "auth_failed"
    if isinstance(exc, UpstreamProtocolError):
        return "bad_response"
    return "unavailable"


@dataclass(frozen=True)
class RawResponse:
    """An upstream answer passed through untouched (for ``POST /graphql``)."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class UpstreamHealth:
    """What readiness and metrics read of the upstream."""

    breaker: BreakerState
    # time.monotonic() of Stigg's last answer; None until it has answered once.
    last_answer_at: float | None


class Upstream(Protocol):
    """What the services need from Stigg: run one known operation, or forward a raw request."""

    def health(self) -> UpstreamHealth:
        """The circuit breaker's state and when Stigg last answered."""
        ...

    async def execute(self, operation: Operation, variables: Mapping[str, Any]) -> Any:
        """Send ``operation``; return its root field's data or raise an ``UpstreamError``."""
        ...

    async def forward(self, body: bytes) -> RawResponse:
        """Send a client's GraphQL request body as it is, with the API key injected."""
        ...


class StiggClient:
    """``Upstream`` over HTTP to ``settings.api_url`` (Stigg, or the emulator)."""

    def __init__(
        self,
        settings: StiggSettings,
        api_key: Secret,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (monotonic seconds) runs the circuit breaker and ``last_answer_at``."""
        self._settings = settings
        self._clock = clock
        self.observer = observer
        # Monotonic time of Stigg's last answer (any answer, even an error): readiness.
        self.last_answer_at: float | None = None
        self._url = settings.api_url
        self.breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_cooldown_seconds,
            clock,
            guards="the sidecar's own calls to Stigg",
        )
        # Passed-through requests are the clients' own (a heavy or bad query may fail where
        # entitlement reads do not): their failures pause only the passthrough, never checks.
        self.passthrough_breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_cooldown_seconds,
            clock,
            guards="passed-through /graphql requests",
        )
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.read_timeout_seconds,
            write=settings.read_timeout_seconds,
            pool=settings.connect_timeout_seconds,
        )
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
        )
        self._http = httpx.AsyncClient(
            timeout=timeout,
            limits=limits,
            transport=transport,
            headers={
                "X-API-KEY": api_key.reveal(),
                "Content-Type": "application/json",
                "User-Agent": "stigg-sidecar",
            },
            # The key must only ever travel to the configured URL, never follow a redirect.
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def execute(self, operation: Operation, variables: Mapping[str, Any]) -> Any:
        body = orjson.dumps(
            {"query": operation.document, "variables": variables, "operationName": operation.name}
        )
        retry_safe = operation.retry_safe(variables)
        attempt = 0
        while True:
            try:
                return await self._guarded(
                    self._execute_once(operation, body), operation.root_field, self.breaker
                )
            except UpstreamError as exc:
                delivered = not isinstance(exc, _NotDelivered)
                retryable = isinstance(exc, _FAILURES) and not isinstance(exc, CircuitOpen)
                if not retryable or attempt >= self._settings.max_retries:
                    raise _public(exc) from None
                if delivered and not retry_safe:
                    raise _public(exc) from None
                attempt += 1
                delay = self._backoff(attempt)
                log.warning(
                    "stigg %s failed (%s), retry %d in %.0f ms",
                    operation.root_field,
                    exc.code,
                    attempt,
                    delay * 1000,
                )
                await asyncio.sleep(delay)

    async def _guarded(self, call: Coroutine[Any, Any, T], name: str, breaker: CircuitBreaker) -> T:
        """Run ``call`` through ``breaker``: fail fast while it is open."""
        if not breaker.allow():
            call.close()
            if self.observer is not None:
                self.observer(name, "circuit_open", 0.0)
            raise CircuitOpen(
                "Stigg failed repeatedly; calls are paused briefly (circuit breaker open)",
                operation=name,
            )
        started = time.perf_counter()
        try:
            result = await call
        except UpstreamError as exc:
            self._observe(name, exc, started)
            # Only failures to answer count; Stigg answering an error is Stigg being up.
            if isinstance(exc, _FAILURES):
                breaker.failure()
            else:
                breaker.success()
                self.last_answer_at = self._clock()
            raise
        except BaseException:
            breaker.failure()  # e.g. cancelled: never leave a probe hanging half-open
            raise
        self._observe(name, None, started)
        breaker.success()
        self.last_answer_at = self._clock()
        return result

    def health(self) -> UpstreamHealth:
        return UpstreamHealth(self.breaker.state, self.last_answer_at)

    def _observe(self, name: str, exc: UpstreamError | None, started: float) -> None:
        if self.observer is not None:
            self.observer(name, outcome_of(exc), time.perf_counter() - started)

    def _backoff(self, attempt: int) -> float:
        """Retry ``attempt`` (from 1) waits on the one backoff curve."""
        settings = self._settings
        return full_jitter(
            attempt - 1, settings.retry_backoff_seconds, settings.retry_backoff_max_seconds
        )

    async def _execute_once(self, operation: Operation, body: bytes) -> Any:
        name = operation.root_field
        return _parse(await self._post(body, name), name)

    async def _post(self, body: bytes, name: str) -> httpx.Response:
        """One POST to Stigg; transport failures become typed errors."""
        try:
            return await self._http.post(self._url, content=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _NotDelivered(
                f"cannot connect to Stigg ({type(exc).__name__})", operation=name
            ) from None
        except httpx.TimeoutException:
            raise UpstreamTimeout("Stigg did not answer in time", operation=name) from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"request to Stigg failed ({type(exc).__name__})", operation=name
            ) from None

    async def forward(self, body: bytes) -> RawResponse:
        try:
            return await self._guarded(
                self._forward_once(body), "graphql", self.passthrough_breaker
            )
        except UpstreamError as exc:
            raise _public(exc) from None  # never retried, so "not delivered" is no news

    async def _forward_once(self, body: bytes) -> RawResponse:
        response = await self._post(body, "graphql")
        if response.status_code in (401, 403):
            raise UpstreamAuthError("Stigg rejected the sidecar's API key", operation="graphql")
        if response.status_code >= 500:
            raise UpstreamUnavailable(
                f"Stigg answered HTTP {response.status_code}", operation="graphql"
            )
        return RawResponse(
            status=response.status_code,
            content_type=response.headers.get("content-type", "application/json"),
            body=response.content,
        )


T = TypeVar("T")
# Failures of Stigg to answer at all: retried when safe, counted by the circuit breaker.
_FAILURES = (UpstreamUnavailable, UpstreamTimeout, UpstreamRateLimited)


class _NotDelivered(UpstreamUnavailable):
    """The request never reached Stigg, so even a non-idempotent call may be retried."""


def _public(exc: UpstreamError) -> UpstreamError:
    """Callers see the plain kind; whether a request was delivered is the client's business."""
    if isinstance(exc, _NotDelivered):
        return UpstreamUnavailable(exc.message, operation=exc.operation)
    return exc


def _parse(response: httpx.Response, name: str) -> Any:
    status = response.status_code
    if status in (401, 403):
        raise UpstreamAuthError("Stigg rejected the sidecar's API key", operation=name)
    if status == 429:
        raise UpstreamRateLimited("Stigg rate limit reached", operation=name)
    if status >= 500:
        raise UpstreamUnavailable(f"Stigg answered HTTP {status}", operation=name)
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"Stigg answered HTTP {status} with a body that is not JSON", operation=name
        ) from None
    if not isinstance(payload, dict):
        raise UpstreamProtocolError("Stigg answered JSON that is not an object", operation=name)
    errors = payload.get("errors")
    data = payload.get("data")
    root = data.get(name) if isinstance(data, dict) else None
    if errors:
        if root is not None:
            # Partial data: the operation ran and a nested field failed (GraphQL nulls only
            # what failed). Using it beats failing a mutation that has been applied.
            answers.DRIFT.record(name, "partial_data", _stigg_error(errors, name).code)
            return root
        raise _stigg_error(errors, name)
    if status >= 400:
        raise UpstreamProtocolError(f"Stigg answered HTTP {status}", operation=name)
    if not isinstance(data, dict) or name not in data:
        raise UpstreamProtocolError(f"Stigg's answer has no data.{name}", operation=name)
    return root


def _extensions(error: dict[str, Any]) -> dict[str, Any]:
    extensions = error.get("extensions")
    return extensions if isinstance(extensions, dict) else {}


def _stigg_error(errors: Any, name: str) -> StiggError:
    """The error Stigg reported: the first one with a code (any shape is tolerated)."""
    found = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    if isinstance(errors, dict):
        found = [errors]
    coded = [e for e in found if _extensions(e).get("code")]
    first = (coded or found or [{}])[0]
    extensions = _extensions(first)
    return StiggError(
        str(first.get("message") or "Stigg returned an error"),
        stigg_code=str(extensions.get("code") or "Unknown"),
        is_validation_error=extensions.get("isValidationError") is True,
        operation=name,
    )
