"""Every answer Stigg's schema allows, through the REST routes, the MCP tools, the realtime
listener and the usage flusher: no 500, no unhandled exception, ``hasAccess`` always a boolean,
no report dropped or counted twice.

Answers come from ``stigg_answers`` (hypothesis, driven by the schema and each document's
selection set) and are served by a fake Stigg on ``httpx.MockTransport``, not by our emulator:
the sidecar must be right for every answer Stigg may send, not the ones our emulator sends.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.api.mcp_tools import call_tool
from sidecar.app import create_app
from sidecar.config import (
    EntitlementSettings,
    RealtimeSettings,
    Secret,
    UsageSettings,
)
from sidecar.entitlements.model import CheckRequest
from sidecar.services import SERVICES, Services
from sidecar.upstream import answers, documents
from sidecar.upstream.client import StiggClient
from sidecar.upstream.errors import StiggError, UpstreamProtocolError
from sidecar.upstream.realtime import RealtimeListener
from sidecar.usage.model import parse_event, parse_usage
from sidecar.usage.service import UsageService
from sidecar.usage.sqlite_spool import SqliteSpool
from sidecar.validation import ValidationError, check_identifier
from tests.conftest import API_KEY, sidecar_settings
from tests.contract.stigg_answers import HttpAnswer, answer_values, http_answers

EXAMPLES = 150  # per document and driver: a few hundred answers per document in all
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same answers on every CI run; a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# What a route may answer when Stigg's answer is an error or unusable; 500 never.
UPSTREAM_STATUSES = {404, 409, 422, 502, 503, 504}
EMPTY_STATE = {"accessDeniedReason": None, "entitlements": []}


class FakeStigg:
    """Answers ``operation`` from ``queue`` (then validly); other operations validly."""

    def __init__(self, operation: documents.Operation) -> None:
        self.operation = operation
        self.queue: deque[HttpAnswer] = deque()
        self.calls = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        if body["operationName"] != self.operation.name or not self.queue:
            return self.valid(body)
        self.calls += 1
        answer = self.queue.popleft()
        if answer.timeout:
            raise httpx.ReadTimeout("emulated timeout", request=request)
        headers = {"content-type": answer.content_type}
        return httpx.Response(answer.status, content=answer.body, headers=headers)

    def valid(self, body: dict[str, Any]) -> httpx.Response:
        root = {
            "EntitlementsState": ("entitlementsState", EMPTY_STATE),
            "ReportEvent": ("reportEvent", None),
        }.get(body["operationName"])
        if root is None:
            return httpx.Response(200, json={"errors": [{"message": "not scripted"}]})
        return httpx.Response(200, json={"data": {root[0]: root[1]}})


class Harness:
    """One sidecar app on a fake Stigg, in an event loop of its own (hypothesis is sync)."""

    def __init__(self, operation: documents.Operation, *, fresh_ttl: float = 30.0) -> None:
        self.stigg = FakeStigg(operation)
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count()
        base = sidecar_settings("http://127.0.0.1:9/graphql", max_retries=0)
        self.settings = replace(
            base,
            stigg=replace(base.stigg, breaker_failure_threshold=1_000_000),
            realtime=RealtimeSettings(enabled=False),
            entitlements=EntitlementSettings(check_deadline_seconds=5.0),
            cache=replace(base.cache, fresh_ttl_seconds=fresh_ttl),
        )
        self.upstream = StiggClient(
            self.settings.stigg,
            Secret(API_KEY),
            transport=httpx.MockTransport(self.stigg.handle),
        )
        self.client = self.run(self._start(create_app(self.settings, upstream=self.upstream)))

    @staticmethod
    async def _start(app: web.Application) -> TestClient[web.Request, web.Application]:
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        return client

    def run(self, coroutine: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coroutine)

    def new_id(self, prefix: str = "c") -> str:
        return f"{prefix}{next(self.ids)}"

    @property
    def services(self) -> Services:
        return self.client.app[SERVICES]

    def close(self) -> None:
        self.run(self.client.close())
        self.run(self.upstream.aclose())
        self.loop.close()


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(operation: documents.Operation, **options: Any) -> Harness:
        made.append(Harness(operation, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def no_unhandled_errors(caplog: pytest.LogCaptureFixture) -> None:
    tracebacks = [r for r in caplog.records if r.exc_info or "unhandled" in r.getMessage()]
    caplog.clear()
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def error_of(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str)
    assert isinstance(body["error"]["message"], str)
    return body["error"]  # type: ignore[no-any-return]


async def rest(h: Harness, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await h.client.request(method, path, json=body)
    assert response.content_type == "application/json"
    payload = await response.json()
    assert response.status != 500, payload
    if response.status >= 400:
        assert response.status in UPSTREAM_STATUSES, (response.status, payload)
        error_of(payload)
    return response.status, payload


async def tool(h: Harness, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await call_tool(h.services, name, arguments)
    data = result.structured_content
    assert isinstance(data, dict)
    if result.is_error:
        assert error_of(data)["code"] != "internal_error", data
    return data


# --- customers and subscriptions -------------------------------------------------------------

Call = tuple[str, str, Callable[[str], Any], str, Callable[[str], dict[str, Any]]]
# Document -> (method, REST path, REST body, MCP tool, MCP arguments), each for a fresh id.
PROVISIONING: dict[str, Call] = {
    "GetCustomer": ("GET", "/v1/customers/{id}", lambda i: None, "get-customer",
                    lambda i: {"customerId": i}),
    "ProvisionCustomer": ("POST", "/v1/customers", lambda i: {"customerId": i},
                          "provision-customer", lambda i: {"customerId": i}),
    "ProvisionSubscription": ("POST", "/v1/subscriptions",
                              lambda i: {"customerId": i, "planId": "plan-pro"},
                              "create-subscription",
                              lambda i: {"customerId": i, "planId": "plan-pro"}),
    "CancelSubscription": ("POST", "/v1/subscriptions/{id}/cancel", lambda i: None,
                           "cancel-subscription", lambda i: {"subscriptionId": i}),
}  # fmt: skip
OPERATIONS = {op.name: op for op in documents.ALL_OPERATIONS}


@pytest.mark.parametrize("name", sorted(PROVISIONING))
def test_provisioning_routes_and_tools(
    name: str, harness: Callable[[documents.Operation], Harness], caplog: pytest.LogCaptureFixture
) -> None:
    operation = OPERATIONS[name]
    h = harness(operation)
    method, path, body, tool_name, arguments = PROVISIONING[name]

    async def drive(answer: HttpAnswer) -> None:
        some_id = h.new_id()
        h.stigg.queue.extend([answer, answer])
        status, payload = await rest(h, method, path.format(id=some_id), body(some_id))
        if status < 400:
            assert answer.is_success
        root = _root_of(answer, operation.root_field)
        if name == "GetCustomer" and answer.kind == "data" and root is None:
            # Stigg's null for an unknown customer is a 404, like its CustomerNotFound error.
            assert status == 404
            assert error_of(payload)["stiggCode"] == "CustomerNotFound"
        if status < 400 and name == "GetCustomer":
            assert payload["customerId"] == (root.get("customerId") or some_id)
            assert isinstance(payload["subscriptions"], list)
        await tool(h, tool_name, arguments(h.new_id()))
        await _settle(h)

    @PROPERTY
    @given(answer=http_answers(operation.document))
    def check(answer: HttpAnswer) -> None:
        h.stigg.queue.clear()  # nothing left over from a failed example
        h.run(drive(answer))
        no_unhandled_errors(caplog)

    check()
    assert h.stigg.calls >= EXAMPLES


def _root_of(answer: HttpAnswer, root_field: str) -> Any:
    try:
        return orjson.loads(answer.body)["data"][root_field]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


async def _settle(h: Harness) -> None:
    """Let background refreshes (after provisioning invalidates the cache) run."""
    for _ in range(3):
        await asyncio.sleep(0)


# --- entitlements ----------------------------------------------------------------------------


def _feature_ids(answer: HttpAnswer) -> list[str]:
    state = _root_of(answer, "entitlementsState")
    ids = ["feature-x"]
    if isinstance(state, dict):
        for item in state.get("entitlements") or ():
            feature = item.get("feature") if isinstance(item, dict) else None
            if isinstance(feature, dict) and _is_identifier(feature.get("refId")):
                ids.insert(0, feature["refId"])
    return ids


def _is_identifier(value: Any) -> bool:
    try:
        check_identifier("featureId", value)
    except (ValidationError, TypeError):
        return False
    return True


def test_entitlement_checks_lists_and_tools(
    harness: Callable[[documents.Operation], Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = harness(documents.ENTITLEMENTS_STATE)

    async def drive(answer: HttpAnswer, requested: float | None) -> None:
        feature_id = _feature_ids(answer)[0]
        usable = answer.is_success
        customer = h.new_id()
        h.stigg.queue.append(answer)
        query = {"customerId": customer, "featureId": feature_id}
        if requested is not None:
            query["requestedUsage"] = str(requested)
        response = await h.client.get("/v1/entitlements", params=query)
        check = await response.json()
        assert response.status == 200, check
        assert isinstance(check["hasAccess"], bool)
        if usable:
            assert check["isFallback"] is False
        elif check["isFallback"]:  # whatever Stigg said could not be used: the fallback chain
            assert check["source"] in ("request", "config", "default")
            assert check["fallbackReason"].startswith("upstream_") or answer.kind == "errors"
        else:  # Stigg's CustomerNotFound error is a denial, as its null or data would be
            assert check["accessDeniedReason"] == "CustomerNotFound"

        customer = h.new_id()
        h.stigg.queue.append(answer)
        status, listing = await rest(h, "GET", f"/v1/customers/{customer}/entitlements")
        assert status == 200
        assert all(isinstance(e["hasAccess"], bool) for e in listing["entitlements"])

        h.stigg.queue.append(answer)
        await rest(h, "POST", f"/v1/customers/{h.new_id()}/entitlements/reload")

        h.stigg.queue.append(answer)
        data = await tool(
            h, "check-entitlement", {"customerId": h.new_id(), "featureId": feature_id}
        )
        assert isinstance(data["hasAccess"], bool)
        h.stigg.queue.append(answer)
        await tool(h, "get-entitlements", {"customerId": h.new_id()})

    @PROPERTY
    @given(
        answer=http_answers(documents.ENTITLEMENTS_STATE.document),
        requested=st.one_of(st.none(), st.floats(0, 1e6)),
    )
    def check(answer: HttpAnswer, requested: float | None) -> None:
        h.stigg.queue.clear()
        h.run(drive(answer, requested))
        no_unhandled_errors(caplog)

    check()


# --- realtime updates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation", [documents.ON_ENTITLEMENTS_UPDATED, documents.ON_USAGE_UPDATED]
)
def test_realtime_updates(
    operation: documents.Operation,
    harness: Callable[[documents.Operation], Harness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness(operation)
    entitlements = h.services.entitlements
    listener = RealtimeListener(
        "http://127.0.0.1:9/graphql", Secret(API_KEY), RealtimeSettings(), entitlements
    )

    async def drive(value: Any) -> None:
        await listener._dispatch({"data": {operation.root_field: value}})
        customer = value.get("customerId") if isinstance(value, dict) else None
        for feature_id in _feature_ids(
            HttpAnswer(body=orjson.dumps({"data": {"entitlementsState": value}}))
        ):
            if isinstance(customer, str):
                answer = await entitlements.check(CheckRequest(customer, feature_id))
                assert isinstance(answer["hasAccess"], bool)

    @PROPERTY
    @given(value=answer_values(operation.document, unknown_enums=True, extra_fields=True))
    def check(value: Any) -> None:
        h.run(drive(value))
        no_unhandled_errors(caplog)

    check()


# --- edge reads the sidecar relays ----------------------------------------------------------

# Document -> the edge path answered from it (a fresh id each time: no cached answer).
RELAYED: dict[str, Callable[[str], str]] = {
    "GetActiveSubscriptionsList": lambda i: f"/v1/c/{i}/subscriptions.json",
    "GetPaywall": lambda i: f"/v1/p/{i}/paywall.json",
    "GetSdkConfiguration": lambda i: "/v1/config/server-sdk-configuration.json",
}


@pytest.mark.parametrize("name", sorted(RELAYED))
def test_edge_reads_relay_or_fail_cleanly(
    name: str, harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    """The app's own Stigg SDK reads these answers; the sidecar relays Stigg's data as it is,
    and a failed or unusable answer is a JSON error, never a 500."""
    operation = OPERATIONS[name]
    h = harness(operation, fresh_ttl=0.0)  # the catalog reads are not cached across examples

    async def drive(answer: HttpAnswer) -> None:
        h.stigg.queue.append(answer)
        status, payload = await rest(h, "GET", RELAYED[name](h.new_id()))
        if status != 200:
            assert not answer.is_success, (status, payload)
        elif payload.get("data") is None:  # Stigg's error, relayed as its edge would
            assert payload["errors"], payload
        else:
            assert set(payload["data"]) == {operation.root_field}

    @PROPERTY
    @given(answer=http_answers(operation.document))
    def check(answer: HttpAnswer) -> None:
        h.stigg.queue.clear()
        h.run(drive(answer))
        no_unhandled_errors(caplog)

    check()
    assert h.stigg.calls >= EXAMPLES


# --- readers alone: valid answers raise no alarm ---------------------------------------------

READERS: dict[str, Callable[[Any], Any]] = {
    "EntitlementsState": answers.entitlements_state,
    "GetCustomer": lambda v: answers.customer(v, "c1"),
    "ProvisionCustomer": lambda v: answers.provisioned_customer(v, "c1"),
    "ProvisionSubscription": lambda v: answers.provisioned_subscription(v, "c1"),
    "CancelSubscription": answers.cancelled_subscription,
    "ReportUsageBulk": answers.measurements,
    "ReportEvent": lambda v: v,
    "OnEntitlementsUpdated": answers.entitlements_update,
    "OnUsageUpdated": answers.usage_update,
}


def test_every_document_has_a_reader() -> None:
    """Each document's answer is read by the sidecar, or relayed as it is to the app's SDK."""
    assert set(READERS) | set(RELAYED) == {op.name for op in documents.ALL_OPERATIONS}
    assert not set(READERS) & set(RELAYED)


def _read(reader: Callable[[Any], Any], value: Any) -> tuple[Any, Exception | None]:
    """The reader's result, or the one kind of error it may raise."""
    try:
        return reader(value), None
    except (StiggError, UpstreamProtocolError) as exc:
        return None, exc


