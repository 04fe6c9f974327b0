"""A snapshot of L1 on local disk, so a restarted sidecar answers from recent state.

Restarted with Redis empty or absent and Stigg slow, a sidecar used to answer its first
checks with the default (``hasAccess: false``) for customers it had just answered ``true``.
L1 is written to ``<SIDECAR_DATA_DIR>/entitlements-snapshot.json`` every
``cache.snapshotIntervalSeconds`` and on shutdown, and read back at start. Restored entries
are due for a refresh at once (anything may have changed while the sidecar was down) but stay
servable as stale until their ``stale_until``, exactly like a stale L1 entry: a check asks L2 and
Stigg first and answers the snapshot (``source: stale``) only when they fail or are too slow.

What it holds is what L1 holds: customer and resource ids and their entitlements, never a key
or a secret. The file is bounded (``MAX_SNAPSHOT_BYTES``; entries past it are left out), written
to a temporary file and renamed, so a crash mid-write leaves the previous snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic

import orjson

from sidecar.cache.store import CacheEntry, CacheKey, LocalStore, V

log = logging.getLogger(__name__)

FILE_NAME = "entitlements-snapshot.json"
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024
_VERSION = 1


class L1Snapshot(Generic[V]):
    """Writes and restores one local store (L1); ``encode``/``decode`` turn a value into JSON
    and back (as for the Redis store)."""

    def __init__(
        self,
        data_dir: Path,
        l1: LocalStore[V],
        encode: Callable[[V], Any],
        decode: Callable[[Any], V],
        *,
        max_bytes: int = MAX_SNAPSHOT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = data_dir / FILE_NAME
        self._l1 = l1
        self._encode = encode
        self._decode = decode
        self._max_bytes = max_bytes
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float) -> None:
        """Restore L1 now, then write it every ``interval`` seconds until ``stop``."""
        restored = self.restore()
        if restored:
            log.info("restored %d entitlement states from %s", restored, self.path)
        self._task = asyncio.create_task(self._run(interval), name="entitlement-snapshot")

    async def stop(self) -> None:
        """Stop the periodic writes and write once more."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.save()

    def write(self) -> int:
        """Write L1 now; the number of entries written."""
        return self._write(list(self._l1.items()))

    def _write(self, entries: list[tuple[CacheKey, CacheEntry[V]]]) -> int:
        now = self._clock()
        parts: list[bytes] = []
        size = 0
        for (customer_id, resource_id), entry in reversed(entries):  # newest first
            if not entry.is_usable(now) or entry.stale_until <= entry.fresh_until:
                continue  # expired, or never servable stale ("customer not found")
            part = orjson.dumps(
                [
                    customer_id,
                    resource_id,
                    entry.fresh_until,
                    entry.stale_until,
                    self._encode(entry.value),
                ]
            )
            if size + len(part) > self._max_bytes:
                break
            parts.append(part)
            size += len(part) + 1
        body = b'{"version":%d,"entries":[' % _VERSION + b",".join(parts) + b"]}"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(self.path)
        return len(parts)

    def restore(self) -> int:
        """Put the snapshot's still-servable entries into L1, due for a refresh; how many."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("entitlement snapshot %s cannot be read: %s", self.path, exc)
            return 0
        now = self._clock()
        restored = 0
        try:
            for customer_id, resource_id, fresh_until, stale_until, value in _entries(raw):
                if stale_until <= now:
                    continue
                state = self._decode(value)
                entry = CacheEntry(state, min(float(fresh_until), now), float(stale_until))
                self._l1.set_nowait((customer_id, resource_id), entry)
                restored += 1
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("entitlement snapshot %s is unusable (%s); starting cold", self.path, exc)
        return restored

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.save()

    async def save(self) -> None:
        """``write`` off the event loop; a failure is a warning, never a crash."""
        entries = list(self._l1.items())  # taken here: L1 changes only on this thread
        try:
            await asyncio.to_thread(self._write, entries)
        except OSError as exc:
            log.warning("entitlement snapshot %s not written: %s", self.path, exc)


def _entries(raw: bytes) -> list[Any]:
    document: Any = orjson.loads(raw)
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        raise ValueError("unknown format")
    entries: list[Any] = document["entries"]
    return entries
