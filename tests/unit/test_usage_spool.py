"""One suite for both spools: SQLite in a temporary directory and Redis on fakeredis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import fakeredis
import orjson
import pytest

from sidecar.usage import redis_spool as redis_spool_module
from sidecar.usage import sqlite_spool
from sidecar.usage.redis_spool import RedisSpool
from sidecar.usage.spool import Batch, BatchItem, Entry, NewReport, Spool, SpoolFull
from sidecar.usage.sqlite_spool import SqliteSpool

Factory = Callable[..., Awaitable[Spool]]


@pytest.fixture(params=["sqlite", "redis"])
async def make_spool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """Opens spools over one shared store: a second call is "the next process"."""
    server = fakeredis.FakeServer()
    opened: list[Spool] = []

    async def make(store: str = "main", **limits: int) -> Spool:
        spool: Spool
        max_reports = limits.get("max_reports", 1000)
        max_bytes = limits.get("max_bytes", 10**6)
        if request.param == "sqlite":
            spool = SqliteSpool(
                tmp_path / store,
                max_reports=max_reports,
                max_bytes=max_bytes,
                dedupe_window_seconds=60,
            )
        else:
            spool = redis_spool(
                fakeredis.FakeAsyncRedis(server=server),
                store,
                max_reports=max_reports,
                max_bytes=max_bytes,
            )
        await spool.open()
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        await spool.close()


def redis_spool(client: Any, prefix: str, **options: Any) -> RedisSpool:
    """A Redis spool with the suite's settings (1,000 reports, 1 MB, keys remembered 60 s,
    a 5 s lease) unless ``options`` say otherwise."""
    settings: dict[str, Any] = {
        "max_reports": 1000,
        "max_bytes": 10**6,
        "dedupe_window_seconds": 60,
        "lease_seconds": 5,
        **options,
    }
    return RedisSpool(client, prefix=prefix, **settings)


def report(n: int, key: str | None = None) -> NewReport:
    return NewReport(orjson.dumps({"n": n}), key)


def numbers(entries: list[Entry]) -> list[int]:
    return [orjson.loads(entry.body)["n"] for entry in entries]


def batch_of(entries: list[Entry], batch_id: str = "b1") -> Batch:
    return Batch(
        batch_id,
        "usage",
        [BatchItem({"n": orjson.loads(e.body)["n"]}, [(e.id, e.accepted_at)]) for e in entries],
    )


async def test_append_then_fetch_in_order(make_spool: Factory) -> None:
    spool = await make_spool()
    assert await spool.acquire()
    assert await spool.append("usage", [report(1), report(2)], 100.0) == [True, True]
    assert await spool.append("usage", [report(3)], 101.0) == [True]
    assert await spool.append("event", [report(9)], 101.0) == [True]
    entries = await spool.fetch("usage", 10, restart=True)
    assert numbers(entries) == [1, 2, 3]
    assert [e.accepted_at for e in entries] == [100.0, 100.0, 101.0]
    assert await spool.fetch("usage", 10, restart=False) == []  # nothing new
    assert numbers(await spool.fetch("event", 10, restart=True)) == [9]
    depth = await spool.depth()
    assert depth.reports == {"usage": 3, "event": 1}
    assert depth.oldest_accepted_at["usage"] == 100.0


async def test_fetches_between_appends_see_each_report_once_in_order(make_spool: Factory) -> None:
    """Whatever the fetch limit, with the other kind appended in between; the ids fetched are
    the stored reports' own: acknowledging them empties the spool."""
    spool = await make_spool()
    assert await spool.acquire()
    fetched = await spool.fetch("usage", 2, restart=True)
    sent = 0
    for appended, limit in [(1, 2), (3, 2), (6, 3), (2, 10), (0, 10), (5, 1), (1, 10)]:
        await spool.append("usage", [report(sent + n) for n in range(appended)], 0.0)
        await spool.append("event", [report(-1)], 0.0)  # the other kind, in between
        sent += appended
        fetched += await spool.fetch("usage", limit, restart=False)
    while more := await spool.fetch("usage", 3, restart=False):
        fetched += more
    assert numbers(fetched) == list(range(sent))
    assert numbers(await spool.fetch("usage", 100, restart=True)) == list(range(sent))
    batch = batch_of(fetched)
    assert await spool.record_batch(batch)
    await spool.ack_batch(batch)
    assert (await spool.depth()).reports == {"usage": 0, "event": 7}
    assert await spool.fetch("usage", 100, restart=True) == []