@pytest.mark.parametrize("name", sorted(READERS))
def test_answers_valid_by_the_schema_are_read_without_alarm(name: str) -> None:
    """No false alarms: only a real difference from the schema counts as unexpected."""
    operation = OPERATIONS[name]
    reader = READERS[name]

    @PROPERTY
    @given(value=answer_values(operation.document))
    def check(value: Any) -> None:
        before = sum(answers.DRIFT.counts.values())
        _, error = _read(reader, value)
        if error is not None:  # only a null customer, which is CustomerNotFound
            assert isinstance(error, StiggError)
            assert (name, value, error.stigg_code) == ("GetCustomer", None, "CustomerNotFound")
        assert sum(answers.DRIFT.counts.values()) == before

    check()


@pytest.mark.parametrize("name", sorted(READERS))
def test_surprising_answers_are_read_or_refused_cleanly(name: str) -> None:
    """Unknown enum values and extra fields: a clean result or ``upstream_invalid_answer``."""
    operation = OPERATIONS[name]
    reader = READERS[name]

    @PROPERTY
    @given(value=answer_values(operation.document, unknown_enums=True, extra_fields=True))
    def check(value: Any) -> None:
        result, error = _read(reader, value)
        if isinstance(error, StiggError):
            assert error.stigg_code == "CustomerNotFound"
        assert "SOME_FUTURE_VALUE" not in orjson.dumps(result).decode()
        assert "newField" not in orjson.dumps(result).decode()

    check()


