"""The twelve RPCs of ``stigg.sidecar.v1.SidecarService``, answered by the services REST uses.

Checks never fail for a Stigg outage (the fallback chain answers, ``is_fallback`` set); usage
is acknowledged once durably spooled. Errors map as the REST statuses do: bad input
``INVALID_ARGUMENT`` naming the field, a full or closing spool ``UNAVAILABLE``, a failed Stigg
call (only ``ReloadEntitlements`` waits for one) by ``describe_upstream_error``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from prometheus_client import CollectorRegistry, Counter

from sidecar.api.errors import describe_upstream_error
from sidecar.api.grpc import convert
from sidecar.api.grpc import sidecar_v1_pb2 as pb
from sidecar.config import Secret
from sidecar.entitlements.model import CheckRequest
from sidecar.fault_log import FaultLog
from sidecar.metrics import PREFIX, RequestFamily
from sidecar.services import Services
from sidecar.upstream.errors import UpstreamError
from sidecar.usage.model import UsageReport
from sidecar.usage.service import UsageUnavailable
from sidecar.validation import ValidationError

log = logging.getLogger(__name__)
_faults = FaultLog(log)

SERVICE_NAME = "stigg.sidecar.v1.SidecarService"
CUSTOMER_NOT_FOUND = "CustomerNotFound"

_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Makes an RPC's answer message from a check's answer (the REST JSON shape).
Builder = Callable[[dict[str, Any]], Any]
Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class SidecarServicer:
    """One method per RPC; ``services`` is read per call (it exists once the app started)."""

    def __init__(self, services: Callable[[], Services], max_reports: int) -> None:
        self._services = services
        self._max_reports = max_reports

    # --- checks ---------------------------------------------------------------------------

    async def _answer(self, request: Any, build: Builder) -> Any:
        """The answer message ``build`` makes of the check; bytes when the request has no
        options, reused while the customer's cached state is unchanged (as REST reuses JSON)."""
        options = convert.options_of(request)
        check = convert.check_request(request, options)
        entitlements = self._services().entitlements
        if options is None:
            return await entitlements.check_rendered(check, _SERIALIZED[build])
        return build(await entitlements.check(check, convert.fallback(options)))

    async def get_boolean_entitlement(self, request: pb.GetBooleanEntitlementRequest) -> Any:
        return await self._answer(request, _boolean)

    async def get_numeric_entitlement(self, request: pb.GetNumericEntitlementRequest) -> Any:
        return await self._answer(request, _numeric)

    async def get_metered_entitlement(self, request: pb.GetMeteredEntitlementRequest) -> Any:
        return await self._answer(request, _metered)

    async def get_enum_entitlement(self, request: pb.GetEnumEntitlementRequest) -> Any:
        return await self._answer(request, _enum)

    async def get_entitlement(self, request: pb.GetEntitlementRequest) -> Any:
        return await self._answer(request, _any)

    async def get_entitlement_v2(self, request: pb.GetEntitlementV2Request) -> Any:
        if request.HasField("currency_id"):
            raise ValidationError("currency_id", "credit entitlements are not supported")
        return await self._answer(request, _any_v2)

    async def _list(self, request: Any) -> dict[str, Any]:
        customer_id = convert.customer_id(request)
        resource_id = convert.optional_id(request, "resource_id")
        return await self._services().entitlements.list(customer_id, resource_id)

    async def get_entitlements(self, request: pb.GetEntitlementsRequest) -> Any:
        listing = await self._list(request)
        out = pb.GetEntitlementsResponse()
        for answer in listing["entitlements"]:
            convert.any_entitlement(answer, out.entitlements.add())
        _customer_reason(listing, out)
        return out

    async def get_entitlements_state_v2(self, request: pb.GetEntitlementsStateV2Request) -> Any:
        listing = await self._list(request)
        out = pb.GetEntitlementsStateV2Response()
        for answer in listing["entitlements"]:
            convert.any_entitlement(answer, convert.decision(answer, out.entitlements.add()))
        _customer_reason(listing, out)
        return out

    async def reload_entitlements(self, request: pb.ReloadEntitlementsRequest) -> Any:
        customer_id = convert.customer_id(request)
        resource_id = convert.optional_id(request, "resource_id")
        listing = await self._services().entitlements.reload(customer_id, resource_id)
        exists = listing["accessDeniedReason"] != CUSTOMER_NOT_FOUND
        return pb.ReloadEntitlementsResponse(entitled_entity_exists=exists)

    # --- usage ----------------------------------------------------------------------------

    def _measurement(self, report: UsageReport) -> pb.ReportUsageResponse:
        """Stigg answers with the new count; ours is the optimistic one, where it is cached."""
        out = pb.ReportUsageResponse(
            measurement_id=report.idempotency_key,
            customer_id=report.customer_id,
            feature_id=report.feature_id,
        )
        if report.resource_id is not None:
            out.resource_id = report.resource_id
        check = CheckRequest(report.customer_id, report.feature_id, report.resource_id)
        answer = self._services().entitlements.peek(check)
        if answer is not None and answer["type"] == "METERED":
            out.current_usage = answer["currentUsage"] or 0.0
            for name, key in (
                ("usage_period_start", "usagePeriodStart"),
                ("usage_period_end", "usagePeriodEnd"),
            ):
                stamp = convert.timestamp(answer[key])
                if stamp is not None:
                    getattr(out, name).CopyFrom(stamp)
        return out

    async def report_usage(self, request: pb.ReportUsageRequest) -> Any:
        report = convert.usage_report(request)
        await self._services().usage.accept_usages([report])
        return self._measurement(report)

    async def report_usage_bulk(self, request: pb.ReportUsageBulkRequest) -> Any:
        self._check_count("usages", len(request.usages))
        reports = [
            convert.usage_report(usage, f"usages[{index}]")
            for index, usage in enumerate(request.usages)
        ]
        await self._services().usage.accept_usages(reports)
        return pb.ReportUsageBulkResponse(usages=[self._measurement(r) for r in reports])

    async def report_events(self, request: pb.ReportEventsRequest) -> Any:
        self._check_count("events", len(request.events))
        events = [
            convert.event_report(event, f"events[{index}]")
            for index, event in enumerate(request.events)
        ]
        await self._services().usage.accept_events(events)
        return Empty()

    def _check_count(self, name: str, count: int) -> None:
        if count == 0:
            raise ValidationError(name, "must not be empty")
        if count > self._max_reports:
            raise ValidationError(name, f"must have at most {self._max_reports} items")


