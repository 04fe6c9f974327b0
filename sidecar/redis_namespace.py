"""This deployment's place in a shared Redis: one key namespace.

Every key and channel the sidecar writes starts with ``stigg-sidecar:<cache.environment>:``,
so deployments with different environments (and different Stigg keys) can share one Redis
without seeing each other's cache, invalidations, usage spool or flush lease.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "stigg-sidecar"


@dataclass(frozen=True, slots=True)
class RedisNamespace:
    """The key namespace of one environment."""

    environment: str

    @property
    def prefix(self) -> str:
        """Every key of this environment starts with this (and a colon)."""
        return f"{ROOT}:{self.environment}"

    def key(self, *parts: str) -> str:
        """``<prefix>:part:part...``."""
        return ":".join((self.prefix, *parts))

    @property
    def spool(self) -> str:
        """The spool's keys' prefix; its hash tag keeps them on one Cluster slot, as each of
        the spool's scripts touches several of them."""
        return self.key("{spool}")

    @property
    def match(self) -> str:
        """A ``SCAN MATCH`` pattern for every key of this environment."""
        return _glob_escape(self.prefix) + ":*"


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