# --- the usage flusher -----------------------------------------------------------------------

FLUSH = UsageSettings(
    flush_interval_seconds=0.001,
    calls_per_minute=6_000_000,
    event_calls_per_minute=6_000_000,
    retry_backoff_seconds=0.0001,
    retry_backoff_max_seconds=0.001,
    auth_retry_seconds=0.001,
    shutdown_deadline_seconds=10,
    coalesce=True,
    max_batch_size=3,
    max_event_batch_size=3,
)


class FakeUsageStigg:
    """Applies usages and events like Stigg (a repeated key counts once) and answers each call
    from the drawn ``script``, then validly; a drawn failure may come after applying the call."""

    def __init__(self) -> None:
        self.script: deque[tuple[HttpAnswer, bool]] = deque()
        self.applied: dict[str, float] = {}  # idempotency key -> value
        self.events: set[str] = set()

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        items = body["variables"]["input"].get("usages") or body["variables"]["input"].get(
            "usageEvents"
        )
        root = "reportUsageBulk" if "usages" in body["variables"]["input"] else "reportEvent"
        keys = [item["idempotencyKey"] for item in items]
        seen = self.applied if root == "reportUsageBulk" else self.events
        # Stigg answers a repeat of an applied call as a success, whatever was drawn.
        if self.script and not all(key in seen for key in keys):
            answer, applied_anyway = self.script.popleft()
            # A timeout or a broken answer may come after Stigg applied the call; a GraphQL
            # error (the root failed) never does.
            if answer.is_success or (applied_anyway and answer.kind in ("timeout", "http_error")):
                self.apply(root, items)
            if answer.timeout:
                raise httpx.ReadTimeout("emulated timeout", request=request)
            return httpx.Response(
                answer.status, content=answer.body, headers={"content-type": answer.content_type}
            )
        self.apply(root, items)
        value = [_measurement(item) for item in items] if root == "reportUsageBulk" else None
        return httpx.Response(200, json={"data": {root: value}})

    def apply(self, root: str, items: list[dict[str, Any]]) -> None:
        for item in items:
            if root == "reportEvent":
                self.events.add(item["idempotencyKey"])
            else:
                self.applied.setdefault(item["idempotencyKey"], item["value"])