def _boolean(answer: dict[str, Any]) -> Any:
    out = convert.decision(answer, pb.GetBooleanEntitlementResponse())
    convert.boolean(answer, out.entitlement)
    return out


def _numeric(answer: dict[str, Any]) -> Any:
    out = convert.decision(answer, pb.GetNumericEntitlementResponse())
    convert.numeric(answer, out.entitlement)
    return out


def _metered(answer: dict[str, Any]) -> Any:
    out = convert.decision(answer, pb.GetMeteredEntitlementResponse())
    out.requested_usage = answer["requestedUsage"] or 0.0
    convert.metered(answer, out.entitlement)
    return out


def _enum(answer: dict[str, Any]) -> Any:
    out = convert.decision(answer, pb.GetEnumEntitlementResponse())
    out.requested_values.extend(answer["requestedValues"] or ())
    convert.enum(answer, out.entitlement)
    return out


def _any(answer: dict[str, Any]) -> Any:
    return convert.any_entitlement(answer, convert.decision(answer, pb.GetEntitlementResponse()))


def _any_v2(answer: dict[str, Any]) -> Any:
    entitlement = convert.any_entitlement(answer, convert.decision(answer, pb.EntitlementV2()))
    return pb.GetEntitlementV2Response(entitlement=entitlement)


def _serializing(build: Builder) -> Callable[[dict[str, Any]], bytes]:
    return lambda answer: build(answer).SerializeToString()


# One serialising renderer per builder, made once: the renderer is part of the reuse key.
_SERIALIZED: dict[Builder, Callable[[dict[str, Any]], bytes]] = {
    build: _serializing(build) for build in (_boolean, _numeric, _metered, _enum, _any, _any_v2)
}


def _serialize(message: Any) -> bytes:
    """Messages are serialised here; an answer reused as bytes goes out as it is."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _customer_reason(listing: dict[str, Any], out: Any) -> None:
    denied = convert.reason(listing["accessDeniedReason"])
    if denied is not None:
        out.access_denied_reason = denied


# --- errors, metrics and the bearer token ---------------------------------------------------


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status a failed call answers, as the REST API maps the same failure; None for
    an error no status was planned for (a bug)."""
    if isinstance(exc, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UsageUnavailable):
        return grpc.StatusCode.UNAVAILABLE, exc.message
    if isinstance(exc, UpstreamError):
        log.warning("stigg %s failed: %s (%s)", exc.operation, exc.code, exc.message)
        failure = describe_upstream_error(exc)
        return _HTTP_TO_GRPC.get(failure.status, grpc.StatusCode.INTERNAL), failure.message
    return None


