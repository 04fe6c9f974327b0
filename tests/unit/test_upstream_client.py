import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from sidecar.config import Secret, StiggSettings
from sidecar.upstream import documents
from sidecar.upstream.breaker import BreakerState
from sidecar.upstream.client import StiggClient
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
from tests.cache_suite import FakeClock

URL = "https://stigg.test/graphql"
KEY = Secret("key-123")
SETTINGS = StiggSettings(
    api_url=URL, max_retries=2, retry_backoff_seconds=0.001, retry_backoff_max_seconds=0.002
)
STATE_VARS = {"query": {"customerId": "c1"}}


class Recorder:
    """A MockTransport handler answering from a list, recording every request."""

    def __init__(self, *answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(request)


def ok(data: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json={"data": data})


def status(code: int, body: Any = None) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, json=body or {"errors": [{"message": "x"}]})


def raises(exc: type[Exception]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)  # type: ignore[call-arg]

    return answer


def client(recorder: Recorder) -> StiggClient:
    return StiggClient(SETTINGS, KEY, transport=httpx.MockTransport(recorder))


async def test_sends_document_variables_and_api_key() -> None:
    recorder = Recorder(ok({"entitlementsState": {"entitlements": []}}))
    result = await client(recorder).execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
    assert result == {"entitlements": []}
    request = recorder.requests[0]
    assert str(request.url) == URL
    assert request.headers["X-API-KEY"] == "key-123"
    body = json.loads(request.content)
    assert body["variables"] == STATE_VARS
    assert body["operationName"] == "EntitlementsState"
    assert "entitlementsState(query: $query)" in body["query"]


async def test_graphql_error_becomes_typed_stigg_error() -> None:
    recorder = Recorder(
        status(
            200,
            {
                "data": None,
                "errors": [
                    {"message": "Customer not found", "extensions": {"code": "CustomerNotFound"}}
                ],
            },
        )
    )
    with pytest.raises(StiggError) as error:
        await client(recorder).execute(documents.GET_CUSTOMER, {"input": {"customerId": "x"}})
    assert error.value.stigg_code == "CustomerNotFound"
    assert error.value.message == "Customer not found"
    assert len(recorder.requests) == 1  # a definite answer is never retried


def body(status_code: int, payload: Any) -> Callable[[httpx.Request], httpx.Response]:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda request: httpx.Response(status_code, content=content)


def coded(code: str, **extensions: Any) -> dict[str, Any]:
    return {"message": "m", "extensions": {"code": code, **extensions}}


@pytest.mark.parametrize(
    ("answer", "stigg_code", "validation"),
    [
        # No extensions at all, a non-object extensions, errors as one object (not a list).
        (body(200, {"errors": [{"message": "boom"}]}), "Unknown", False),
        (
            body(200, {"errors": [{"message": "x", "extensions": "x"}], "data": None}),
            "Unknown",
            False,
        ),
        (body(200, {"errors": coded("PlanNotFound")}), "PlanNotFound", False),
        (body(200, {"errors": ["odd", 3]}), "Unknown", False),
        # The first error with a code names the failure; the validation flag is read as given.
        (
            body(
                400, {"errors": [{"message": "a"}, coded("BadUserInput", isValidationError=True)]}
            ),
            "BadUserInput",
            True,
        ),
        (body(200, {"errors": [coded("X", isValidationError="yes")]}), "X", False),
    ],
)
async def test_any_error_envelope_becomes_a_stigg_error(
    answer: Callable[[httpx.Request], httpx.Response], stigg_code: str, validation: bool
) -> None:
    with pytest.raises(StiggError) as error:
        await client(Recorder(answer)).execute(
            documents.GET_CUSTOMER, {"input": {"customerId": "x"}}
        )
    assert (error.value.stigg_code, error.value.is_validation_error) == (stigg_code, validation)
    assert error.value.message


async def test_partial_data_is_used() -> None:
    """A nested field failed but the root answered (e.g. a mutation that was applied)."""
    root = {"customer": {"customerId": "c1"}, "subscription": None}
    error = {"message": "x", "path": ["provisionCustomer", "subscription"]}
    answer = body(200, {"errors": [error], "data": {"provisionCustomer": root}})
    result = await client(Recorder(answer)).execute(documents.PROVISION_CUSTOMER, {"input": {}})
    assert result == root


@pytest.mark.parametrize("code", [400, 404, 405, 413])
async def test_client_error_status_without_graphql_errors_is_an_invalid_answer(code: int) -> None:
    for payload in (b"<html>Not Found</html>", b"", b"{}"):
        with pytest.raises(UpstreamProtocolError) as error:
            await client(Recorder(body(code, payload))).execute(
                documents.ENTITLEMENTS_STATE, STATE_VARS
            )
        assert error.value.code == "upstream_invalid_answer"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (status(401), UpstreamAuthError),
        (status(403), UpstreamAuthError),
        (lambda r: httpx.Response(200, content=b"<html>"), UpstreamProtocolError),
        (
            lambda r: httpx.Response(302, headers={"Location": "https://evil.test/"}),
            UpstreamProtocolError,
        ),
    ],
)
async def test_definite_failures_are_not_retried(
    answer: Callable[[httpx.Request], httpx.Response], expected: type[Exception]
) -> None:
    recorder = Recorder(answer)
    with pytest.raises(expected):
        await client(recorder).execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
    assert [str(r.url) for r in recorder.requests] == [URL]  # no redirect followed


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (status(503), UpstreamUnavailable),
        (status(429), UpstreamRateLimited),
        (raises(httpx.ReadTimeout), UpstreamTimeout),
    ],
)
async def test_reads_are_retried_then_fail_typed(
    failure: Callable[[httpx.Request], httpx.Response], expected: type[Exception]
) -> None:
    recorder = Recorder(failure)
    with pytest.raises(expected):
        await client(recorder).execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
    assert len(recorder.requests) == 1 + SETTINGS.max_retries


