"""Command line: ``stigg-sidecar [--config FILE] [--local [CATALOG]] [--host H] [--port P]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import stat
import sys
from importlib import resources
from pathlib import Path

from aiohttp import web

from sidecar import __version__, logs
from sidecar.app import create_app
from sidecar.config import ConfigError, Settings, StartupError, load_settings
from sidecar.listeners import RESERVE, CappedTCPSite, raise_open_file_limit

DEFAULT_CATALOG = Path("config/catalog.yaml")
_PACKAGED_CATALOG = "sidecar.emulator"


def default_catalog() -> Path:
    """``config/catalog.yaml`` of the checkout, else the copy shipped in the package."""
    if DEFAULT_CATALOG.is_file():
        return DEFAULT_CATALOG
    return Path(str(resources.files(_PACKAGED_CATALOG).joinpath("catalog.yaml")))


def check_catalog(path: Path) -> None:
    """Fail at start, with one line, on a catalog the emulator could not load."""
    from sidecar.emulator import CatalogError, load_catalog

    try:
        load_catalog(path)
    except CatalogError as exc:
        raise ConfigError(f"--local: {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--local: cannot read catalog {path} ({exc.strerror})") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stigg-sidecar",
        description="Cached, fault-tolerant entitlement checks and usage reporting for Stigg.",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (or SIDECAR_CONFIG)")
    parser.add_argument(
        "--local",
        nargs="?",
        const="",
        metavar="CATALOG",
        help="run against an embedded Stigg emulator seeded from CATALOG "
        "(default config/catalog.yaml); no network, no API key",
    )
    parser.add_argument("--host", help="address for the API (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port for the API (default 8080)")
    parser.add_argument("--version", action="version", version=f"stigg-sidecar {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    catalog = None
    if args.local is not None:
        catalog = Path(args.local) if args.local else default_catalog()
    try:
        settings = load_settings(args.config, local_catalog=catalog, host=args.host, port=args.port)
        if catalog is not None:
            check_catalog(catalog)
    except ConfigError as exc:
        print(f"stigg-sidecar: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.register_secrets(*settings.secrets())
    logs.configure(settings.logging.level)
    path = settings.server.unix_socket
    try:
        unix = bind_unix_socket(path) if path else None
    except StartupError as exc:
        print(f"stigg-sidecar: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)
    try:
        serve(settings, unix)
    finally:
        if unix is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def bind_unix_socket(path: str) -> socket.socket:
    """The API's Unix socket, bound with mode 0666 (a stale file from a dead process replaced).

    0666 rather than 0660: the app container may run as another user and group than the
    sidecar. Access is controlled by the directory instead: an emptyDir private to the pod.
    """
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise StartupError(f"server.unixSocket: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nothing listens: left behind by a process that died
        else:
            raise StartupError(f"server.unixSocket: another process serves on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)  # noqa: S103 - see the docstring: the directory guards it
    except OSError as exc:
        sock.close()
        raise StartupError(f"server.unixSocket: cannot listen on {path}: {exc.strerror}") from None
    return sock


# aiohttp's default of 128 drops connections when a thousand app workers open theirs at once
# (bench/stampede.py); they would wait a SYN retry, about a second.
BACKLOG = 4096
# Idle keep-alive connections from the app's pool are closed after this long (run_app's
# default, which the API had before; the runner's own is an hour).
KEEPALIVE_SECONDS = 75.0


def serve(settings: Settings, unix: socket.socket | None) -> None:
    """Serve until SIGINT/SIGTERM; one line on stderr and exit 1 if that cannot start."""
    loop_factory = None
    if settings.server.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    raise_open_file_limit(
        RESERVE
        + settings.server.max_connections
        + settings.stigg.max_connections
        + (settings.management.max_connections if settings.management.enabled else 0)
        + (settings.mcp.max_connections if settings.mcp.enabled else 0)
    )
    app = create_app(settings)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run(app, settings, unix))
    except (OSError, StartupError) as exc:
        # A port already taken, or a StartupError from a cleanup context (say the MCP port):
        # one line, no traceback.
        print(f"stigg-sidecar: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)


async def run(app: web.Application, settings: Settings, unix: socket.socket | None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then drain for ``server.shutdownTimeoutSeconds``.

    Our own rather than ``web.run_app``: its TCP site cannot be capped (``server.maxConnections``),
    and it skips cleanup when startup fails, leaving the contexts already entered open. Here the
    runner is cleaned up however the start ends: contexts entered are closed in reverse order.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = settings.server
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=server.shutdown_timeout_seconds,
        keepalive_timeout=KEEPALIVE_SECONDS,
    )
    try:
        await runner.setup()
        sites: list[web.BaseSite] = [
            CappedTCPSite(
                runner,
                server.host,
                server.port,
                max_connections=server.max_connections,
                name="API",
                backlog=BACKLOG,
            )
        ]
        if unix is not None:
            sites.append(web.SockSite(runner, unix, backlog=BACKLOG))
        for site in sites:
            await site.start()
        # What start-up built (schemas, catalogs, the emulator) lives as long as the process:
        # out of the collector's sight, a collection no longer walks it while requests wait.
        gc.collect()
        gc.freeze()
        logging.getLogger("sidecar").info(
            "stigg-sidecar %s listening on http://%s:%d%s",
            __version__,
            server.host,
            server.port,
            f" and unix:{server.unix_socket}" if unix is not None else "",
        )
        await stop.wait()
    finally:
        # The handlers stay through the drain: a second signal does not cut it short.
        await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


if __name__ == "__main__":
    main()
