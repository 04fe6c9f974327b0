"""The redis-server fixture gives integration tests a private, working Redis."""

import redis.asyncio as redis


async def test_fixture_serves_a_private_redis_on_loopback(redis_server: str) -> None:
    assert redis_server.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(redis_server)
    try:
        port = redis_server.rsplit(":", 1)[1].split("/")[0]
        assert (await client.config_get("port"))["port"] == port  # the fixture's own server
        await client.set("stigg-sidecar:probe", b"1", px=1000)
        assert await client.get("stigg-sidecar:probe") == b"1"
    finally:
        await client.aclose()