async def test_read_recovers_after_transient_failure() -> None:
    recorder = Recorder(status(502), raises(httpx.ReadTimeout), ok({"entitlementsState": {}}))
    assert await client(recorder).execute(documents.ENTITLEMENTS_STATE, STATE_VARS) == {}
    assert len(recorder.requests) == 3


async def test_write_without_idempotency_is_not_retried_after_delivery() -> None:
    recorder = Recorder(status(503), ok({"provisionCustomer": {}}))
    with pytest.raises(UpstreamUnavailable):
        await client(recorder).execute(
            documents.PROVISION_CUSTOMER, {"input": {"customerId": "c1"}}
        )
    assert len(recorder.requests) == 1


async def test_write_is_retried_when_it_never_reached_stigg() -> None:
    recorder = Recorder(raises(httpx.ConnectError), ok({"provisionCustomer": {"customer": {}}}))
    result = await client(recorder).execute(
        documents.PROVISION_CUSTOMER, {"input": {"customerId": "c1"}}
    )
    assert result == {"customer": {}}
    assert len(recorder.requests) == 2


async def test_usage_with_idempotency_key_is_retried() -> None:
    usage = {"customerId": "c", "featureId": "f", "value": 1, "idempotencyKey": "k1"}
    recorder = Recorder(raises(httpx.ReadTimeout), ok({"reportUsageBulk": [{"currentUsage": 1}]}))
    variables = {"input": {"usages": [usage]}}
    result = await client(recorder).execute(documents.REPORT_USAGE_BULK, variables)
    assert result == [{"currentUsage": 1}]
    sent = [
        json.loads(r.content)["variables"]["input"]["usages"][0]["idempotencyKey"]
        for r in recorder.requests
    ]
    assert sent == ["k1", "k1"]


async def test_bulk_is_retried_only_when_every_usage_has_a_key() -> None:
    usages = [
        {"customerId": "c", "featureId": "f", "value": 1, "idempotencyKey": "k1"},
        {"customerId": "c", "featureId": "f", "value": 1},
    ]
    recorder = Recorder(status(500))
    with pytest.raises(UpstreamUnavailable):
        await client(recorder).execute(documents.REPORT_USAGE_BULK, {"input": {"usages": usages}})
    assert len(recorder.requests) == 1


async def test_forward_passes_body_and_status_through_with_key() -> None:
    recorder = Recorder(
        lambda r: httpx.Response(
            400,
            content=b'{"errors":[{"message":"bad"}]}',
            headers={"content-type": "application/json"},
        )
    )
    answer = await client(recorder).forward(b'{"query":"{ nope }"}')
    assert answer.status == 400
    assert answer.body == b'{"errors":[{"message":"bad"}]}'
    assert recorder.requests[0].content == b'{"query":"{ nope }"}'
    assert recorder.requests[0].headers["X-API-KEY"] == "key-123"


async def test_error_messages_never_contain_the_key() -> None:
    for answer in (status(401), status(500), raises(httpx.ConnectError), raises(httpx.ReadTimeout)):
        with pytest.raises(UpstreamError) as error:
            await client(Recorder(answer)).execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
        assert "key-123" not in str(error.value) + repr(error.value)


async def test_circuit_breaker_fails_fast_then_probes() -> None:
    settings = replace(
        SETTINGS, max_retries=0, breaker_failure_threshold=3, breaker_cooldown_seconds=0.05
    )
    recorder = Recorder(status(503))
    clock = FakeClock()
    stigg = StiggClient(settings, KEY, transport=httpx.MockTransport(recorder), clock=clock)
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable):
            await stigg.execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
    assert len(recorder.requests) == 3
    for _ in range(10):  # open: nothing is sent
        with pytest.raises(CircuitOpen):
            await stigg.execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
    assert len(recorder.requests) == 3
    assert stigg.breaker.state is BreakerState.OPEN
    clock.now += 0.06
    recorder.answers = [ok({"entitlementsState": {}})]
    assert await stigg.execute(documents.ENTITLEMENTS_STATE, STATE_VARS) == {}  # the probe
    assert stigg.breaker.state is BreakerState.CLOSED
    assert len(recorder.requests) == 4


async def test_circuit_breaker_reopens_when_the_probe_fails() -> None:
    settings = replace(
        SETTINGS, max_retries=0, breaker_failure_threshold=1, breaker_cooldown_seconds=0.02
    )
    recorder = Recorder(raises(httpx.ReadTimeout))
    clock = FakeClock()
    stigg = StiggClient(settings, KEY, transport=httpx.MockTransport(recorder), clock=clock)
    with pytest.raises(UpstreamTimeout):
        await stigg.execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
    clock.now += 0.03
    with pytest.raises(UpstreamTimeout):  # the probe goes out and fails
        await stigg.execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
    with pytest.raises(CircuitOpen):
        await stigg.execute(documents.ENTITLEMENTS_STATE, STATE_VARS)
    assert len(recorder.requests) == 2


async def test_stigg_answering_errors_does_not_open_the_breaker() -> None:
    settings = replace(SETTINGS, breaker_failure_threshold=1)
    recorder = Recorder(
        status(200, {"errors": [{"message": "no", "extensions": {"code": "CustomerNotFound"}}]})
    )
    stigg = StiggClient(settings, KEY, transport=httpx.MockTransport(recorder))
    for _ in range(3):
        with pytest.raises(StiggError):
            await stigg.execute(documents.GET_CUSTOMER, {"input": {"customerId": "x"}})
    assert stigg.breaker.state is BreakerState.CLOSED
