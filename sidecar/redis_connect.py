"""The process's one Redis client, however Redis is run: one server, a Cluster, or a primary
behind Sentinel; over TLS (``rediss``) with an ACL user where asked.

Everything else (cache, broadcast, spool, readiness) receives the client this returns and does
not know which form it is, except where the form changes the protocol (``is_cluster``).
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import SplitResult, unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from sidecar.config import RedisSettings, Secret

RedisClient: TypeAlias = redis.Redis | RedisCluster

# Short: a check must not wait long on a hung Redis, and every spool operation is retried by
# its caller. The same for the sentinels, which are asked where the primary is.
_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}
SENTINEL_PORT = 26379


def connect(
    url: str,
    settings: RedisSettings | None = None,
    *,
    username: Secret | None = None,
    password: Secret | None = None,
) -> RedisClient:
    """The client for ``url`` (``redis``, ``rediss``, ``unix``, ``redis+sentinel`` or
    ``rediss+sentinel``); ``username``/``password`` apply where the URL carries none."""
    settings = settings or RedisSettings()
    parts = urlsplit(url)
    options: dict[str, Any] = dict(_TIMEOUTS)
    if parts.scheme.startswith("rediss"):
        options.update(tls_options(settings))
    if username is not None and not parts.username:
        options["username"] = username.reveal()
    if password is not None and not parts.password:
        options["password"] = password.reveal()
    if parts.scheme.endswith("+sentinel"):
        return _sentinel_primary(parts, options)
    if settings.cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, health_check_interval=10, **options)


def is_cluster(client: RedisClient) -> bool:
    """Whether ``client`` talks to a Redis Cluster (hash slots, sharded pub/sub, no WAIT)."""
    return isinstance(client, RedisCluster)


def tls_options(settings: RedisSettings) -> dict[str, Any]:
    """redis-py's TLS keywords: the server is always verified (certificate and host name).
    The ``rediss`` scheme itself turns TLS on (``ssl=True`` where no URL is parsed)."""
    options: dict[str, Any] = {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
    }
    if settings.ca_file:
        options["ssl_ca_certs"] = settings.ca_file
    if settings.cert_file:
        options["ssl_certfile"] = settings.cert_file
        options["ssl_keyfile"] = settings.key_file
    return options


def _sentinel_primary(parts: SplitResult, options: dict[str, Any]) -> redis.Redis:
    """``[user:pass@]host[:port][,host[:port]]/<service>[/db]``: the service's primary, found
    through the sentinels and followed across failovers (the pool asks them again whenever a
    connection fails or the old primary answers READONLY)."""
    netloc = parts.netloc.rpartition("@")[2]
    hosts = [_host_port(item) for item in netloc.split(",") if item]
    service, _, db = parts.path.strip("/").partition("/")
    tls = parts.scheme.startswith("rediss")
    data = {**options, "ssl": True} if tls else dict(options)
    if parts.username:
        data["username"] = unquote(parts.username)
    if parts.password:
        data["password"] = unquote(parts.password)
    if db:
        data["db"] = int(db)
    # Sentinels share the TLS settings but not the data nodes' ACL user: they usually have
    # their own (or none), and a password they do not expect fails every query.
    sentinel_options = {k: v for k, v in data.items() if k not in ("username", "password", "db")}
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_options, **data)  # type: ignore[no-untyped-call]
    primary: redis.Redis = sentinel.master_for(unquote(service), health_check_interval=10)
    return primary


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [v6]:port
        host, _, rest = item[1:].partition("]")
        return host, int(rest.lstrip(":") or SENTINEL_PORT)
    host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    return host, int(port or SENTINEL_PORT)
