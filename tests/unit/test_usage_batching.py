"""Forming batches: prefixes of the queue, coalescing only what may be merged, order kept."""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.usage.batching import BatchBuilder, EventBatchBuilder, Pending, UsageBatchBuilder

T0 = "2026-01-01T00:00:00Z"


def usage(
    n: int,
    *,
    customer: str = "c1",
    feature: str = "f1",
    value: float = 1,
    behavior: str = "DELTA",
    client_key: bool = False,
    timestamp: str = T0,
    **extra: Any,
) -> Pending:
    record = {
        "customerId": customer,
        "featureId": feature,
        "value": value,
        "updateBehavior": behavior,
        "idempotencyKey": f"key-{n}",
        "keyFromClient": client_key,
        "timestamp": timestamp,
        **extra,
    }
    from sidecar.usage.spool import Entry

    return Pending(Entry(str(n), orjson.dumps(record), float(n)), record)


def fill(builder: BatchBuilder, pending: list[Pending], batch_id: str) -> tuple[Any, int]:
    """Feed ``pending`` in order, as the flusher does, until the batch refuses one."""
    for item in pending:
        if not builder.add(item):
            break
    return builder.build(batch_id), builder.used


def build(pending: list[Pending], **options: Any) -> tuple[Any, int]:
    settings: dict[str, Any] = {
        "max_items": 100,
        "max_reports": 10_000,
        "coalesce": True,
        "window_seconds": 60,
    }
    settings.update(options)
    return fill(UsageBatchBuilder(**settings), pending, "B")


def test_hot_key_deltas_become_one_usage_with_a_batch_derived_key() -> None:
    batch, used = build([usage(n, value=n) for n in range(1, 6)])
    assert used == 5
    [item] = batch.items
    assert item.payload["value"] == 15
    assert item.payload["idempotencyKey"] == "sidecar-batch-B-0"
    assert item.payload["createdAt"] == T0
    assert "keyFromClient" not in item.payload
    assert [source for source, _ in item.sources] == ["1", "2", "3", "4", "5"]


def test_a_single_report_keeps_its_own_key() -> None:
    batch, _ = build([usage(1), usage(2, customer="c2")])
    assert [i.payload["idempotencyKey"] for i in batch.items] == ["key-1", "key-2"]
    assert batch.items[0].payload["createdAt"] == T0
    assert "timestamp" not in batch.items[0].payload


def test_without_coalescing_every_report_is_its_own_usage() -> None:
    batch, used = build([usage(n) for n in range(5)], coalesce=False)
    assert (len(batch.items), used) == (5, 5)


def test_client_keys_sets_dimensions_and_time_windows_are_not_merged() -> None:
    batch, _ = build(
        [
            usage(1),
            usage(2, client_key=True),
            usage(3, dimensions={"region": "eu"}),
            usage(4, timestamp="2026-01-01T00:01:00Z"),
            usage(5, dimensions={"region": "eu"}),
            usage(6),
        ]
    )
    values = [(i.payload["idempotencyKey"], len(i.sources)) for i in batch.items]
    assert values == [
        ("sidecar-batch-B-0", 2),  # 1 and 6
        ("key-2", 1),
        ("sidecar-batch-B-2", 2),  # 3 and 5
        ("key-4", 1),
    ]


def test_a_delta_after_a_set_is_never_merged_before_it() -> None:
    batch, _ = build(
        [
            usage(1, value=5),
            usage(2, behavior="SET", value=100),
            usage(3, value=1),
            usage(4, value=2),
            usage(5, customer="other", value=7),
        ]
    )
    assert [(i.payload["updateBehavior"], i.payload["value"]) for i in batch.items] == [
        ("DELTA", 5),
        ("SET", 100),
        ("DELTA", 3),
        ("DELTA", 7),
    ]


def test_a_full_batch_is_a_prefix_of_the_queue() -> None:
    pending = [usage(n, customer=f"c{n % 3}") for n in range(10)]
    batch, used = build(pending, max_items=2)
    # c0 and c1 open the two usages; the first c2 report ends the batch, even though later
    # c0/c1 reports could still have been merged: they stay behind it, in order.
    assert used == 2
    assert [len(i.sources) for i in batch.items] == [1, 1]
    batch, used = build(pending, max_items=2, max_reports=1)
    assert used == 1


def test_uncoalesced_batches_hold_at_most_max_items() -> None:
    pending = [usage(n, client_key=True) for n in range(250)]
    batch, used = build(pending)
    assert (len(batch.items), used) == (100, 100)


def test_events_are_sent_one_by_one_with_their_keys() -> None:
    from sidecar.usage.spool import Entry

    records = [
        {"eventName": "e", "customerId": "c", "idempotencyKey": f"k{n}", "keyFromClient": True}
        for n in range(3)
    ]
    pending = [Pending(Entry(str(n), orjson.dumps(r), 0.0), r) for n, r in enumerate(records)]
    batch, used = fill(EventBatchBuilder(max_items=2), pending, "E")
    assert used == 2
    assert [i.payload for i in batch.items] == [
        {"eventName": "e", "customerId": "c", "idempotencyKey": "k0"},
        {"eventName": "e", "customerId": "c", "idempotencyKey": "k1"},
    ]


def test_a_full_batch_refuses_the_next_report_and_that_report_heads_the_next_batch() -> None:
    # Full at three usages: report 4 would merge into report 1's usage, but a full batch is
    # sent as it is, and report 4 starts the next one.
    pending = [usage(n, customer=f"c{n % 3}") for n in range(1, 8)]
    pending.insert(4, usage(99, customer="c9", behavior="SET"))
    builder = UsageBatchBuilder(max_items=3, max_reports=100, coalesce=True, window_seconds=60)
    assert [builder.add(item) for item in pending[:4]] == [True, True, True, False]
    assert builder.full
    assert builder.used == 3
    first = builder.build("B")
    assert [[s for s, _ in i.sources] for i in first.items] == [["1"], ["2"], ["3"]]
    rest, used = build(pending[3:], max_items=3)
    assert [[s for s, _ in i.sources] for i in rest.items] == [["4"], ["99"], ["5"]]
    assert used == 3


def test_a_builder_is_full_at_the_most_reports_a_batch_may_carry() -> None:
    builder = UsageBatchBuilder(max_items=100, max_reports=2, coalesce=True, window_seconds=60)
    assert builder.add(usage(1))
    assert not builder.full
    assert builder.add(usage(2))
    assert builder.full
    assert not builder.add(usage(3))
    [item] = builder.build("B").items
    assert item.payload["value"] == 2