def log_unhandled(method: str, exc: Exception) -> None:
    """One line per method and error type per interval, with a count and where it was raised:
    a bug hit on every call must not flood the log with tracebacks."""
    _faults.unhandled(f"gRPC {method}", exc)


class GrpcMetrics:
    """``stigg_sidecar_grpc_requests_total`` and ``..._request_duration_seconds`` by method
    and status code, in the app's registry (next to the HTTP API's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._calls = RequestFamily(
            registry, "grpc", "gRPC calls to SidecarService", ("method",), "code"
        )
        self.unhandled_errors = Counter(
            f"{PREFIX}_grpc_unhandled_errors",
            "gRPC calls that failed with an error no status was planned for (a bug; see the "
            "log), by method.",
            ["method"],
            registry=registry,
        )

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self._calls.counts(method).observe(code.name, seconds)


def guarded(
    name: str,
    method: Callable[[Any], Awaitable[Any]],
    token: Secret | None,
    metrics: GrpcMetrics,
) -> Handler:
    """``method`` with the bearer-token check (``authorization: Bearer …`` metadata, when a
    token is configured), its metrics, and exceptions turned into gRPC statuses."""
    expected = f"Bearer {token.reveal()}".encode() if token is not None else None

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        if expected is not None:
            given = dict(context.invocation_metadata() or ()).get("authorization", "")
            given_bytes = given.encode() if isinstance(given, str) else given
            if not hmac.compare_digest(given_bytes, expected):
                code = grpc.StatusCode.UNAUTHENTICATED
                metrics.observe(name, code, time.perf_counter() - started)
                await context.abort(
                    code, "missing or wrong bearer token in the authorization metadata"
                )
        try:
            answer = await method(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, none a crash
            status = status_of(exc)
            if status is None:
                log_unhandled(name, exc)
                metrics.unhandled_errors.labels(name).inc()
                status = grpc.StatusCode.INTERNAL, "internal error; see the sidecar's log"
            code, message = status
            metrics.observe(name, code, time.perf_counter() - started)
            await context.abort(code, message)
        metrics.observe(name, grpc.StatusCode.OK, time.perf_counter() - started)
        return answer

    return handler


# RPC name -> (servicer method name, request class, response class).
RPCS: dict[str, tuple[str, Any, Any]] = {
    "GetEntitlements": ("get_entitlements", pb.GetEntitlementsRequest, pb.GetEntitlementsResponse),
    "GetEntitlement": ("get_entitlement", pb.GetEntitlementRequest, pb.GetEntitlementResponse),
    "GetBooleanEntitlement": (
        "get_boolean_entitlement",
        pb.GetBooleanEntitlementRequest,
        pb.GetBooleanEntitlementResponse,
    ),
    "GetNumericEntitlement": (
        "get_numeric_entitlement",
        pb.GetNumericEntitlementRequest,
        pb.GetNumericEntitlementResponse,
    ),
    "GetMeteredEntitlement": (
        "get_metered_entitlement",
        pb.GetMeteredEntitlementRequest,
        pb.GetMeteredEntitlementResponse,
    ),
    "GetEnumEntitlement": (
        "get_enum_entitlement",
        pb.GetEnumEntitlementRequest,
        pb.GetEnumEntitlementResponse,
    ),
    "ReportUsage": ("report_usage", pb.ReportUsageRequest, pb.ReportUsageResponse),
    "ReportEvents": ("report_events", pb.ReportEventsRequest, Empty),
    "ReloadEntitlements": (
        "reload_entitlements",
        pb.ReloadEntitlementsRequest,
        pb.ReloadEntitlementsResponse,
    ),
    "ReportUsageBulk": ("report_usage_bulk", pb.ReportUsageBulkRequest, pb.ReportUsageBulkResponse),
    "GetEntitlementV2": (
        "get_entitlement_v2",
        pb.GetEntitlementV2Request,
        pb.GetEntitlementV2Response,
    ),
    "GetEntitlementsStateV2": (
        "get_entitlements_state_v2",
        pb.GetEntitlementsStateV2Request,
        pb.GetEntitlementsStateV2Response,
    ),
}


def generic_handler(
    servicer: SidecarServicer, token: Secret | None, metrics: GrpcMetrics
) -> grpc.GenericRpcHandler:
    """All twelve RPCs as one grpc handler (no generated ``_pb2_grpc`` module needed)."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            guarded(name, getattr(servicer, method), token, metrics),
            request_deserializer=request.FromString,
            response_serializer=_serialize,
        )
        for name, (method, request, response) in RPCS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
