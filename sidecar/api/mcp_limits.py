"""The MCP port's uvicorn protocol with the listener limits of ``sidecar.listeners``."""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from sidecar.listeners import REFUSAL, faults


class CappedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, capped at ``limit_concurrency`` connections, and closing
    connections that stay idle for ``timeout_keep_alive`` from the start, not just between
    requests (uvicorn waits forever for a first request)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        limit = self.config.limit_concurrency
        if limit is not None and len(self.connections) > limit:
            faults.log(
                "mcp",
                logging.WARNING,
                "mcp port: refused a connection, %d are open (its maximum)",
                limit,
            )
            transport.write(REFUSAL)
            transport.close()
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
