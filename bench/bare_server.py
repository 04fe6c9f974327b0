"""The baselines: for check_http.py an aiohttp handler returning a constant JSON body; for
usage_ingest.py one that reads a POSTed JSON body, parses it and answers 202 with that body
(what any JSON intake does before storing anything)."""

from __future__ import annotations

import sys

import orjson
from aiohttp import web


def main() -> None:
    port, size, event_loop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    body = b'{"pad":"' + b"x" * (size - 10) + b'"}'

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def intake(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(body=body, status=202, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/usage", intake)
    app.router.add_get("/v1/entitlements", handler)
    app.router.add_get("/openapi.json", handler)
    loop = None
    if event_loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
