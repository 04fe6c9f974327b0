"""The spool without Redis: SQLite in WAL mode under the data directory.

Durability: every append is committed (with ``synchronous=FULL`` by default: the WAL is
fsynced on each commit) before the API answers 202, so a report survives ``kill -9``, a
container restart and, with FULL, a power loss. ``NORMAL`` skips that fsync: in WAL mode it
still survives any process crash (the write is in the OS page cache) but may lose the last
commits on power loss; it is offered for disks where fsync is slow.

Throughput: one writer connection on one dedicated thread (off the event loop), and group
commit: requests that arrive while a transaction is being written are inserted together in the
next one, so one fsync acknowledges many requests.

One process per data directory: a lock file stops a second sidecar from flushing the same
spool (two flushers could coalesce the same reports into different usages).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from sidecar.fault_log import FaultLog
from sidecar.usage.disk_reserve import DiskReserve, is_disk_full
from sidecar.usage.model import KINDS, Kind
from sidecar.usage.spool import (
    Batch,
    DeadLetter,
    Depth,
    Entry,
    NewReport,
    SpoolFull,
)

log = logging.getLogger(__name__)
faults = FaultLog(log)
# While the disk is full, appends try the disk again at most this often (not per request).
DISK_FULL_PROBE_SECONDS = 1.0

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    accepted_at REAL NOT NULL,
    batch_id TEXT
);
CREATE INDEX IF NOT EXISTS reports_unbatched ON reports (kind, seq) WHERE batch_id IS NULL;
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedupe (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe (expires_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    code TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    failed_at REAL NOT NULL
);
"""

_Request = tuple[Kind, Sequence[NewReport], float, "asyncio.Future[list[bool]]"]


