"""Command line: ``stigg-sidecar [--config FILE] [--local [CATALOG]] [--host H] [--port P]``."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

from aiohttp import web

from sidecar import __version__
from sidecar.app import create_app
from sidecar.config import ConfigError, StartupError, load_settings

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
    logging.basicConfig(
        level=settings.logging.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: far too much for a sidecar on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    loop = None
    if settings.server.event_loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    app = create_app(settings)
    try:
        web.run_app(
            app,
            loop=loop,
            host=settings.server.host,
            port=settings.server.port,
            shutdown_timeout=settings.server.shutdown_timeout_seconds,
            print=lambda _: logging.getLogger("sidecar").info(
                "stigg-sidecar %s listening on http://%s:%d",
                __version__,
                settings.server.host,
                settings.server.port,
            ),
            access_log=None,
            # aiohttp's default of 128 drops connections when a thousand app workers open
            # theirs at once (bench/stampede.py); they would wait a SYN retry, about a second.
            backlog=4096,
        )
    except OSError as exc:
        # A port already taken: one line, no traceback.
        print(f"stigg-sidecar: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)
    except StartupError as exc:
        # Raised from a cleanup context before anything serves: one line, no traceback.
        print(f"stigg-sidecar: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