def _measurement(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "00000000-0000-0000-0000-000000000000",
        "customerId": item["customerId"],
        "featureId": item["featureId"],
        "resourceId": None,
        "currentUsage": item["value"],
        "usagePeriodStart": None,
        "usagePeriodEnd": None,
        "nextResetDate": None,
        "timestamp": "2026-01-01T00:00:00Z",
    }


@pytest.mark.parametrize("operation", [documents.REPORT_USAGE_BULK, documents.REPORT_EVENT])
def test_flusher_never_drops_or_double_counts(
    operation: documents.Operation, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.new_event_loop()
    folder = Path(tempfile.mkdtemp(prefix="stigg-sidecar-property-"))
    examples = itertools.count()

    async def drive(script: list[tuple[HttpAnswer, bool]], values: list[int]) -> None:
        stigg = FakeUsageStigg()
        stigg.script.extend(script)
        settings = sidecar_settings("http://127.0.0.1:9/graphql", max_retries=0)
        upstream = StiggClient(
            replace(settings.stigg, breaker_failure_threshold=1_000_000),
            Secret(API_KEY),
            transport=httpx.MockTransport(stigg.handle),
        )
        spool = SqliteSpool(
            folder / str(next(examples)),
            max_reports=10_000,
            max_bytes=10**8,
            dedupe_window_seconds=3600,
        )
        service = UsageService(upstream, spool, FLUSH)
        for flusher in service.flushers.values():
            flusher._rng = lambda low, high: low  # no real waits after a drawn 429
        await service.start()
        if operation is documents.REPORT_EVENT:
            events = [parse_event({"eventName": "e", "customerId": f"c{i % 2}"}) for i in values]
            await service.accept_events(events)
        else:
            usages = [
                parse_usage({"customerId": f"c{i % 2}", "featureId": "f", "value": v})
                for i, v in enumerate(values)
            ]
            await service.accept_usages(usages)
        for _ in range(2000):
            depth = await spool.depth()
            if not any(depth.reports.values()) and not depth.open_batches:
                break
            await asyncio.sleep(0.001)
        dead = await spool.dead_letters(None, 10_000, None)
        await service.stop()
        await upstream.aclose()
        assert not any(depth.reports.values()), "reports left undelivered"
        assert all(letter.reason and letter.code for letter in dead)
        dead_total = sum(
            letter.record.get("value", 1) if operation is documents.REPORT_USAGE_BULK else 1
            for letter in dead
        )
        if operation is documents.REPORT_USAGE_BULK:
            # Every accepted unit counted by Stigg once or dead-lettered, never both/neither.
            assert sum(stigg.applied.values()) + dead_total == sum(values)
        else:
            assert len(stigg.events) + dead_total == len(values)

    answers_for = http_answers(operation.document)

    @PROPERTY
    @given(
        script=st.lists(st.tuples(answers_for, st.booleans()), max_size=4),
        values=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    )
    def check(script: list[tuple[HttpAnswer, bool]], values: list[int]) -> None:
        loop.run_until_complete(drive(script, values))
        no_unhandled_errors(caplog)

    try:
        check()
    finally:
        loop.close()
