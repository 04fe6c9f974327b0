"""Open files: raise the soft limit at start, and cap what each side listener may hold open.

With the common ``nofile`` of 1,024, a thousand idle connections to the management port (it
listens on 0.0.0.0 without authentication) used to exhaust the process's descriptors: every
listener stopped accepting and new fetches to Stigg failed. So the soft limit is raised to the
hard one, the management and MCP listeners hold at most a few dozen connections each (refusing
the rest at once) and close idle ones after a few seconds, the API port holds at most
``server.maxConnections``, and what is left, the reserve, stays for the pool to Stigg, Redis
and the spool.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import cast

from aiohttp import web

from sidecar.fault_log import FaultLog

log = logging.getLogger(__name__)
faults = FaultLog(log)

# Descriptors the process needs besides its listeners' connections: pool to Stigg, Redis,
# the spool's files, the event loop's own; a start with less is warned about.
RESERVE = 256
# Far above any need; a hard limit of "unlimited" is not a value setrlimit takes as soft.
_CEILING = 1 << 20
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: 91\r\n\r\n"
    b'{"error":{"code":"too_many_connections","message":"this port holds too many connections"}}\n'
)


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; warn if ``needed`` still exceeds it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft < needed:
        log.warning(
            "open-file limit %d is below the %d this configuration may use; raise nofile",
            soft,
            needed,
        )
    return soft


class _Refusal(asyncio.Protocol):
    """A connection over the cap: a 503 in our error shape, then closed, holding nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transport is no asyncio.WriteTransport
        # subclass, and the check made the refusal a silent close under uvloop.
        cast(asyncio.WriteTransport, transport).write(REFUSAL)
        transport.close()


def capped(
    factory: Callable[[], asyncio.BaseProtocol], live: Callable[[], int], limit: int, listener: str
) -> Callable[[], asyncio.BaseProtocol]:
    """``factory``, refusing new connections while ``live()`` of them are open."""

    def protocol() -> asyncio.BaseProtocol:
        if live() >= limit:
            faults.log(
                listener,
                logging.WARNING,
                "%s port: refused a connection, %d are open (its maximum)",
                listener,
                limit,
            )
            return _Refusal()
        return factory()

    return protocol


class CappedTCPSite(web.TCPSite):
    """aiohttp's TCP site holding at most ``max_connections`` connections at once."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        name: str,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True, backlog=backlog)
        self._listen = (host, port)
        self._max_connections = max_connections
        self._listener = name

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        factory = capped(
            server, lambda: len(server.connections), self._max_connections, self._listener
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, *self._listen, reuse_address=True, backlog=self._backlog
        )
