"""Usage reporting: accept durably, answer 202, deliver in the background.

``accept_usages``/``accept_events`` return once the reports are in the spool (or raise
``UsageUnavailable``: full, store down, shutting down). One ``Flusher`` per kind sends them to
Stigg; ``stop`` drains what the shutdown deadline allows and leaves the rest for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from sidecar.config import Settings, UsageSettings
from sidecar.fault_log import FaultLog
from sidecar.redis_namespace import RedisNamespace
from sidecar.timestamps import format_epoch
from sidecar.upstream.client import Upstream
from sidecar.usage.flusher import Flusher, event_policy, usage_policy
from sidecar.usage.listener import UsageListener, changes_of, figures_of
from sidecar.usage.model import EventReport, Kind, UsageReport
from sidecar.usage.spool import DeadLetter, NewReport, NotReplicated, Spool, SpoolFull
from sidecar.usage.sqlite_spool import SqliteSpool
from sidecar.usage.stats import UsageStats

if TYPE_CHECKING:
    from sidecar.redis_connect import RedisClient

log = logging.getLogger(__name__)
_faults = FaultLog(log)

MAINTENANCE_INTERVAL_SECONDS = 600.0


class UsageUnavailable(Exception):
    """Reports cannot be accepted right now; nothing was stored. Answered as 503."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class UsageService:
    """Accepts usage reports and raw events durably; a background flusher delivers them."""

    def __init__(
        self,
        upstream: Upstream,
        spool: Spool,
        settings: UsageSettings,
        *,
        listener: UsageListener | None = None,
        stats: UsageStats | None = None,
        cleanup: Sequence[Callable[[], None]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``stats`` are shared with the spool when it counts too; ``cleanup`` runs on stop."""
        self.settings = settings
        self.spool = spool
        self.stats = stats if stats is not None else UsageStats()
        self._listener = listener
        self._clock = clock
        self._accepting = False
        self._deadline: float | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._cleanup = list(cleanup)
        self.flushers: dict[Kind, Flusher] = {
            policy.kind: Flusher(
                policy,
                spool=spool,
                upstream=upstream,
                settings=settings,
                stats=self.stats,
                clock=clock,
            )
            for policy in (
                usage_policy(settings, self._confirmed if listener is not None else None),
                event_policy(settings),
            )
        }

    @classmethod
    def from_settings(
        cls,
        upstream: Upstream,
        settings: Settings,
        *,
        redis: RedisClient | None = None,
        listener: UsageListener | None = None,
    ) -> UsageService:
        """The spool the settings ask for: Redis (the process's pool, ``redis``) with
        ``SIDECAR_REDIS_URL``, else SQLite."""
        usage = settings.usage
        spool: Spool
        cleanup: list[Callable[[], None]] = []
        stats = UsageStats()
        if settings.redis_url is not None:
            from sidecar.usage.redis_spool import RedisSpool

            if redis is None:
                raise ValueError("a Redis spool needs the process's Redis pool")

            def claimed(kind: Kind, count: int) -> None:
                stats.kinds[kind].claimed += count

            spool = RedisSpool(
                redis,
                prefix=RedisNamespace(settings.cache.environment).spool,
                max_reports=usage.spool_max_reports,
                max_bytes=usage.spool_max_bytes,
                dedupe_window_seconds=usage.dedupe_window_seconds,
                lease_seconds=usage.claim_idle_seconds,
                on_claimed=claimed,
                legacy_prefix=usage.redis_key_prefix or "stigg-sidecar",
                allow_volatile=usage.allow_volatile_redis,
                min_replicas_ack=settings.redis.min_replicas_ack,
                replica_ack_timeout=settings.redis.replica_ack_timeout_seconds,
            )
        else:
            data_dir = settings.data_dir
            if settings.is_local:
                # --local is ephemeral like the emulator's state: reports spooled for one
                # emulator must not be delivered to the next one.
                temp = tempfile.TemporaryDirectory(prefix="stigg-sidecar-local-")
                data_dir = Path(temp.name)
                cleanup.append(temp.cleanup)
            spool = SqliteSpool(
                data_dir,
                max_reports=usage.spool_max_reports,
                max_bytes=usage.spool_max_bytes,
                dedupe_window_seconds=usage.dedupe_window_seconds,
                synchronous=usage.sqlite_synchronous,
            )
        return cls(upstream, spool, usage, listener=listener, stats=stats, cleanup=cleanup)

    async def _confirmed(self, measurements: Sequence[Mapping[str, Any]]) -> None:
        assert self._listener is not None
        await self._listener.apply_usage(figures_of(measurements))

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (recovering what an earlier process left) and start flushing."""
        await self.spool.open()
        depth = await self.spool.depth()
        waiting = sum(depth.reports.values())
        if waiting:
            log.info("usage spool (%s): %d report(s) waiting from before", self.spool.name, waiting)
        for flusher in self.flushers.values():
            flusher.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="usage-maintenance")
        self._accepting = True

    def stop_accepting(self) -> None:
        """First step of shutdown: new reports get 503; the drain deadline starts now."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.settings.shutdown_deadline_seconds
        self._accepting = False

    async def stop(self) -> None:
        """Flush until the deadline, leave the rest spooled, close the spool."""
        self.stop_accepting()
        assert self._deadline is not None
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        remaining = self._deadline - time.monotonic()
        drained = await asyncio.gather(
            *(flusher.drain(remaining) for flusher in self.flushers.values())
        )
        with contextlib.suppress(Exception):
            depth = await self.spool.depth()
            left = sum(depth.reports.values())
            if left or not all(drained):
                log.warning("usage: %d report(s) left in the spool for the next start", left)
        with contextlib.suppress(Exception):
            await self.spool.release()
        await self.spool.close()
        for cleanup in self._cleanup:
            cleanup()

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_SECONDS)
            try:
                await self.spool.purge_expired_keys(self._clock())
            except Exception:
                log.warning("usage spool: purging expired idempotency keys failed", exc_info=True)

    # --- accepting ----------------------------------------------------------------------------

    async def accept_usages(self, reports: Sequence[UsageReport]) -> list[bool]:
        """Spool ``reports`` (all or none); per report, False when it was a duplicate."""
        accepted = format_epoch(self._clock())
        stored = await self._append("usage", [(r.to_record(accepted), r) for r in reports])
        if self._listener is not None:
            fresh = [r for r, ok in zip(reports, stored, strict=True) if ok]
            if fresh:
                try:
                    await self._listener.apply_usage(changes_of(fresh))
                except Exception:
                    log.exception("usage listener failed on accepted usage")
        return stored

    async def accept_events(self, events: Sequence[EventReport]) -> list[bool]:
        accepted = format_epoch(self._clock())
        return await self._append("event", [(e.to_record(accepted), e) for e in events])

    async def _append(
        self, kind: Kind, items: Sequence[tuple[dict[str, Any], UsageReport | EventReport]]
    ) -> list[bool]:
        stats = self.stats.kinds[kind]
        if not self._accepting:
            raise UsageUnavailable(
                "shutting_down", "the sidecar is shutting down; send to another replica", 1
            )
        new = [
            NewReport(
                orjson.dumps(record), report.idempotency_key if report.key_from_client else None
            )
            for record, report in items
        ]
        try:
            stored = await self.spool.append(kind, new, self._clock())
        except NotReplicated as exc:
            # Stored on the primary and de-duplicated there: the client's retry with the same
            # keys is answered "duplicate" and counted once. Delivered in any case.
            stats.not_replicated += sum(exc.stored)
            if any(exc.stored):
                self.flushers[kind].notify()
            _faults.log(
                "replicas",
                logging.WARNING,
                "usage spool: %s within redis.replicaAckTimeoutSeconds; answering 503",
                exc,
            )
            raise UsageUnavailable(
                "not_replicated",
                "the reports are stored on the Redis primary but not yet on enough replicas;"
                " send them again with the same idempotency keys",
                1,
            ) from None
        except SpoolFull:
            stats.rejected_full += len(new)
            raise UsageUnavailable(
                "spool_full",
                "the usage spool is full (Stigg unreachable for long?); retry later",
                self.settings.full_retry_after_seconds,
            ) from None
        except Exception as exc:  # noqa: BLE001 - a store failure is a 503, never a lost 202
            _faults.log(
                "store",
                logging.WARNING,
                "usage spool (%s) cannot store reports: %s",
                self.spool.name,
                exc,
            )
            raise UsageUnavailable(
                "spool_unavailable", "the usage spool cannot store reports right now", 1
            ) from None
        accepted = sum(stored)
        stats.accepted += accepted
        stats.duplicates += len(stored) - accepted
        if accepted:
            self.flushers[kind].notify()
        return stored

    async def report(self, report: UsageReport) -> dict[str, Any]:
        """One report, answered as ``POST /v1/usage`` answers it."""
        [stored] = await self.accept_usages([report])
        return acceptance(report, stored)

    # --- dead letters and stats ---------------------------------------------------------------

    async def dead_letters(
        self, kind: Kind | None, limit: int, after: str | None
    ) -> list[DeadLetter]:
        return await self.spool.dead_letters(kind, limit, after)

    async def replay(self, ids: Sequence[str] | None) -> int:
        """Put dead letters back in the queue (all when ``ids`` is None); how many."""
        replayed = await self.spool.replay(ids, self._clock())
        for kind, count in replayed.items():
            if count:
                self.stats.kinds[kind].replayed += count
                self.flushers[kind].notify()  # type: ignore[index]
        return sum(replayed.values())

    async def stats_json(self) -> dict[str, Any]:
        """``GET /v1/usage/stats``: counters plus the spool's current depth."""
        now = self._clock()
        spooled: dict[str, Any]
        try:
            depth = await self.spool.depth()
        except Exception as exc:  # noqa: BLE001 - stats must answer while Redis is down
            spooled = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            spooled = {
                "reports": sum(depth.reports.values()),
                "byKind": depth.reports,
                "bytes": depth.bytes,
                "oldestAgeSeconds": {
                    kind: (None if at is None else max(0.0, now - at))
                    for kind, at in depth.oldest_accepted_at.items()
                },
                "openBatches": depth.open_batches,
                "deadLetters": depth.dead_letters,
            }
        return {
            "spool": self.spool.name,
            "accepting": self._accepting,
            "leader": self.stats.leader,
            "authPaused": self.stats.auth_paused,
            "spooled": spooled,
            "usage": self.stats.usage.to_json(),
            "events": self.stats.event.to_json(),
        }


def acceptance(report: UsageReport | EventReport, stored: bool) -> dict[str, Any]:
    """What the API answers for one report."""
    answer: dict[str, Any] = {
        "id": report.idempotency_key,
        "idempotencyKey": report.idempotency_key,
        "status": "accepted" if stored else "duplicate",
    }
    if isinstance(report, UsageReport):
        answer["customerId"] = report.customer_id
        answer["featureId"] = report.feature_id
        if report.resource_id is not None:
            answer["resourceId"] = report.resource_id
    else:
        answer["eventName"] = report.event_name
        answer["customerId"] = report.customer_id
    return answer
