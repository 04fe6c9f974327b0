"""The spool with ``SIDECAR_REDIS_URL``: a Redis stream per kind with a consumer group, shared
by every replica, so reports outlive the pod that accepted them.

- **Accept**: one Lua script per request checks the bounds, claims client keys
  (``SET key 1 NX EX window`` semantics) and ``XADD``s every new report, atomically; the
  scripts of concurrent requests go in one pipeline (group commit: one round trip for all);
  the API answers 202 only after Redis replied. How durable that reply is depends on Redis's
  persistence, which is the operator's choice: with ``appendonly yes`` and
  ``appendfsync always`` an acknowledged report survives a Redis crash; with the common
  ``everysec`` up to a second of acknowledged reports can be lost if Redis itself dies.
  Replication is asynchronous, so a failover right after the reply can lose it too: with
  ``redis.minReplicasAck`` the script is followed by ``WAIT`` on the same connection and the
  reply counts only once that many replicas hold the write.
- **Flush**: every replica is a consumer of the group, but only the holder of a lease
  (``SET lease me NX PX ttl``, renewed every third of it) reads and sends. One sender per
  Stigg environment keeps reports for one usage key in order and keeps all replicas together
  under Stigg's per-environment rate limit; it also coalesces hot keys across replicas.
- **Take over**: when the leader dies its lease expires after ``claimIdleSeconds``; the next
  leader resends the batches it had recorded (same keys), then ``XAUTOCLAIM``s what the dead
  one had read but not batched, then reads new reports. Recording a batch is fenced on the
  lease, so a stalled ex-leader cannot record new batches after losing it. A periodic sweep
  ``XCLAIM``s anything left pending on other consumers for longer than the lease.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError

from sidecar.config import StartupError
from sidecar.redis_connect import RedisClient, is_cluster
from sidecar.usage.model import KINDS, Kind
from sidecar.usage.redis_durability import PersistenceGuard
from sidecar.usage.spool import (
    Batch,
    DeadLetter,
    Depth,
    Entry,
    NewReport,
    NotReplicated,
    SpoolFull,
    SpoolUnavailable,
)

log = logging.getLogger(__name__)

GROUP = "flushers"
# Append pipelines in flight at once: one keeps Redis idle while its replies are read.
APPEND_PIPELINES = 4

_APPEND = """
local max_n = tonumber(ARGV[1])
local max_b = tonumber(ARGV[2])
local n = (#ARGV - 4) / 2
local seen = {}
local dup = {}
local new_n, new_b = 0, 0
for i = 1, n do
  local k = tonumber(ARGV[4 + 2 * i])
  local is_dup = false
  if k > 0 then
    if seen[KEYS[k]] or redis.call('EXISTS', KEYS[k]) == 1 then is_dup = true end
    seen[KEYS[k]] = true
  end
  dup[i] = is_dup
  if not is_dup then
    new_n = new_n + 1
    new_b = new_b + string.len(ARGV[3 + 2 * i])
  end
end
local count = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[3])
local size = tonumber(redis.call('GET', KEYS[2]) or '0')
if new_n > 0 and (count + new_n > max_n or size + new_b > max_b) then return -1 end
local out = {}
for i = 1, n do
  if dup[i] then
    out[i] = 0
  else
    local k = tonumber(ARGV[4 + 2 * i])
    if k > 0 then redis.call('SET', KEYS[k], '1', 'EX', ARGV[3]) end
    redis.call('XADD', KEYS[1], '*', 'b', ARGV[3 + 2 * i], 'a', ARGV[4])
    out[i] = 1
  end
end
if new_b > 0 then redis.call('INCRBY', KEYS[2], new_b) end
return out
"""

# KEYS: lease, batches. ARGV: me, batch to delete ('' for none), then (id, body) pairs.
_RECORD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[2], ARGV[2]) end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

_BODY = """
local function body_of(fields)
  for j = 1, #fields, 2 do
    if fields[j] == 'b' then return fields[j + 1] end
  end
  return ''
