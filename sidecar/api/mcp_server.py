"""The MCP endpoint: the official SDK's streamable HTTP transport, served in the sidecar's loop.

The SDK's transport is an ASGI app, so it runs under uvicorn as one more task in the aiohttp
event loop (same process, same services as the REST API). The listening socket is bound by
the sidecar itself, before uvicorn starts, so a taken port stops startup with one clear line
instead of uvicorn's ``sys.exit``; uvicorn's own signal handlers are switched off because
aiohttp's ``run_app`` owns SIGINT/SIGTERM and stops this server from its cleanup context.

The session manager runs stateless with JSON responses: every tool is one request and one
answer, none needs server-to-client messages, and nothing has to survive between requests, so
a sidecar restart never strands an agent on a session id the new process does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import mcp.types as types
import orjson
import uvicorn
from aiohttp import web
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from sidecar import __version__
from sidecar.api.mcp_limits import CappedH11Protocol
from sidecar.api.mcp_tools import TOOLS, call_tool
from sidecar.config import McpSettings, Secret, Settings, StartupError
from sidecar.services import Services

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

INSTRUCTIONS = (
    "Tools of a Stigg sidecar: provision customers and subscriptions, check what a customer is "
    "entitled to before doing gated work (check-entitlement), and report metered usage after "
    "it (report-usage, with an idempotencyKey so retries count once)."
)


def build_server(services: Callable[[], Services]) -> Server[Any]:
    """The MCP server: ``tools/list`` and ``tools/call`` over the sidecar's services."""
    listing = types.ListToolsResult(tools=[tool.to_mcp() for tool in TOOLS])

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return listing

    async def run_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await call_tool(services(), params.name, params.arguments)

    return Server(
        "stigg-sidecar",
        version=__version__,
        title="Stigg sidecar",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=run_tool,
    )


class _McpHttpApp:
    """ASGI entry: bearer token check, then ``/mcp`` to the SDK; JSON errors like the API's."""

    def __init__(self, manager: StreamableHTTPSessionManager, token: Secret | None) -> None:
        self._manager = manager
        self._expected = token.reveal().encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are not served
            return
        if self._expected is not None and not self._authorized(scope):
            await _error(
                send,
                401,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <SIDECAR_AUTH_TOKEN>)",
                [(b"www-authenticate", b'Bearer realm="stigg-sidecar"')],
            )
            return
        if scope["path"] != MCP_PATH:
            await _error(
                send, 404, "not_found", f"no route {scope['path']}; the MCP endpoint is {MCP_PATH}"
            )
            return
        if scope["method"] != "POST":
            # Stateless: no stream of server-initiated messages (GET) and no session to end
            # (DELETE). Answered here because the SDK would hold a GET open with nothing to send.
            await _error(
                send,
                405,
                "method_not_allowed",
                f"{scope['method']} {MCP_PATH}: this MCP server answers POST only (stateless)",
                [(b"allow", b"POST")],
            )
            return
        await self._manager.handle_request(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        assert self._expected is not None
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        # Constant-time on the token; the scheme name is case-insensitive (RFC 7235).
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._expected)


async def _error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its SIGINT/SIGTERM handlers: aiohttp's ``run_app`` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line ``StartupError`` saying why not."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    hint = "set mcp.port (SIDECAR_MCP_PORT) to a free port, or mcp.enabled: false"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"mcp.host: cannot resolve {host!r} ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"MCP server cannot listen on {where}: {exc.strerror}; {hint}") from None
    return sock


async def _serve(
    manager: StreamableHTTPSessionManager,
    server: uvicorn.Server,
    sock: socket.socket,
    running: asyncio.Event,
) -> None:
    # One task enters and leaves the session manager: anyio's task groups require it.
    try:
        async with manager.run():
            running.set()
            await server.serve(sockets=[sock])
    except Exception:
        log.exception("MCP server failed")
        raise


class McpListener:
    """The MCP server on its own port, started and stopped by the app's cleanup context."""

    def __init__(
        self,
        settings: McpSettings,
        services: Callable[[], Services],
        *,
        token: Secret | None,
        max_body_bytes: int,
        shutdown_timeout_seconds: float,
    ) -> None:
        self._settings = settings
        self._services = services
        self._token = token
        self._max_body_bytes = max_body_bytes
        self._grace = shutdown_timeout_seconds
        self._socket: socket.socket | None = None
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one picked for port 0)."""
        assert self._socket is not None, "not started"
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """Where agents reach the MCP endpoint."""
        host = self._settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}{MCP_PATH}"

    async def start(self) -> None:
        """Bind the port (or raise ``StartupError``) and serve until ``stop``."""
        self._socket = bind(self._settings.host, self._settings.port)
        security = None
        if self._settings.host in _LOOPBACK:
            # A loopback server is reachable from a browser on the same machine: refuse
            # requests whose Host/Origin show they came through DNS rebinding.
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        manager = StreamableHTTPSessionManager(
            app=build_server(self._services),
            json_response=True,
            stateless=True,
            security_settings=security,
            max_request_body_size=self._max_body_bytes,
        )
        config = uvicorn.Config(
            _McpHttpApp(manager, self._token),
            http=CappedH11Protocol,
            limit_concurrency=self._settings.max_connections,
            timeout_keep_alive=math.ceil(self._settings.idle_timeout_seconds),
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=math.ceil(self._grace),
        )
        # uvicorn logs each start and stop, and the SDK each stateless request, at INFO; the
        # sidecar logs its own start line instead.
        for name in ("uvicorn.error", "mcp.server.streamable_http"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._uvicorn = server = _EmbeddedUvicorn(config)
        running = asyncio.Event()
        self._task = asyncio.create_task(
            _serve(manager, server, self._socket, running), name="mcp-server"
        )
        ready = asyncio.create_task(running.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not running.is_set():
            ready.cancel()
            self._task.result()  # raises what stopped it
            raise StartupError("MCP server stopped while starting")
        log.info("MCP server for AI agents at %s", self.url)

    def begin_shutdown(self) -> None:
        """Stop accepting connections; requests in flight get the graceful shutdown period."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    async def stop(self) -> None:
        """Stop serving, after requests in flight finish or the grace period runs out."""
        self.begin_shutdown()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            # uvicorn bounds its own wait by the grace period; this only guards against a hang.
            await asyncio.wait_for(asyncio.shield(task), timeout=self._grace + 5)
        except TimeoutError:
            log.warning("MCP server did not stop in time; cancelling it")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:  # noqa: BLE001, S110 - logged by _serve when it failed
            pass
        finally:
            if self._socket is not None:
                self._socket.close()


MCP = web.AppKey("mcp", McpListener)


def setup_mcp(app: web.Application, settings: Settings, services: Callable[[], Services]) -> None:
    """Serve the MCP tools on their own port for as long as ``app`` runs."""
    app[MCP] = McpListener(
        settings.mcp,
        services,
        token=settings.auth_token,
        max_body_bytes=settings.server.max_body_bytes,
        shutdown_timeout_seconds=settings.server.shutdown_timeout_seconds,
    )
    app.cleanup_ctx.append(_mcp_ctx)
    app.on_shutdown.append(_begin_shutdown)


async def _mcp_ctx(app: web.Application) -> AsyncIterator[None]:
    # Appended after the upstream's context: starts once the services exist, stops before them.
    listener = app[MCP]
    await listener.start()
    try:
        yield
    finally:
        await listener.stop()


async def _begin_shutdown(app: web.Application) -> None:
    # Runs while the REST API drains too, so the two grace periods overlap instead of adding up.
    app[MCP].begin_shutdown()