async def test_client_keys_are_deduplicated_within_the_window(make_spool: Factory) -> None:
    spool = await make_spool()
    assert await spool.append("usage", [report(1, "k1"), report(2, "k1")], 0.0) == [True, False]
    assert await spool.append("usage", [report(3, "k1"), report(4, "k2")], 1.0) == [False, True]
    # The same key for an event is another namespace.
    assert await spool.append("event", [report(5, "k1")], 1.0) == [True]
    assert (await spool.depth()).reports["usage"] == 2


async def test_full_spool_refuses_the_whole_request(make_spool: Factory) -> None:
    spool = await make_spool(max_reports=3)
    assert await spool.append("usage", [report(1), report(2)], 0.0) == [True, True]
    with pytest.raises(SpoolFull):
        await spool.append("usage", [report(3), report(4)], 0.0)
    with pytest.raises(SpoolFull):
        await spool.append("event", [report(3), report(4)], 0.0)
    assert (await spool.depth()).reports == {"usage": 2, "event": 0}
    assert await spool.append("usage", [report(3)], 0.0) == [True]
    small = await make_spool("small", max_reports=100, max_bytes=30)
    with pytest.raises(SpoolFull):
        await small.append("usage", [report(n) for n in range(10, 40)], 0.0)


async def test_concurrent_requests_are_each_all_or_none_and_deduplicated_across(
    make_spool: Factory,
) -> None:
    """Requests written together (one group commit) keep their own answers: a full one is
    refused whole while the others are stored, and a key two of them share counts once."""
    spool = await make_spool(max_reports=5)
    answers = await asyncio.gather(
        spool.append("usage", [report(1, "shared"), report(2)], 0.0),
        spool.append("usage", [report(3, "shared")], 0.0),
        spool.append("usage", [report(4), report(5), report(6), report(7)], 0.0),
        spool.append("usage", [report(8)], 0.0),
        return_exceptions=True,
    )
    assert answers[0] == [True, True]
    assert answers[1] == [False]
    assert isinstance(answers[2], SpoolFull)
    assert answers[3] == [True]
    assert await spool.acquire()
    assert numbers(await spool.fetch("usage", 10, restart=True)) == [1, 2, 8]


async def test_redis_append_survives_lost_scripts() -> None:
    """After a Redis restart or failover the scripts are gone: appends load them again."""
    client = fakeredis.FakeAsyncRedis()
    spool = redis_spool(client, "p", max_reports=100)
    await spool.open()
    assert await spool.append("usage", [report(1)], 0.0) == [True]
    await client.script_flush()
    answers = await asyncio.gather(*(spool.append("usage", [report(n)], 0.0) for n in (2, 3)))
    assert answers == [[True], [True]]
    assert (await spool.depth()).reports["usage"] == 3


async def test_recorded_batch_survives_a_restart_and_is_resent_as_is(make_spool: Factory) -> None:
    first = await make_spool()
    assert await first.acquire()
    await first.append("usage", [report(n) for n in range(5)], 0.0)
    entries = await first.fetch("usage", 3, restart=True)
    batch = batch_of(entries)
    assert await first.record_batch(batch)
    await first.release()
    await first.close()

    second = await make_spool()
    assert await second.acquire()
    [resumed] = await second.open_batches("usage")
    assert resumed.to_bytes() == batch.to_bytes()
    # Reports in a recorded batch are not fetched again; the rest are, oldest first.
    assert numbers(await second.fetch("usage", 10, restart=True)) == [3, 4]
    await second.ack_batch(resumed)
    assert await second.open_batches("usage") == []
    depth = await second.depth()
    assert depth.reports["usage"] == 2
    assert depth.open_batches == 0


