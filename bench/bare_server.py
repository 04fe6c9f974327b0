"""The baseline for check_http.py: an aiohttp handler returning a constant JSON body."""

from __future__ import annotations

import sys

from aiohttp import web


def main() -> None:
    port, size, event_loop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    body = b'{"pad":"' + b"x" * (size - 10) + b'"}'

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/entitlements", handler)
    app.router.add_get("/openapi.json", handler)
    loop = None
    if event_loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
