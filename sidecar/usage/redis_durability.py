"""Whether a 202 from the Redis spool means durable: Redis's persistence, checked, not assumed.

A Redis without an append-only file loses every report it holds when it dies (a kill -9 in the
middle of a flood lost 68 of 20,000 accepted reports). The sidecar cannot make such a Redis
durable, but it can refuse to pretend: ``INFO`` is read at start and whenever Redis's run id
changes (it restarted, or a failover moved us), and without AOF the spool refuses reports
unless ``usage.allowVolatileRedis`` says the operator accepts the loss. A spool stream that is
gone after such a restart is reported once, at ERROR, with the window of reports it held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError, ResponseError

from sidecar.config import StartupError
from sidecar.redis_connect import is_cluster

log = logging.getLogger(__name__)

# How often the spool looks at Redis's run id (a restart), from the flush loop.
CHECK_INTERVAL_SECONDS = 5.0
_DURABLE_SETTINGS = "appendonly yes with appendfsync always (or everysec with replicas and WAIT)"


class VolatileRedis(Exception):
    """Redis keeps no append-only file and ``usage.allowVolatileRedis`` is false."""


class PersistenceGuard:
    """Reads Redis's persistence and run id; knows whether the spool may accept reports."""

    def __init__(
        self,
        streams: Sequence[str],
        marker: str,
        *,
        allow_volatile: bool,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._streams = list(streams)
        # A key only the spool writes: gone after a restart means Redis came back empty (the
        # streams themselves are re-created at once by the next report or fetch).
        self._marker = marker
        self._allow_volatile = allow_volatile
        self._clock = clock
        self._wall_clock = wall_clock
        self._next_check = 0.0
        self._run_id: str | None = None
        # For the ERROR after a restart: when we last saw the streams, and since when they held
        # reports (the oldest one waiting then).
        self._seen_at: float | None = None
        self._holding_since: float | None = None
        self._verified = False
        self.durable: bool | None = None  # None: not known yet (Redis not reached, or no INFO)
        self.refusing = False

    async def verify_at_start(self, client: Any) -> None:
        """Read persistence now; raise ``StartupError`` for a volatile Redis not allowed."""
        try:
            await self._check(client)
        except VolatileRedis as exc:
            raise StartupError(str(exc)) from None
        except RedisError:
            return  # unreachable yet: checked again once it answers

    async def watch(self, client: Any) -> None:
        """Check again when due (cheap otherwise); errors are the flush loop's to see."""
        if self._clock() < self._next_check:
            return
        try:
            await self._check(client)
        except VolatileRedis as exc:
            log.error("usage spool: %s", exc)  # noqa: TRY400 - an operator problem, no traceback
        except RedisError:
            return

    async def _check(self, client: Any) -> None:
        self._next_check = self._clock() + CHECK_INTERVAL_SECONDS
        server = await _info(client, "server", self._marker)
        run_id = str(server.get("run_id", "")) if server is not None else None
        if run_id is None or run_id != self._run_id or not self._verified:
            if self._run_id is not None and run_id is not None and run_id != self._run_id:
                await self._after_restart(client)
            self._run_id = run_id
            await self._verify(client)
        await self._remember_streams(client)

    async def _verify(self, client: Any) -> None:
        persistence = await _info(client, "persistence", self._marker)
        replication = await _info(client, "replication", self._marker) or {}
        self._verified = True
        if persistence is None:
            self.durable = None
            self.refusing = False
            log.warning(
                "usage spool: cannot read Redis's INFO (ACL?), so cannot tell whether accepted "
                "reports survive a Redis restart; make sure Redis runs with %s",
                _DURABLE_SETTINGS,
            )
            return
        role = replication.get("role", "master")
        replicas = int(replication.get("connected_slaves", 0) or 0)
        self.durable = str(persistence.get("aof_enabled", "0")) == "1"
        if self.durable:
            self.refusing = False
            fsync = await _config(client, "appendfsync", self._marker)
            log.info(
                "usage spool: Redis persists with AOF (appendfsync %s, role %s, %d replicas)",
                fsync or "unknown",
                role,
                replicas,
            )
            if fsync == "no":
                log.warning(
                    "usage spool: Redis runs appendfsync no: a host crash loses what the OS "
                    "had not written; use %s",
                    _DURABLE_SETTINGS,
                )
            return
        what = (
            "Redis keeps no append-only file (appendonly no): a Redis restart loses every "
            f"report it holds. Run Redis with {_DURABLE_SETTINGS}"
        )
        if not self._allow_volatile:
            self.refusing = True
            raise VolatileRedis(what + ", or set usage.allowVolatileRedis: true to accept the loss")
        self.refusing = False
        log.warning("usage spool: %s; accepted anyway (usage.allowVolatileRedis: true)", what)

    async def _after_restart(self, client: Any) -> None:
        if await client.exists(self._marker):
            log.warning(
                "usage spool: Redis restarted or failed over (run id changed); the spool is intact"
            )
            return
        now = self._wall_clock()
        since = self._holding_since if self._holding_since is not None else self._seen_at
        log.error(
            "usage spool: Redis restarted or failed over (run id changed) and the spool streams"
            " %s are gone: reports accepted between %s and %s that were not yet delivered may be"
            " lost",
            ", ".join(self._streams),
            _iso(since if since is not None else now),
            _iso(now),
        )

    async def _remember_streams(self, client: Any) -> None:
        oldest: list[float] = []
        for stream in self._streams:
            first = await client.xrange(stream, "-", "+", count=1)
            if first:
                ms = str(_text(first[0][0])).partition("-")[0]
                oldest.append(int(ms) / 1000)
        await client.set(self._marker, "1")
        self._seen_at = self._wall_clock()
        self._holding_since = min(oldest) if oldest else None


def _on_spool_node(client: Any, key: str) -> dict[str, Any]:
    """On a Cluster, ask the primary that holds the spool (else a random node answers)."""
    return {"target_nodes": client.get_node_from_key(key)} if is_cluster(client) else {}


async def _info(client: Any, section: str, key: str) -> Mapping[str, Any] | None:
    try:
        reply = await client.info(section, **_on_spool_node(client, key))
    except ResponseError:
        return None  # INFO not allowed (ACL) or not served (some proxies, fakes)
    return reply if isinstance(reply, Mapping) else None


async def _config(client: Any, name: str, key: str) -> str | None:
    try:
        reply = await client.config_get(name, **_on_spool_node(client, key))
    except ResponseError:
        return None  # CONFIG is often disabled on managed Redis
    value = reply.get(name) if isinstance(reply, Mapping) else None
    return _text(value) if value is not None else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