class SqliteSpool:
    """``Spool`` in ``<data_dir>/usage-spool.sqlite3``."""

    name = "sqlite"
    poll_interval: float | None = None
    durable = True  # WAL with synchronous=FULL: on disk before the 202

    def __init__(
        self,
        data_dir: Path,
        *,
        max_reports: int,
        max_bytes: int,
        dedupe_window_seconds: float,
        synchronous: str = "FULL",
    ) -> None:
        self.path = data_dir / "usage-spool.sqlite3"
        self._data_dir = data_dir
        self._max_reports = max_reports
        self._max_bytes = max_bytes
        self._window = dedupe_window_seconds
        self._synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # Owned by the writer thread: counts of stored reports (all kinds) and their bytes.
        self._count: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._bytes = 0
        self._cursor: dict[str, int] = dict.fromkeys(KINDS, 0)
        # Owned by the writer thread: the reports (seq) in open batches, which fetch skips. A
        # batch's row is the record of which reports it holds; marking each report instead
        # (an UPDATE of every row) held up appends for ~15 ms per 10,000 reports batched.
        self._batched: set[int] = set()
        self._pending: list[_Request] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._reserve = DiskReserve(data_dir / "usage-spool.reserve")
        # True from a write that found the disk full until an append succeeds with the
        # reserve back in place; read by /readyz and the metrics.
        self.disk_full = False
        self._last_probe = 0.0

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _lock(self._data_dir / "usage-spool.lock")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-spool")
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            _unlock(self._lock_fd)
            self._lock_fd = None
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="usage-spool-writer")

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        for kind, count, size in db.execute(
            "SELECT kind, COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM reports GROUP BY kind"
        ):
            self._count[kind] = count
            self._bytes += size
        for (body,) in db.execute("SELECT body FROM batches"):
            self._batched.update(_seqs(Batch.from_bytes(body)))
        self._db = db
        if not self._reserve.claim():
            self._enter_disk_full(OSError("no room for the disk-full reserve"))

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        for _, _, _, future in self._pending:
            if not future.done():
                future.set_exception(RuntimeError("the spool is closed"))
        self._pending.clear()
        executor, self._executor = self._executor, None
        if executor is not None:
            # Waits for a transaction already handed to the thread: it commits or rolls back.
            await asyncio.get_running_loop().run_in_executor(executor, self._close_db)
            executor.shutdown(wait=True)
            self._reserve.release()  # claimed again by the next open
        if self._lock_fd is not None:
            _unlock(self._lock_fd)
            self._lock_fd = None

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the spool is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the spool is not open")
        return self._db

    # --- append (group commit) ----------------------------------------------------------------

    async def append(self, kind: Kind, reports: Sequence[NewReport], now: float) -> list[bool]:
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((kind, reports, now, future))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group, self._pending = self._pending, []
                try:
                    results = await self._run(self._append_group, group)
                except Exception as exc:  # noqa: BLE001 - each waiting request gets it as its answer
                    faults.log("append", logging.ERROR, "usage spool: append failed: %r", exc)
                    for *_, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), result in zip(group, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    def _append_group(self, group: list[_Request]) -> list[list[bool] | BaseException]:
        """Append, unless the disk is full: then refuse at once, trying the disk once a second."""
        if self.disk_full:
            now = time.monotonic()
            if now - self._last_probe < DISK_FULL_PROBE_SECONDS:
                return [SpoolFull() for _ in group]
            self._last_probe = now
            if not self._reserve.claim():
                return [SpoolFull() for _ in group]
        try:
            results = self._append_group_now(group)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._enter_disk_full(exc)
            return [SpoolFull() for _ in group]
        if self.disk_full:
            self.disk_full = False
            log.warning("usage spool: the disk has room again; accepting reports")
        return results

    def _enter_disk_full(self, exc: BaseException) -> None:
        self.disk_full = True
        faults.log(
            "disk_full",
            logging.ERROR,
            "usage spool: the disk under %s is full (%s); new reports get 503, delivery goes on",
            self._data_dir,
            exc,
        )

    def _with_reserve(self, write: Callable[..., T], *args: Any) -> T:
        """A flush-side write; on a full disk, give up the reserve and write again."""
        try:
            return write(*args)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._enter_disk_full(exc)
            if not self._reserve.release():
                raise
            log.warning("usage spool: released the disk-full reserve so delivery can go on")
            return write(*args)

    def _append_group_now(self, group: list[_Request]) -> list[list[bool] | BaseException]:
        db = self._conn()
        results: list[list[bool] | BaseException] = []
        count = sum(self._count.values())
        added_count = dict.fromkeys(KINDS, 0)
        added_bytes = 0
        rows: list[tuple[str, bytes, float]] = []
        with _transaction(db):
            for kind, reports, now, _ in group:
                size = sum(len(report.body) for report in reports)
                if (
                    count + len(reports) > self._max_reports
                    or self._bytes + added_bytes + size > self._max_bytes
                ):
                    results.append(SpoolFull())
                    continue
                stored: list[bool] = []
                for report in reports:
                    if report.dedupe_key is not None and not self._claim_key(
                        db, f"{kind}:{report.dedupe_key}", now
                    ):
                        stored.append(False)
                        continue
                    rows.append((kind, report.body, now))
                    stored.append(True)
                    count += 1
                    added_count[kind] += 1
                    added_bytes += len(report.body)
                results.append(stored)
            _insert_reports(db, rows)
        for kind, added in added_count.items():
            self._count[kind] += added
        self._bytes += added_bytes
        return results

    def _claim_key(self, db: sqlite3.Connection, key: str, now: float) -> bool:
        """Remember ``key``; False when it is still remembered (a duplicate)."""
        cursor = db.execute(
            "INSERT INTO dedupe (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
            " SET expires_at = excluded.expires_at WHERE dedupe.expires_at <= ?",
            (key, now + self._window, now),
        )
        return cursor.rowcount > 0

    # --- flushing -----------------------------------------------------------------------------

    async def acquire(self) -> bool:
        return True  # the lock file makes this process the only one

    async def release(self) -> None:
        return None

    async def open_batches(self, kind: Kind) -> list[Batch]:
        rows = await self._run(
            lambda: (
                self._conn()
                .execute("SELECT body FROM batches WHERE kind = ? ORDER BY id", (kind,))
                .fetchall()
            )
        )
        return [Batch.from_bytes(row[0]) for row in rows]

    async def fetch(self, kind: Kind, limit: int, *, restart: bool) -> list[Entry]:
        if restart:
            self._cursor[kind] = 0
        rows = await self._run(self._fetch, kind, limit, self._cursor[kind])
        if rows:
            self._cursor[kind] = rows[-1][0]
        return [Entry(str(seq), body, accepted_at) for seq, body, accepted_at in rows]

    def _fetch(self, kind: Kind, limit: int, after: int) -> list[tuple[int, bytes, float]]:
        # At most len(batched) of the rows read are skipped. (A batch_id is set only on rows
        # that an earlier version marked as batched; their batches are in _batched too.)
        batched = self._batched
        rows = (
            self._conn()
            .execute(
                "SELECT seq, body, accepted_at FROM reports"
                " WHERE kind = ? AND batch_id IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (kind, after, limit + len(batched)),
            )
            .fetchall()
        )
        if batched:
            rows = [row for row in rows if row[0] not in batched]
        return rows[:limit]

    async def record_batch(self, batch: Batch) -> bool:
        await self._run(self._with_reserve, self._record, batch)
        return True

    def _record(self, batch: Batch) -> None:
        db = self._conn()
        with _transaction(db):
            _insert_batch(db, batch)
        self._batched.update(_seqs(batch))

    async def split_batch(self, batch: Batch, parts: Sequence[Batch]) -> bool:
        await self._run(self._with_reserve, self._split, batch, parts)
        return True

    def _split(self, batch: Batch, parts: Sequence[Batch]) -> None:
        db = self._conn()
        with _transaction(db):
            db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))
            for part in parts:
                _insert_batch(db, part)

    async def ack_batch(self, batch: Batch) -> None:
        # A transaction per ACK_ROWS reports, so appends wait for one of them at most; the
        # batch goes last: after a crash in between, it is sent again (same keys) and acked.
        seqs = _seqs(batch)
        for start in range(0, len(seqs), ACK_ROWS):
            chunk = seqs[start : start + ACK_ROWS]
            await self._run(self._with_reserve, self._delete_reports, batch.kind, chunk)
        await self._run(self._with_reserve, self._delete_batch, batch.id)

    def _delete_reports(self, kind: Kind, seqs: list[int]) -> None:
        db = self._conn()
        with _transaction(db):
            sizes = db.execute(
                "DELETE FROM reports WHERE seq IN (SELECT value FROM json_each(?))"
                " RETURNING LENGTH(body)",
                (orjson.dumps(seqs),),
            ).fetchall()
        self._count[kind] -= len(sizes)
        self._bytes -= sum(size for (size,) in sizes)
        self._batched.difference_update(seqs)

    def _delete_batch(self, batch_id: str) -> None:
        db = self._conn()
        with _transaction(db):
            db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    async def dead_letter(self, batch: Batch, reason: str, code: str, now: float) -> int:
        return await self._run(self._with_reserve, self._dead_letter, batch, reason, code, now)

    def _dead_letter(self, batch: Batch, reason: str, code: str, now: float) -> int:
        db = self._conn()
        seqs = _seqs(batch)
        ids = orjson.dumps(seqs)
        with _transaction(db):
            rows = db.execute(
                "SELECT kind, body, accepted_at FROM reports"
                " WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq",
                (ids,),
            ).fetchall()
            db.executemany(
                "INSERT INTO dead_letters (kind, body, reason, code, accepted_at, failed_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(kind, body, reason, code, accepted, now) for kind, body, accepted in rows],
            )
            db.execute("DELETE FROM reports WHERE seq IN (SELECT value FROM json_each(?))", (ids,))
            db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))
        self._count[batch.kind] -= len(rows)
        self._bytes -= sum(len(body) for _, body, _ in rows)
        self._batched.difference_update(seqs)
        return len(rows)

    # --- dead letters -------------------------------------------------------------------------

    async def dead_letters(
        self, kind: Kind | None, limit: int, after: str | None
    ) -> list[DeadLetter]:
        start = int(after) if after and after.isascii() and after.isdigit() else 0
        rows = await self._run(
            lambda: (
                self._conn()
                .execute(
                    "SELECT id, kind, body, reason, code, accepted_at, failed_at FROM dead_letters"
                    " WHERE id > ? AND (? IS NULL OR kind = ?) ORDER BY id LIMIT ?",
                    (start, kind, kind, limit),
                )
                .fetchall()
            )
        )
        return [
            DeadLetter(str(i), k, orjson.loads(body), reason, code, accepted, failed)
            for i, k, body, reason, code, accepted, failed in rows
        ]

    async def replay(self, ids: Sequence[str] | None, now: float) -> dict[str, int]:
        return await self._run(self._replay, ids)

    def _replay(self, ids: Sequence[str] | None) -> dict[str, int]:
        db = self._conn()
        selector = "1" if ids is None else "id IN (SELECT value FROM json_each(?))"
        params: tuple[Any, ...] = (
            ()
            if ids is None
            else (orjson.dumps([int(i) for i in ids if i.isascii() and i.isdigit()]),)
        )
        with _transaction(db):
            rows = db.execute(
                f"SELECT id, kind, body, accepted_at FROM dead_letters WHERE {selector}"  # noqa: S608 - fixed text
                " ORDER BY id",
                params,
            ).fetchall()
            # Replayed reports go to the back of the queue with their original keys: they were
            # never applied (the whole call was rejected), so they count once when they pass.
            db.executemany(
                "INSERT INTO reports (kind, body, accepted_at) VALUES (?, ?, ?)",
                [(kind, body, accepted) for _, kind, body, accepted in rows],
            )
            db.executemany("DELETE FROM dead_letters WHERE id = ?", [(row[0],) for row in rows])
        replayed: dict[str, int] = dict.fromkeys(KINDS, 0)
        for _, kind, body, _ in rows:
            self._count[kind] += 1
            self._bytes += len(body)
            replayed[kind] += 1
        return replayed

    # --- observation and upkeep ---------------------------------------------------------------

    async def depth(self) -> Depth:
        return await self._run(self._depth)

    def _depth(self) -> Depth:
        db = self._conn()
        oldest: dict[str, float | None] = {}
        for kind in KINDS:
            row = db.execute(
                "SELECT accepted_at FROM reports WHERE kind = ? ORDER BY seq LIMIT 1", (kind,)
            ).fetchone()
            oldest[kind] = row[0] if row else None
        (dead,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        (batches,) = db.execute("SELECT COUNT(*) FROM batches").fetchone()
        return Depth(
            reports=dict(self._count),
            bytes=self._bytes,
            oldest_accepted_at=oldest,
            dead_letters=dead,
            open_batches=batches,
        )

    async def purge_expired_keys(self, now: float) -> int:
        return await self._run(self._purge, now)

    def _purge(self, now: float) -> int:
        cursor = self._conn().execute(
            "DELETE FROM dedupe WHERE key IN"
            " (SELECT key FROM dedupe WHERE expires_at <= ? LIMIT 10000)",
            (now,),
        )
        return cursor.rowcount


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(
            f"another stigg-sidecar is using the usage spool in {path.parent}; give each"
            " sidecar its own SIDECAR_DATA_DIR (or share one Redis with SIDECAR_REDIS_URL)"
        ) from None
    return fd


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception (the connection runs in
    autocommit mode, so transactions are explicit)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite rolls back by itself on some errors, e.g. a full disk
            db.execute("ROLLBACK")
        raise


# Reports deleted per transaction when a batch is acknowledged: ~2 ms of the writer thread.
ACK_ROWS = 1000
# Rows per INSERT statement: 3 parameters each, well under SQLite's 32,766 per statement.
INSERT_ROWS = 500


def _insert_reports(db: sqlite3.Connection, rows: Sequence[tuple[str, bytes, float]]) -> None:
    """``rows`` in order, in as few statements as the parameter limit allows: each statement
    is a round of the GIL with the event loop's thread, which this writer thread waits for."""
    for start in range(0, len(rows), INSERT_ROWS):
        chunk = rows[start : start + INSERT_ROWS]
        values = ",".join(["(?, ?, ?)"] * len(chunk))
        db.execute(
            f"INSERT INTO reports (kind, body, accepted_at) VALUES {values}",  # noqa: S608 - only placeholders
            [value for row in chunk for value in row],
        )


def _insert_batch(db: sqlite3.Connection, batch: Batch) -> None:
    db.execute(
        "INSERT INTO batches (id, kind, body) VALUES (?, ?, ?)",
        (batch.id, batch.kind, batch.to_bytes()),
    )


def _seqs(batch: Batch) -> list[int]:
    """The reports ``batch`` holds: its entry ids are their ``seq``."""
    return [int(i) for i in batch.entry_ids]