async def test_ack_cut_short_leaves_the_batch_to_ack_again(
    make_spool: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is acknowledged a few reports at a time (two here) and its record goes last: a
    process that stops in between finds the batch open, does not fetch the reports still in
    it, and its second acknowledgement removes them."""
    monkeypatch.setattr(sqlite_spool, "ACK_ROWS", 2)
    monkeypatch.setattr(redis_spool_module, "ACK_ENTRIES", 2)
    first = await make_spool()
    assert await first.acquire()
    await first.append("usage", [report(n) for n in range(6)], 0.0)
    batch = batch_of(await first.fetch("usage", 5, restart=True))
    assert await first.record_batch(batch)
    stop_at_second_ack_step(first, monkeypatch)
    with pytest.raises(RuntimeError, match="stopped here"):
        await first.ack_batch(batch)
    await first.release()
    await first.close()

    second = await make_spool()
    assert await second.acquire()
    assert (await second.depth()).reports["usage"] == 4  # reports 2, 3, 4 and 5
    [resumed] = await second.open_batches("usage")
    assert resumed.id == batch.id
    assert numbers(await second.fetch("usage", 10, restart=True)) == [5]
    await second.ack_batch(resumed)
    depth = await second.depth()
    assert (depth.reports["usage"], depth.open_batches) == (1, 0)


def stop_at_second_ack_step(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process stops after the first step of an acknowledgement (a fault injected into
    the spool's own step: a SQLite transaction, a Redis script run)."""
    steps: list[int] = []

    def stopping(step: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            steps.append(1)
            if len(steps) == 2:
                raise RuntimeError("the process stopped here")
            return step(*args, **kwargs)

        return run

    if isinstance(spool, SqliteSpool):
        monkeypatch.setattr(spool, "_delete_reports", stopping(spool._delete_reports))
    else:
        assert isinstance(spool, RedisSpool)
        monkeypatch.setitem(spool._scripts, "ack", stopping(spool._scripts["ack"]))


async def test_ack_removes_reports_and_frees_room(make_spool: Factory) -> None:
    spool = await make_spool(max_reports=2)
    assert await spool.acquire()
    await spool.append("usage", [report(1), report(2)], 0.0)
    batch = batch_of(await spool.fetch("usage", 10, restart=True))
    assert await spool.record_batch(batch)
    await spool.ack_batch(batch)
    depth = await spool.depth()
    assert (depth.reports["usage"], depth.bytes) == (0, 0)
    assert await spool.append("usage", [report(3), report(4)], 0.0) == [True, True]


async def test_split_and_dead_letter_then_replay(make_spool: Factory) -> None:
    spool = await make_spool()
    assert await spool.acquire()
    await spool.append("usage", [report(n) for n in range(4)], 5.0)
    batch = batch_of(await spool.fetch("usage", 10, restart=True))
    assert await spool.record_batch(batch)
    left, right = batch.split()
    assert await spool.split_batch(batch, [left, right])
    assert [b.id for b in await spool.open_batches("usage")] == [left.id, right.id]
    await spool.ack_batch(left)
    bad, good = right.split()
    assert await spool.split_batch(right, [bad, good])
    assert await spool.dead_letter(bad, "Customer x not found", "CustomerNotFound", 9.0) == 1
    await spool.ack_batch(good)
    assert (await spool.depth()).reports["usage"] == 0

    [letter] = await spool.dead_letters(None, 10, None)
    assert (letter.kind, letter.record, letter.code) == ("usage", {"n": 2}, "CustomerNotFound")
    assert (letter.accepted_at, letter.failed_at) == (5.0, 9.0)
    assert await spool.dead_letters("event", 10, None) == []
    assert await spool.dead_letters(None, 10, letter.id) == []
    assert (await spool.depth()).dead_letters == 1

    assert await spool.replay([letter.id], 10.0) == {"usage": 1, "event": 0}
    assert await spool.dead_letters(None, 10, None) == []
    assert numbers(await spool.fetch("usage", 10, restart=False)) == [2]


async def test_replay_all_and_unknown_ids(make_spool: Factory) -> None:
    spool = await make_spool()
    assert await spool.acquire()
    await spool.append("event", [report(1), report(2)], 0.0)
    for entry in await spool.fetch("event", 10, restart=True):
        batch = Batch(f"b{entry.id}", "event", [BatchItem({}, [(entry.id, 0.0)])])
        assert await spool.record_batch(batch)
        await spool.dead_letter(batch, "bad", "BadUserInput", 1.0)
    assert await spool.replay(["999999", "1-1", "nonsense"], 2.0) == {"usage": 0, "event": 0}
    assert await spool.replay(None, 2.0) == {"usage": 0, "event": 2}
    assert numbers(await spool.fetch("event", 10, restart=False)) == [1, 2]


async def test_sqlite_lock_keeps_a_second_process_out(tmp_path: Path) -> None:
    first = SqliteSpool(tmp_path, max_reports=10, max_bytes=10**6, dedupe_window_seconds=60)
    await first.open()
    try:
        second = SqliteSpool(tmp_path, max_reports=10, max_bytes=10**6, dedupe_window_seconds=60)
        with pytest.raises(RuntimeError, match="another stigg-sidecar"):
            await second.open()
    finally:
        await first.close()


async def test_sqlite_expired_keys_are_accepted_again_and_purged(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path, max_reports=10, max_bytes=10**6, dedupe_window_seconds=60)
    await spool.open()
    try:
        assert await spool.append("usage", [report(1, "k")], 0.0) == [True]
        assert await spool.append("usage", [report(2, "k")], 59.0) == [False]
        assert await spool.append("usage", [report(3, "k")], 61.0) == [True]
        assert await spool.append("usage", [report(4, "other")], 0.0) == [True]
        assert await spool.purge_expired_keys(200.0) == 2
    finally:
        await spool.close()


async def test_redis_lease_fences_a_replica_that_lost_it() -> None:
    server = fakeredis.FakeServer()
    clock = [0.0]

    claimed: list[int] = []

    def spool(name: str) -> RedisSpool:
        return redis_spool(
            fakeredis.FakeAsyncRedis(server=server),
            "fence",
            max_reports=100,
            consumer=name,
            on_claimed=lambda kind, count: claimed.append(count),
            clock=lambda: clock[0],
        )

    a, b = spool("a"), spool("b")
    await a.open()
    await b.open()
    try:
        assert await a.acquire()
        assert not await b.acquire()
        await a.append("usage", [report(n) for n in range(6)], 0.0)
        held = await a.fetch("usage", 3, restart=True)  # read by a, never batched
        # a stalls past its lease; b takes over and claims what a had read, oldest first.
        await a.redis.delete("fence:lease")
        assert await b.acquire()
        taken = await b.fetch("usage", 10, restart=True)
        assert numbers(taken) == [0, 1, 2, 3, 4, 5]
        assert claimed == [3]
        # a's late attempt to record a batch is refused.
        assert not await a.record_batch(batch_of(held))
        assert await b.record_batch(batch_of(taken, "bb"))
        assert [x.id for x in await b.open_batches("usage")] == ["bb"]
        await b.release()
        assert await a.acquire()  # released: taken over at once
    finally:
        await a.close()
        await b.close()


async def test_reports_left_under_the_old_spool_keys_are_reported_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = fakeredis.FakeAsyncRedis()
    await client.xadd("{stigg-sidecar}:spool:usage", {"b": b"{}", "a": b"0"})
    spool = redis_spool(
        client, "stigg-sidecar:default:{spool}", max_reports=100, legacy_prefix="stigg-sidecar"
    )
    await spool.open()
    try:
        [warning] = [r.getMessage() for r in caplog.records if "namespaced" in r.getMessage()]
        assert "1 report(s) wait in {stigg-sidecar}:spool:usage" in warning
    finally:
        await spool.close()
