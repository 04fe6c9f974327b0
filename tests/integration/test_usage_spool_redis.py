"""The spool suite (tests/unit/test_usage_spool.py, there on fakeredis) against real Redis in
every mode: standalone, Cluster (each script on the ``{spool}`` slot), Sentinel and TLS."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator

import pytest

from sidecar.redis_connect import RedisClient
from sidecar.redis_namespace import RedisNamespace
from sidecar.usage.redis_spool import RedisSpool
from sidecar.usage.spool import NewReport, Spool
from tests.conftest import RedisTarget
from tests.unit import test_usage_spool as suite

# Every test of the suite that takes a spool factory runs here too, with the factory below.
for _name, _test in vars(suite).items():
    if _name.startswith("test_") and "make_spool" in inspect.signature(_test).parameters:
        globals()[_name] = _test


@pytest.fixture
async def make_spool(redis_target: RedisTarget) -> AsyncIterator[suite.Factory]:
    """Spools over one Redis: a second call with the same store is "the next process"."""
    run = uuid.uuid4().hex
    clients: list[RedisClient] = []
    opened: list[Spool] = []

    async def make(store: str = "main", **limits: int) -> Spool:
        client = redis_target.client()
        clients.append(client)
        spool = suite.redis_spool(client, RedisNamespace(f"test-{run}-{store}").spool, **limits)
        await spool.open()
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        await spool.close()
    for client in clients:
        await client.aclose()


async def test_appends_wait_for_a_replica_when_asked(redis_sentinel: RedisTarget) -> None:
    """With minReplicasAck 1 the append is confirmed by the replica (WAIT on the write's own
    connection); asking for more replicas than exist is answered NotReplicated, even for a
    retry that finds its reports already spooled, until enough replicas confirm: then the
    retry is a duplicate."""
    from sidecar.usage.spool import NotReplicated

    client = redis_sentinel.client()
    prefix = RedisNamespace(f"test-{uuid.uuid4().hex}").spool

    def spool(replicas: int) -> RedisSpool:
        return suite.redis_spool(
            client,
            prefix,
            max_reports=100,
            min_replicas_ack=replicas,
            replica_ack_timeout=0.05,
        )

    one, two = spool(1), spool(2)
    await one.open()
    await two.open()
    try:
        body = b'{"n": 1}'
        assert await one.append("usage", [NewReport(body, "a")], 0.0) == [True]
        with pytest.raises(NotReplicated) as raised:
            await two.append("usage", [NewReport(body, "b")], 0.0)
        assert (raised.value.stored, raised.value.confirmed) == ([True], 1)
        with pytest.raises(NotReplicated) as raised:
            await two.append("usage", [NewReport(body, "b")], 0.0)
        assert raised.value.stored == [False]  # kept, still not acknowledged
        assert await one.append("usage", [NewReport(body, "b")], 0.0) == [False]
        assert (await one.depth()).reports["usage"] == 2
    finally:
        await one.close()
        await two.close()
        await client.aclose()
