"""Parsing usage and event requests: one or many, all or nothing, errors naming the field."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sidecar.usage.model import (
    parse_event_request,
    parse_usage_request,
)
from sidecar.validation import ValidationError

GOOD = {"customerId": "c", "featureId": "f", "value": 1}
ACCEPTED = "2026-02-01T12:00:00.5Z"


def test_one_report_or_a_batch() -> None:
    [one], batch = parse_usage_request(GOOD, max_reports=10)
    assert not batch
    assert one.idempotency_key.startswith("sidecar-")
    assert not one.key_from_client
    reports, batch = parse_usage_request(
        {"usages": [GOOD, {**GOOD, "idempotencyKey": "k", "updateBehavior": "SET"}]},
        max_reports=10,
    )
    assert batch
    assert [(r.update_behavior, r.key_from_client) for r in reports] == [
        ("DELTA", False),
        ("SET", True),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"usages": []}, "usages"),
        ({"usages": {}}, "usages"),
        ({"usages": [GOOD] * 11}, "usages"),
        ({"usages": [GOOD], "extra": 1}, "extra"),
        ({"usages": [GOOD, GOOD, GOOD, {**GOOD, "value": "1"}]}, "usages[3].value"),
        ({"usages": [GOOD, 7]}, "usages[1]"),
        ({"usages": [{**GOOD, "updateBehavior": "INCREMENT"}]}, "usages[0].updateBehavior"),
        ({"usages": [{**GOOD, "idempotencyKey": " "}]}, "usages[0].idempotencyKey"),
        ({"usages": [{**GOOD, "idempotencyKey": "k" * 256}]}, "usages[0].idempotencyKey"),
        ({"usages": [{**GOOD, "timestamp": "2999-01-01T00:00:00Z"}]}, "usages[0].timestamp"),
        ({"usages": [{**GOOD, "dimensions": {"d": {"x": 1}}}]}, "usages[0].dimensions.d"),
        ({"usages": [{**GOOD, "customerId": "a b"}]}, "usages[0].customerId"),
    ],
)
def test_bad_batches_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_usage_request(body, max_reports=10)
    assert error.value.field == field


def test_records_keep_every_field() -> None:
    [report], _ = parse_usage_request(
        {
            **GOOD,
            "resourceId": "r",
            "timestamp": "2026-01-01T00:00:00Z",
            "dimensions": {"region": "eu", "n": 2, "ok": True},
        },
        max_reports=1,
    )
    record = report.to_record(ACCEPTED)
    assert (record["timestamp"], record["resourceId"]) == ("2026-01-01T00:00:00Z", "r")
    assert record["dimensions"] == {"region": "eu", "n": 2, "ok": True}
    [event], _ = parse_event_request(
        {"eventName": "upload", "customerId": "c", "timestamp": "2026-01-01T00:00:00Z"},
        max_reports=1,
    )
    assert event.to_record(ACCEPTED)["timestamp"] == "2026-01-01T00:00:00Z"


def test_a_report_without_a_timestamp_is_stamped_with_its_acceptance() -> None:
    [report], _ = parse_usage_request(GOOD, max_reports=1)
    [event], _ = parse_event_request({"eventName": "upload", "customerId": "c"}, max_reports=1)
    assert report.to_record(ACCEPTED)["timestamp"] == ACCEPTED
    assert event.to_record(ACCEPTED)["timestamp"] == ACCEPTED


def test_minted_keys_are_distinct_uuids_after_the_prefix() -> None:
    reports, _ = parse_usage_request({"usages": [GOOD] * 1000}, max_reports=1000)
    keys = [r.idempotency_key for r in reports]
    assert len(set(keys)) == 1000
    for key in keys[:3]:
        prefix, _, rest = key.partition("-")
        assert prefix == "sidecar"
        assert str(uuid.UUID(rest)) == rest


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customerId": "c"}, "eventName"),
        ({"eventName": "", "customerId": "c"}, "eventName"),
        ({"eventName": "e"}, "customerId"),
        ({"eventName": "e", "customerId": "c", "value": 1}, "value"),
        (
            {"events": [{"eventName": "e", "customerId": "c", "timestamp": "soon"}]},
            "events[0].timestamp",
        ),
        ({"events": [{"eventName": "e", "customerId": "c"}] * 3}, "events"),
    ],
)
def test_bad_events_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_event_request(body, max_reports=2)
    assert error.value.field == field