end
local function accepted_of(fields)
  for j = 1, #fields, 2 do
    if fields[j] == 'a' then return fields[j + 1] end
  end
  return '0'
end
"""

# Entries acknowledged per script run: Redis runs nothing else, no append, while one runs
# (~5 ms for 1,000; 10,000 at once held every append up ~50 ms).
ACK_ENTRIES = 1000

# KEYS: stream, batches, bytes. ARGV: group, batch id ('' to keep it), entry ids...
_ACK = (
    _BODY
    + """
for i = 3, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e > 0 then
    redis.call('DECRBY', KEYS[3], string.len(body_of(e[1][2])))
    redis.call('XDEL', KEYS[1], ARGV[i])
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
end
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"""
)

# KEYS: stream, batches, bytes, dead. ARGV: group, batch id, reason, code, now, entry ids...
_DEAD = (
    _BODY
    + """
local moved = 0
for i = 6, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e > 0 then
    local body = body_of(e[1][2])
    redis.call('XADD', KEYS[4], '*', 'b', body, 'a', accepted_of(e[1][2]),
      'r', ARGV[3], 'c', ARGV[4], 'f', ARGV[5])
    redis.call('DECRBY', KEYS[3], string.len(body))
    redis.call('XDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
end
redis.call('HDEL', KEYS[2], ARGV[2])
return moved
"""
)

# KEYS: dead, stream, bytes. ARGV: dead-letter ids.
_REPLAY = (
    _BODY
    + """
local moved = 0
for i = 1, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e > 0 then
    local body = body_of(e[1][2])
    redis.call('XADD', KEYS[2], '*', 'b', body, 'a', accepted_of(e[1][2]))
    redis.call('INCRBY', KEYS[3], string.len(body))
    redis.call('XDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
return moved
"""
)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _stream_id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisSpool:
    """``Spool`` on a Redis stream per kind, shared by replicas."""

    name = "redis"
    poll_interval: float | None = 0.05
    disk_full = False  # Redis's own disk is Redis's concern; a full one shows as errors

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        max_reports: int,
        max_bytes: int,
        dedupe_window_seconds: float,
        lease_seconds: float,
        consumer: str | None = None,
        on_claimed: Callable[[Kind, int], None] | None = None,
        legacy_prefix: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        allow_volatile: bool = False,
        min_replicas_ack: int = 0,
        replica_ack_timeout: float = 0.5,
    ) -> None:
        """``prefix`` starts every key (``RedisNamespace.spool``: it carries the hash tag that
        keeps the keys on one Cluster slot); ``client`` is the process's pool, not closed here;
        ``on_claimed`` hears of reports taken over from a replica presumed dead;
        ``legacy_prefix`` is where releases before the one namespace kept the spool;
        ``min_replicas_ack`` replicas must confirm an append within ``replica_ack_timeout``
        seconds (``NotReplicated`` otherwise)."""
        self._pool = client
        self._client: RedisClient | None = None  # set while open
        tag = prefix
        self._stream = {kind: f"{tag}:spool:{kind}" for kind in KINDS}
        self._batches = {kind: f"{tag}:batches:{kind}" for kind in KINDS}
        self._dead = {kind: f"{tag}:dead:{kind}" for kind in KINDS}
        self._bytes_key = f"{tag}:bytes"
        self._lease_key = f"{tag}:lease"
        self._key_prefix = f"{tag}:key:"
        self._max_reports = max_reports
        self._max_bytes = max_bytes
        self._window = max(1, math.ceil(dedupe_window_seconds))
        self._lease_ms = max(100, int(lease_seconds * 1000))
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._clock = clock
        self._leader = False
        self._renew_at = 0.0
        self._claiming: dict[str, str | None] = dict.fromkeys(KINDS)
        self._in_batches: dict[str, set[str]] = {kind: set() for kind in KINDS}
        self._next_sweep = 0.0
        self._on_claimed = on_claimed
        self._legacy_streams = (
            [f"{{{legacy_prefix}}}:spool:{kind}" for kind in KINDS] if legacy_prefix else []
        )
        self._scripts: dict[str, Any] = {}
        self._min_replicas_ack = min_replicas_ack
        self._ack_timeout_ms = max(1, round(replica_ack_timeout * 1000))
        self._alive_key = f"{tag}:spool-alive"
        # Appends waiting for the next pipeline, and the tasks writing pipelines.
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[list[bool]]]] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._cluster = is_cluster(client)
        self.persistence = PersistenceGuard(
            list(self._stream.values()),
            self._alive_key,
            allow_volatile=allow_volatile,
            clock=clock,
        )

    @property
    def durable(self) -> bool:
        """Whether Redis was seen persisting with AOF (the durable-spool metric)."""
        return bool(self.persistence.durable)

    @property
    def redis(self) -> Any:  # redis-py's reply types are too loose to be useful here
        if self._client is None:
            raise RuntimeError("the spool is not open")
        return self._client

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        self._client = self._pool
        for name, text in (
            ("append", _APPEND),
            ("record", _RECORD),
            ("ack", _ACK),
            ("dead", _DEAD),
            ("replay", _REPLAY),
            ("renew", _RENEW),
            ("release", _RELEASE),
        ):
            self._scripts[name] = self.redis.register_script(text)
        try:
            await self._ensure_groups()
            await self._warn_about_legacy_reports()
        except AuthenticationError:
            # Not a passing fault: no retry can succeed with these credentials.
            raise StartupError(
                "SIDECAR_REDIS_URL: Redis refused the ACL user or password (from the URL or"
                " SIDECAR_REDIS_USERNAME / SIDECAR_REDIS_PASSWORD)"
            ) from None
        except RedisError as exc:
            # Not fatal: reports get 503 and the flusher retries until Redis is back.
            log.warning("usage spool: Redis is not reachable yet (%s)", type(exc).__name__)
        await self.persistence.verify_at_start(self.redis)

    async def _warn_about_legacy_reports(self) -> None:
        """Reports an older release spooled outside the namespace are not delivered from
        here: say so at every start rather than leave them unnoticed."""
        for stream in self._legacy_streams:
            waiting = await self.redis.xlen(stream)
            if waiting:
                log.warning(
                    "usage spool: %d report(s) wait in %s, spooled by a release before keys"
                    " were namespaced by cache.environment; run that release against this"
                    " Redis until it has delivered them",
                    waiting,
                    stream,
                )

    async def _ensure_groups(self) -> None:
        for stream in self._stream.values():
            try:
                # From the start of the stream: a group re-created over existing reports
                # (Redis restarted without its group) must still deliver them.
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def close(self) -> None:
        self._client = None  # the pool is the process's: closed by its owner

    # --- append -------------------------------------------------------------------------------

    async def append(self, kind: Kind, reports: Sequence[NewReport], now: float) -> list[bool]:
        keys = [self._stream[kind], self._bytes_key, self._stream[_other(kind)]]
        args: list[Any] = [self._max_reports, self._max_bytes, self._window, repr(now)]
        for report in reports:
            index = 0
            if report.dedupe_key is not None:
                keys.append(f"{self._key_prefix}{kind}:{report.dedupe_key}")
                index = len(keys)
            args.extend((report.body, index))
        if self.persistence.refusing:
            raise SpoolUnavailable("Redis keeps no append-only file (see usage.allowVolatileRedis)")
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))
        if len(self._writers) < APPEND_PIPELINES:
            writer = asyncio.get_running_loop().create_task(self._write_pending())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await future

    async def _write_pending(self) -> None:
        """Group commit: the appends of every request waiting now go to Redis as one pipeline
        (one round trip); those arriving meanwhile go in the next one, on one of a few writers
        so Redis is not idle while a pipeline's replies are read. Each request's script still
        runs atomically on its own (all of its reports or none)."""
        group: list[tuple[list[str], list[Any], asyncio.Future[list[bool]]]] = []
        try:
            while self._pending:
                group, self._pending = self._pending, []
                try:
                    results, confirmed = await self._append_pipelined([(k, a) for k, a, _ in group])
                except Exception as exc:  # noqa: BLE001 - each waiting request gets it as its answer
                    results, confirmed = [exc] * len(group), 0
                for (*_, future), result in zip(group, results, strict=True):
                    if not future.done():
                        self._settle_append(future, result, confirmed)
        finally:
            for *_, future in group:  # only when cancelled mid-write (shutdown)
                if not future.done():
                    future.set_exception(SpoolUnavailable("the spool is closing"))

    async def _append_pipelined(
        self, calls: Sequence[tuple[list[str], list[Any]]]
    ) -> tuple[list[Any], int]:
        """Run the append script once per call in one pipeline: each call's reply, or the
        error it met; and how many replicas confirmed the writes (with ``min_replicas_ack``;
        0 when none were asked for). A Redis that lost its scripts (restart, failover) gets
        them again and the calls it refused are run again: refused, they did nothing.

        One non-transactional pipeline holds one connection, so ``WAIT`` (which waits for the
        replication offset of its own connection's last write) covers these calls, in the same
        round trip. A write of our own goes last: a retry whose reports are all duplicates
        writes nothing, and must still wait until the replicas hold the first attempt's write
        (the stream is ordered, so an offset past it covers it)."""
        script = self._scripts["append"]
        if self._cluster:
            # redis-py's cluster pipeline refuses scripts: the calls go out side by side, each
            # to the primary of the spool's slot (and no WAIT: config refuses it with Cluster).
            replies = await asyncio.gather(
                *(script(keys=keys, args=args) for keys, args in calls), return_exceptions=True
            )
            return list(replies), 0
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        confirmed = 0
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for index in todo:
                keys, args = calls[index]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if self._min_replicas_ack:
                pipe.set(self._alive_key, "1")
                pipe.execute_command("WAIT", self._min_replicas_ack, self._ack_timeout_ms)
            replies = await pipe.execute(raise_on_error=False)
            if self._min_replicas_ack:
                waited = replies[-1]
                confirmed = waited if isinstance(waited, int) else 0
                replies = replies[:-2]
            refused = []
            for index, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    refused.append(index)
                results[index] = reply
            if not refused:
                break
            await self.redis.script_load(_APPEND)
            todo = refused
        return results, confirmed

    def _settle_append(
        self, future: asyncio.Future[list[bool]], result: Any, confirmed: int
    ) -> None:
        """Answer one waiting append with its script's reply (or the error it met)."""
        if isinstance(result, Exception):
            future.set_exception(SpoolUnavailable(f"Redis: {type(result).__name__}: {result}"))
            return
        if result == -1:
            future.set_exception(SpoolFull())
            return
        stored = [bool(flag) for flag in result]
        if confirmed < self._min_replicas_ack:
            future.set_exception(NotReplicated(stored, confirmed, self._min_replicas_ack))
        else:
            future.set_result(stored)

    # --- the flush lease ----------------------------------------------------------------------

    async def acquire(self) -> bool:
        await self.persistence.watch(self.redis)
        now = self._clock()
        if self._leader:
            if now < self._renew_at:
                return True
            renewed = await self._scripts["renew"](
                keys=[self._lease_key], args=[self.consumer, self._lease_ms]
            )
            if renewed:
                self._renew_at = now + self._lease_ms / 3000
                return True
            self._leader = False
            log.warning("usage spool: lost the flush lease (renewed too late?)")
            return False
        taken = await self.redis.set(self._lease_key, self.consumer, nx=True, px=self._lease_ms)
        if taken:
            self._leader = True
            self._renew_at = now + self._lease_ms / 3000
            for kind in KINDS:
                self._claiming[kind] = "0-0"
            log.info("usage spool: this replica (%s) now flushes", self.consumer)
        return bool(taken)

    async def release(self) -> None:
        if self._leader:
            self._leader = False
            await self._scripts["release"](keys=[self._lease_key], args=[self.consumer])

    # --- batches ------------------------------------------------------------------------------

    async def open_batches(self, kind: Kind) -> list[Batch]:
        raw = await self.redis.hgetall(self._batches[kind])
        batches = sorted((Batch.from_bytes(body) for body in raw.values()), key=lambda b: b.id)
        self._in_batches[kind] = {i for batch in batches for i in batch.entry_ids}
        return batches

    async def fetch(self, kind: Kind, limit: int, *, restart: bool) -> list[Entry]:
        if restart:
            self._claiming[kind] = "0-0"
        try:
            return await self._fetch(kind, limit)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_groups()
            self._claiming[kind] = "0-0"
            return await self._fetch(kind, limit)

    async def _fetch(self, kind: Kind, limit: int) -> list[Entry]:
        stream = self._stream[kind]
        out: list[Entry] = []
        skip = self._in_batches[kind]
        claimed = 0
        # First what earlier leaders (or this one, before a reset) read but did not batch:
        # it is older than anything new, so it goes first.
        while self._claiming[kind] is not None and len(out) < limit:
            reply = await self.redis.xautoclaim(
                stream, GROUP, self.consumer, 0, self._claiming[kind], count=limit - len(out)
            )
            cursor, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                await self.redis.xack(stream, GROUP, *deleted)
            for entry_id, fields in entries:
                key = _text(entry_id)
                if key in skip:
                    continue
                out.append(_entry(key, fields))
                claimed += 1
            cursor_text = _text(cursor)
            self._claiming[kind] = None if cursor_text == "0-0" else cursor_text
        if len(out) < limit and self._clock() >= self._next_sweep:
            self._next_sweep = self._clock() + self._lease_ms / 1000
            swept = await self._sweep(kind, limit - len(out))
            claimed += len(swept)
            out.extend(swept)
        if claimed and self._on_claimed is not None:
            self._on_claimed(kind, claimed)
        if len(out) < limit:
            reply = await self.redis.xreadgroup(
                GROUP, self.consumer, {stream: ">"}, count=limit - len(out)
            )
            for _, entries in reply or ():
                out.extend(_entry(_text(entry_id), fields) for entry_id, fields in entries)
        return out

    async def _sweep(self, kind: Kind, limit: int) -> list[Entry]:
        """Reports still pending on another consumer long after it lost the lease."""
        stream = self._stream[kind]
        pending = await self.redis.xpending_range(
            stream, GROUP, min="-", max="+", count=limit, idle=self._lease_ms
        )
        ids = [p["message_id"] for p in pending if _text(p["consumer"]) != self.consumer]
        if not ids:
            return []
        entries = await self.redis.xclaim(stream, GROUP, self.consumer, self._lease_ms, ids)
        skip = self._in_batches[kind]
        found = [_entry(_text(i), f) for i, f in entries if f and _text(i) not in skip]
        if found:
            log.warning(
                "usage spool: claimed %d %s report(s) left pending by a stalled replica",
                len(found),
                kind,
            )
        return found

    async def _record(self, kind: Kind, replaces: str, batches: Sequence[Batch]) -> bool:
        args: list[Any] = [self.consumer, replaces]
        for batch in batches:
            args.extend((batch.id, batch.to_bytes()))
        ok = await self._scripts["record"](keys=[self._lease_key, self._batches[kind]], args=args)
        if not ok:
            self._leader = False
            return False
        for batch in batches:
            self._in_batches[kind].update(batch.entry_ids)
        return True

    async def record_batch(self, batch: Batch) -> bool:
        return await self._record(batch.kind, "", [batch])

    async def split_batch(self, batch: Batch, parts: Sequence[Batch]) -> bool:
        return await self._record(batch.kind, batch.id, parts)

    async def ack_batch(self, batch: Batch) -> None:
        # ACK_ENTRIES at a time; the batch goes with the last: after a crash in between, it is
        # sent again (same keys) and acked again (an entry already gone is skipped).
        kind = batch.kind
        ids = batch.entry_ids
        keys = [self._stream[kind], self._batches[kind], self._bytes_key]
        chunks = [ids[start : start + ACK_ENTRIES] for start in range(0, len(ids), ACK_ENTRIES)]
        for n, chunk in enumerate(chunks or [[]], 1):
            last = n >= len(chunks)
            await self._scripts["ack"](keys=keys, args=[GROUP, batch.id if last else "", *chunk])
            self._in_batches[kind].difference_update(chunk)

    async def dead_letter(self, batch: Batch, reason: str, code: str, now: float) -> int:
        kind = batch.kind
        ids = batch.entry_ids
        moved = await self._scripts["dead"](
            keys=[self._stream[kind], self._batches[kind], self._bytes_key, self._dead[kind]],
            args=[GROUP, batch.id, reason, code, repr(now), *ids],
        )
        self._in_batches[kind].difference_update(ids)
        return int(moved)

    # --- dead letters -------------------------------------------------------------------------

    async def dead_letters(
        self, kind: Kind | None, limit: int, after: str | None
    ) -> list[DeadLetter]:
        start = f"({after}" if after else "-"
        letters: list[DeadLetter] = []
        for k in KINDS if kind is None else (kind,):
            for entry_id, fields in await self.redis.xrange(
                self._dead[k], min=start, max="+", count=limit
            ):
                f = {_text(name): value for name, value in fields.items()}
                letters.append(
                    DeadLetter(
                        id=_text(entry_id),
                        kind=k,
                        record=_json(f.get("b", b"{}")),
                        reason=_text(f.get("r", b"")),
                        code=_text(f.get("c", b"")),
                        accepted_at=float(f.get("a", 0)),
                        failed_at=float(f.get("f", 0)),
                    )
                )
        letters.sort(key=lambda letter: _stream_id_key(letter.id))
        return letters[:limit]

    async def replay(self, ids: Sequence[str] | None, now: float) -> dict[str, int]:
        replayed: dict[str, int] = dict.fromkeys(KINDS, 0)
        for kind in KINDS:
            dead = self._dead[kind]
            if ids is None:
                chosen = [_text(i) for i, _ in await self.redis.xrange(dead, "-", "+")]
            else:
                chosen = [i for i in ids if _valid_stream_id(i)]
            for start in range(0, len(chosen), 1000):
                moved = await self._scripts["replay"](
                    keys=[dead, self._stream[kind], self._bytes_key],
                    args=chosen[start : start + 1000],
                )
                replayed[kind] += int(moved)
        return replayed

    # --- observation --------------------------------------------------------------------------

    async def depth(self) -> Depth:
        pipe = self.redis.pipeline(transaction=False)
        for kind in KINDS:
            pipe.xlen(self._stream[kind])
            pipe.xrange(self._stream[kind], "-", "+", count=1)
            pipe.xlen(self._dead[kind])
            pipe.hlen(self._batches[kind])
        pipe.get(self._bytes_key)
        replies = await pipe.execute()
        reports: dict[str, int] = {}
        oldest: dict[str, float | None] = {}
        dead = batches = 0
        for index, kind in enumerate(KINDS):
            count, first, dead_count, open_count = replies[index * 4 : index * 4 + 4]
            reports[kind] = int(count)
            oldest[kind] = _entry(_text(first[0][0]), first[0][1]).accepted_at if first else None
            dead += int(dead_count)
            batches += int(open_count)
        return Depth(
            reports=reports,
            bytes=int(replies[-1] or 0),
            oldest_accepted_at=oldest,
            dead_letters=dead,
            open_batches=batches,
        )

    async def purge_expired_keys(self, now: float) -> int:
        return 0  # the keys carry their own expiry (EX)


def _other(kind: Kind) -> Kind:
    return "event" if kind == "usage" else "usage"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(raw: Any) -> dict[str, Any]:
    loaded = orjson.loads(raw)
    return loaded if isinstance(loaded, dict) else {"value": loaded}


def _valid_stream_id(text: str) -> bool:
    ms, _, seq = text.partition("-")
    return text.isascii() and ms.isdigit() and seq.isdigit()


def _entry(entry_id: str, fields: dict[Any, Any]) -> Entry:
    body = fields.get(b"b", fields.get("b", b""))
    accepted = fields.get(b"a", fields.get("a", b"0"))
    return Entry(entry_id, body if isinstance(body, bytes) else str(body).encode(), float(accepted))
