"""Injected failures for ``/graphql``: latency, error statuses, hung requests, and
``nullForMissing`` (unknown entities answered with null where the schema allows it).

Tests of the sidecar's fallbacks, retries and timeouts set these through ``/admin/faults``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

_KEYS = {"latencyMs", "status", "hang", "times", "operations", "nullForMissing"}
MAX_LATENCY_MS = 600_000


class FaultConfigError(ValueError):
    """The ``/admin/faults`` body is not a valid fault configuration."""


@dataclass(frozen=True)
class FaultConfig:
    latency_ms: int = 0
    status: int | None = None
    hang: bool = False
    # How many more matching requests the fault applies to; None: until cleared.
    times: int | None = None
    # Root field names; None: every request.
    operations: frozenset[str] | None = None
    # Nullable lookups (getCustomerByRefId) answer an unknown entity with null, no error.
    null_for_missing: bool = False

    @classmethod
    def parse(cls, raw: object) -> FaultConfig:
        if not isinstance(raw, Mapping):
            raise FaultConfigError("the body must be a JSON object")
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise FaultConfigError(
                f"unknown key {unknown[0]!r} (expected {', '.join(sorted(_KEYS))})"
            )
        latency = raw.get("latencyMs", 0)
        if not _is_int(latency) or not 0 <= latency <= MAX_LATENCY_MS:
            raise FaultConfigError(f"latencyMs must be an integer from 0 to {MAX_LATENCY_MS}")
        status = raw.get("status")
        if status is not None and (not _is_int(status) or not 400 <= status <= 599):
            raise FaultConfigError("status must be an HTTP error status (400-599)")
        hang = raw.get("hang", False)
        if not isinstance(hang, bool):
            raise FaultConfigError("hang must be true or false")
        null_for_missing = raw.get("nullForMissing", False)
        if not isinstance(null_for_missing, bool):
            raise FaultConfigError("nullForMissing must be true or false")
        times = raw.get("times")
        if times is not None and (not _is_int(times) or times < 1):
            raise FaultConfigError("times must be a positive integer")
        operations = raw.get("operations")
        if operations is not None and (
            not isinstance(operations, list)
            or not operations
            or not all(isinstance(op, str) and op for op in operations)
        ):
            raise FaultConfigError("operations must be a non-empty list of root field names")
        return cls(
            latency_ms=latency,
            status=status,
            hang=hang,
            times=times,
            operations=frozenset(operations) if operations is not None else None,
            null_for_missing=null_for_missing,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "latencyMs": self.latency_ms,
            "status": self.status,
            "hang": self.hang,
            "times": self.times,
            "operations": sorted(self.operations) if self.operations is not None else None,
            "nullForMissing": self.null_for_missing,
        }

    def matches(self, root_fields: Collection[str]) -> bool:
        return self.operations is None or not self.operations.isdisjoint(root_fields)


class Faults:
    """The current fault, its remaining count, and the gate hung requests wait on."""

    def __init__(self) -> None:
        self._config: FaultConfig | None = None
        self._release = asyncio.Event()

    @property
    def config(self) -> FaultConfig | None:
        return self._config

    def configure(self, config: FaultConfig) -> None:
        """Replace the fault; requests already hanging stay held until ``clear``."""
        self._config = config

    def clear(self) -> None:
        """No more faults, and every hung request goes on to be executed."""
        self._config = None
        self._release.set()
        self._release = asyncio.Event()

    def take(self, root_fields: Collection[str]) -> FaultConfig | None:
        """The fault for this request, if any, counting it against ``times``."""
        config = self._config
        if config is None or not config.matches(root_fields):
            return None
        if config.times is not None:
            remaining = config.times - 1
            self._config = None if remaining == 0 else dataclasses.replace(config, times=remaining)
        return config

    def gate(self) -> asyncio.Event:
        """What a request matched now waits on: set by the next ``clear``. Taken at match
        time, so a clear that happens during the fault's latency still releases it."""
        return self._release

    @staticmethod
    async def hold(release: asyncio.Event, max_seconds: float) -> bool:
        """Wait until ``release`` is set (True) or ``max_seconds`` pass (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), timeout=max_seconds)
            return True
        return False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
