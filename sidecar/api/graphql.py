"""``POST /graphql``: any GraphQL request, passed through to the configured Stigg URL only."""

from __future__ import annotations

from aiohttp import web

from sidecar.api.errors import ApiError
from sidecar.api.http import read_json
from sidecar.api.mentions import mutated_customers
from sidecar.services import SERVICES


async def graphql_passthrough(request: web.Request) -> web.Response:
    payload = await read_json(request)
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        raise ApiError(
            400, "invalid_request", "query: must be a GraphQL document string", field="query"
        )
    services = request.app[SERVICES]
    # Forward the exact bytes the client sent; only the API key header is ours.
    answer = await services.upstream.forward(await request.read())
    if answer.status < 400:
        for customer_id in mutated_customers(payload, answer.body):
            await services.entitlements.invalidate(customer_id)
    return web.Response(
        status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type}
    )
