"""``python -m sidecar.emulator --catalog FILE --api-key KEY [--port P]``: the emulator alone,
in its own process (crash tests, trying the API with curl). Prints its URL on stdout."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from sidecar.emulator.catalog import CatalogError, load_catalog
from sidecar.emulator.server import EmulatorServer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.emulator", description="Run the local Stigg emulator."
    )
    parser.add_argument("--catalog", type=Path, default=Path("config/catalog.yaml"))
    parser.add_argument(
        "--api-key",
        default=os.environ.get("STIGG_API_KEY"),
        help="the X-API-KEY clients must send (default: $STIGG_API_KEY)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--null-for-missing",
        action="store_true",
        help="answer nullable lookups of unknown entities with null instead of an error",
    )
    return parser.parse_args(argv)


async def serve(server: EmulatorServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        # Only the URL on stdout, so a parent process can read the port from the first line.
        print(server.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.api_key:
        sys.exit("emulator: --api-key (or STIGG_API_KEY) is required")
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        sys.exit(f"emulator: {args.catalog}: {exc}")
    except OSError as exc:
        sys.exit(f"emulator: cannot read catalog {args.catalog} ({exc.strerror})")
    try:
        server = EmulatorServer(catalog, args.api_key, host=args.host, port=args.port)
        server.emulator.null_for_missing = args.null_for_missing
    except ValueError as exc:
        sys.exit(f"emulator: {exc}")
    try:
        asyncio.run(serve(server))
    except OSError as exc:
        sys.exit(f"emulator: cannot listen on {args.host}:{args.port} ({exc.strerror})")


if __name__ == "__main__":
    main()
