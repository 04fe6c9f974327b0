"""Settings: one YAML file, every key overridable by an environment variable.

The YAML keys are camelCase inside sections (``server.port``); the matching environment
variable is ``SIDECAR_<SECTION>_<KEY>`` in upper snake case (``SIDECAR_SERVER_PORT``).
A few names are fixed by the design (``STIGG_API_KEY``, ``STIGG_API_URL``,
``SIDECAR_REDIS_URL``, ``SIDECAR_DATA_DIR``). Secrets are read only from the environment or
from a mounted file (``STIGG_API_KEY_FILE``), never from the YAML file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

import yaml

from sidecar.stigg_env import with_stigg_sidecar_env

DEFAULT_STIGG_API_URL = "https://api.stigg.io/graphql"


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the key."""


class StartupError(Exception):
    """The sidecar cannot start (e.g. a port is taken); the message says why in one line."""


class Secret:
    """A string that never shows itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _meta(
    doc: str,
    *,
    env: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    parse: Callable[[str, Any], Any] | None = None,
) -> dict[str, Any]:
    return {
        "doc": doc,
        "env": env,
        "min": minimum,
        "max": maximum,
        "choices": choices,
        "parse": parse,
    }


@dataclass(frozen=True)
class ServerSettings:
    """The app-facing REST API."""

    host: str = field(default="127.0.0.1", metadata=_meta("Address the API binds to."))
    port: int = field(default=8080, metadata=_meta("API port.", minimum=0, maximum=65535))
    max_body_bytes: int = field(
        default=1024 * 1024,
        metadata=_meta("Largest accepted request body in bytes.", minimum=1024),
    )
    event_loop: str = field(
        default="uvloop",
        metadata=_meta(
            "Event loop: uvloop (faster, see bench/) or asyncio.", choices=("uvloop", "asyncio")
        ),
    )
    shutdown_timeout_seconds: float = field(
        default=20.0,
        metadata=_meta("Grace period for in-flight requests on SIGTERM.", minimum=0),
    )
    unix_socket: str = field(
        default="",
        metadata=_meta("Also serve the API on this Unix socket path (empty: no socket)."),
    )
    max_connections: int = field(
        default=4096,
        metadata=_meta("Connections the API holds at once; more TCP ones are refused.", minimum=1),
    )


@dataclass(frozen=True)
class StiggSettings:
    """The Stigg GraphQL upstream."""

    api_url: str = field(
        default=DEFAULT_STIGG_API_URL,
        metadata=_meta("Stigg GraphQL endpoint.", env="STIGG_API_URL"),
    )
    connect_timeout_seconds: float = field(
        default=2.0, metadata=_meta("TCP/TLS connect timeout.", minimum=0.001)
    )
    read_timeout_seconds: float = field(
        default=10.0, metadata=_meta("Timeout waiting for a response.", minimum=0.001)
    )
    max_retries: int = field(
        default=2, metadata=_meta("Retries of a safe-to-retry call.", minimum=0, maximum=10)
    )
    retry_backoff_seconds: float = field(
        default=0.1, metadata=_meta("Base of the jittered exponential backoff.", minimum=0)
    )
    retry_backoff_max_seconds: float = field(
        default=2.0, metadata=_meta("Cap of one backoff sleep.", minimum=0)
    )
    max_connections: int = field(
        default=100, metadata=_meta("Keep-alive pool size to Stigg.", minimum=1)
    )
    breaker_failure_threshold: int = field(
        default=5,
        metadata=_meta("Consecutive failures that open the circuit breaker.", minimum=1),
    )
    breaker_cooldown_seconds: float = field(
        default=5.0,
        metadata=_meta("How long an open breaker fails fast before probing.", minimum=0.01),
    )


@dataclass(frozen=True)
class FeatureFallback:
    """What to answer for one feature when neither Stigg nor the cache can (like Stigg's
    ``entitlementsFallback``)."""

    has_access: bool
    usage_limit: float | None = None
    value: float | None = None
    is_unlimited: bool = False
    enum_values: tuple[str, ...] | None = None


_FALLBACK_KEYS = {"hasAccess", "usageLimit", "value", "isUnlimited", "enumValues"}


def _parse_fallbacks(key: str, raw: Any) -> dict[str, FeatureFallback]:
    """``{featureId: {hasAccess, usageLimit?, value?, isUnlimited?, enumValues?}}``; from the
    environment as a JSON string."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ConfigError(f"{key}: must be a JSON object") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: must be a mapping of feature ids")
    fallbacks = {}
    for feature_id, spec in raw.items():
        where = f"{key}.{feature_id}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping")
        unknown = set(spec) - _FALLBACK_KEYS
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
        if not isinstance(spec.get("hasAccess"), bool):
            raise ConfigError(f"{where}.hasAccess: required, true or false")
        numbers = {}
        for name in ("usageLimit", "value"):
            if spec.get(name) is not None:
                numbers[name] = _coerce(f"{where}.{name}", spec[name], float, {})
        enum_values = spec.get("enumValues")
        if enum_values is not None and (
            not isinstance(enum_values, list) or not all(isinstance(v, str) for v in enum_values)
        ):
            raise ConfigError(f"{where}.enumValues: must be a list of strings")
        fallbacks[str(feature_id)] = FeatureFallback(
            has_access=spec["hasAccess"],
            usage_limit=numbers.get("usageLimit"),
            value=numbers.get("value"),
            is_unlimited=_coerce(f"{where}.isUnlimited", spec.get("isUnlimited", False), bool, {}),
            enum_values=tuple(enum_values) if enum_values is not None else None,
        )
    return fallbacks


@dataclass(frozen=True)
class CacheSettings:
    """The entitlement-state caches (L1 memory, L2 Redis when SIDECAR_REDIS_URL is set)."""

    memory_budget_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata=_meta("Approximate bytes of entitlement state kept in memory (LRU).", minimum=0),
    )
    fresh_ttl_seconds: float = field(
        default=30.0, metadata=_meta("How long fetched state is answered as is.", minimum=0.01)
    )
    max_stale_seconds: float = field(
        default=86400.0,
        metadata=_meta("How long older state may still be answered while Stigg fails.", minimum=0),
    )
    negative_ttl_seconds: float = field(
        default=5.0, metadata=_meta("How long 'customer not found' is remembered.", minimum=0)
    )
    snapshot_interval_seconds: float = field(
        default=30.0,
        metadata=_meta(
            "Write L1 to SIDECAR_DATA_DIR this often (and on stop) to warm a restart; 0: never.",
            minimum=0,
        ),
    )
    refresh_ahead_seconds: float = field(
        default=5.0,
        metadata=_meta(
            "State read this close to expiry is refreshed in the background.", minimum=0
        ),
    )
    environment: str = field(
        default="default",
        metadata=_meta("Namespace of this deployment's keys in a shared Redis."),
    )


@dataclass(frozen=True)
class EntitlementSettings:
    """Entitlement checks and their fallbacks."""

    check_deadline_seconds: float = field(
        default=0.2,
        metadata=_meta("How long a check waits for Stigg before falling back.", minimum=0.001),
    )
    default_has_access: bool = field(
        default=False,
        metadata=_meta("Last resort when nothing else can answer: deny (false) or grant."),
    )
    fallback: dict[str, FeatureFallback] = field(
        default_factory=dict,
        metadata=_meta(
            "Per-feature answers used when Stigg and the cache cannot answer.",
            parse=_parse_fallbacks,
        ),
    )


@dataclass(frozen=True)
class RealtimeSettings:
    """Live entitlement and usage updates from Stigg (graphql-transport-ws)."""

    enabled: bool = field(default=True, metadata=_meta("Subscribe to Stigg's updates."))
    reconnect_max_seconds: float = field(
        default=30.0, metadata=_meta("Cap of the reconnect backoff.", minimum=0.1)
    )
    ping_interval_seconds: float = field(
        default=15.0, metadata=_meta("Keep-alive ping interval.", minimum=1)
    )
    proxy_max_connections: int = field(
        default=256,
        metadata=_meta("Most apps' websockets proxied on GET /graphql at once.", minimum=1),
    )


@dataclass(frozen=True)
class LoggingSettings:
    """Log output."""

    level: str = field(
        default="INFO",
        metadata=_meta("Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    )
    access_log: str = field(
        default="errors",
        metadata=_meta(
            "Access log: all requests, errors (4xx/5xx and requests over 1 s) or off.",
            choices=("all", "errors", "off"),
        ),
    )


@dataclass(frozen=True)
class McpSettings:
    """The MCP server for AI agents (streamable HTTP at ``/mcp``)."""

    enabled: bool = field(default=True, metadata=_meta("Serve the MCP tools; false: no listener."))
    host: str = field(default="127.0.0.1", metadata=_meta("Address the MCP server binds to."))
    port: int = field(default=9090, metadata=_meta("MCP port.", minimum=0, maximum=65535))
    max_connections: int = field(
        default=64,
        metadata=_meta("Connections the MCP port holds at once; more are refused.", minimum=1),
    )
    idle_timeout_seconds: float = field(
        default=5.0,
        metadata=_meta("Close an MCP connection idle this long.", minimum=0.1),
    )


@dataclass(frozen=True)
class GrpcSettings:
    """Stigg Sidecar's gRPC API (``stigg.sidecar.v1.SidecarService``, h2c) for its official SDKs."""

    enabled: bool = field(default=True, metadata=_meta("Serve the gRPC API; false: no listener."))
    host: str = field(default="127.0.0.1", metadata=_meta("Address the gRPC API binds to."))
    port: int = field(default=50051, metadata=_meta("gRPC port.", minimum=0, maximum=65535))


@dataclass(frozen=True)
class ManagementSettings:
    """Probes and metrics for kubelet and Prometheus: ``/livez``, ``/readyz``, ``/metrics``."""

    enabled: bool = field(default=True, metadata=_meta("Serve the management port."))
    host: str = field(
        default="0.0.0.0",  # noqa: S104 - kubelet and Prometheus come from outside the pod
        metadata=_meta("Address the management port binds to."),
    )
    port: int = field(default=8081, metadata=_meta("Management port.", minimum=0, maximum=65535))
    max_connections: int = field(
        default=32,
        metadata=_meta(
            "Connections the management port holds at once; more are refused.", minimum=1
        ),
    )
    idle_timeout_seconds: float = field(
        default=5.0,
        metadata=_meta("Close a management connection idle this long.", minimum=0.1),
    )


@dataclass(frozen=True)
class UsageSettings:
    """The durable usage pipeline: spool, batching, rate limit and shutdown drain."""

    flush_interval_seconds: float = field(
        default=1.0,
        metadata=_meta("Send a partial batch once its oldest report waited this long.", minimum=0),
    )
    max_batch_size: int = field(
        default=100,
        metadata=_meta(
            "Usages per reportUsageBulk call (Stigg allows 100).", minimum=1, maximum=100
        ),
    )
    max_event_batch_size: int = field(
        default=1000,
        metadata=_meta("Events per reportEvent call (Stigg allows 1000).", minimum=1, maximum=1000),
    )
    calls_per_minute: int = field(
        default=600,
        metadata=_meta("reportUsageBulk calls per minute (token bucket).", minimum=1),
    )
    event_calls_per_minute: int = field(
        default=250, metadata=_meta("reportEvent calls per minute (token bucket).", minimum=1)
    )
    coalesce: bool = field(
        default=True,
        metadata=_meta("Merge DELTA reports without client keys for the same usage key."),
    )
    coalesce_window_seconds: float = field(
        default=60.0,
        metadata=_meta("Only reports whose timestamps fall in one such window merge.", minimum=1),
    )
    max_reports_per_batch: int = field(
        default=10_000,
        metadata=_meta("Most reports one (coalesced) batch may carry.", minimum=1),
    )
    max_reports_per_request: int = field(
        default=1000,
        metadata=_meta(
            "Most reports in one POST /v1/usage or /v1/events.", minimum=1, maximum=1000
        ),
    )
    spool_max_bytes: int = field(
        default=1024**3,
        metadata=_meta("Spooled report bytes before new reports get 503.", minimum=1024),
    )
    spool_max_reports: int = field(
        default=5_000_000,
        metadata=_meta("Spooled reports before new reports get 503.", minimum=1),
    )
    full_retry_after_seconds: int = field(
        default=5, metadata=_meta("Retry-After sent with 503 when the spool is full.", minimum=1)
    )
    dedupe_window_seconds: float = field(
        default=86_400.0,
        metadata=_meta("How long a client idempotency key is remembered.", minimum=1),
    )
    shutdown_deadline_seconds: float = field(
        default=20.0,
        metadata=_meta(
            "On SIGTERM, flush for at most this long; the rest stays spooled.", minimum=0
        ),
    )
    retry_backoff_seconds: float = field(
        default=0.5, metadata=_meta("Base of the full-jitter backoff of failed flushes.", minimum=0)
    )
    retry_backoff_max_seconds: float = field(
        default=30.0, metadata=_meta("Cap of one flush backoff sleep.", minimum=0)
    )
    auth_retry_seconds: float = field(
        default=60.0,
        metadata=_meta("While Stigg rejects the API key, retry flushing this often.", minimum=0.01),
    )
    sqlite_synchronous: str = field(
        default="FULL",
        metadata=_meta("SQLite spool fsync mode (FULL or NORMAL).", choices=("FULL", "NORMAL")),
    )
    redis_key_prefix: str = field(
        default="",
        metadata=_meta(
            "Deprecated alias of cache.environment (the one namespace of every Redis key)."
        ),
    )
    allow_volatile_redis: bool = field(
        default=False,
        metadata=_meta("Run the Redis spool on a Redis without AOF (a restart loses reports)."),
    )
    claim_idle_seconds: float = field(
        default=15.0,
        metadata=_meta(
            "Redis: a flushing replica silent this long is presumed dead; another claims its"
            " reports.",
            minimum=0.1,
        ),
    )


@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis (SIDECAR_REDIS_URL enables it): Cluster, TLS files, replica acks."""

    cluster: bool = field(
        default=False,
        metadata=_meta("The URL is a seed node of a Redis Cluster (redis:// or rediss://)."),
    )
    ca_file: str = field(
        default="",
        metadata=_meta("CA bundle that verifies the server (rediss://); empty: system CAs."),
    )
    cert_file: str = field(
        default="", metadata=_meta("Client certificate for mutual TLS (with keyFile).")
    )
    key_file: str = field(default="", metadata=_meta("Client certificate's private key."))
    min_replicas_ack: int = field(
        default=0,
        metadata=_meta(
            "Answer a report 202 only once this many replicas hold it (WAIT); 0: the primary.",
            minimum=0,
            maximum=16,
        ),
    )
    replica_ack_timeout_seconds: float = field(
        default=0.5,
        metadata=_meta(
            "How long WAIT waits for replicas before the report is answered 503.",
            minimum=0.001,
            maximum=10,
        ),
    )


@dataclass(frozen=True)
class Settings:
    """Everything the sidecar needs to start."""

    server: ServerSettings = field(default_factory=ServerSettings)
    stigg: StiggSettings = field(default_factory=StiggSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    entitlements: EntitlementSettings = field(default_factory=EntitlementSettings)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    mcp: McpSettings = field(default_factory=McpSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    management: ManagementSettings = field(default_factory=ManagementSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    api_key: Secret | None = None
    # Bearer token clients must send to the sidecar's API and MCP endpoint; None: no check.
    auth_token: Secret | None = None
    redis_url: Secret | None = None
    # ACL user and password, when not in the URL (SIDECAR_REDIS_USERNAME/_PASSWORD[_FILE]).
    redis_username: Secret | None = None
    redis_password: Secret | None = None
    webhook_secret: Secret | None = None
    data_dir: Path = field(
        default_factory=lambda: Path.home() / ".local" / "state" / "stigg-sidecar"
    )
    # Set by --local: path of the catalog the embedded emulator is seeded from.
    local_catalog: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.local_catalog is not None

    def secrets(self) -> tuple[Secret | None, ...]:
        """Every value logs must never show (the redactor also finds a URL's password)."""
        return (
            self.api_key,
            self.webhook_secret,
            self.auth_token,
            self.redis_url,
            self.redis_password,
        )


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "stigg": StiggSettings,
    "cache": CacheSettings,
    "entitlements": EntitlementSettings,
    "realtime": RealtimeSettings,
    "logging": LoggingSettings,
    "mcp": McpSettings,
    "grpc": GrpcSettings,
    "management": ManagementSettings,
    "usage": UsageSettings,
    "redis": RedisSettings,
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _coerce(key: str, raw: Any, typ: Any, meta: Mapping[str, Any]) -> Any:
    """Turn a YAML or environment value into ``typ``, with one clear error naming ``key``."""
    value: Any
    if meta.get("parse") is not None:
        return meta["parse"](key, raw)
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if typ in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected a number, got {raw!r}")
        try:
            value = typ(raw) if typ is float else int(str(raw).strip())
        except (TypeError, ValueError):
            kind = "an integer" if typ is int else "a number"
            raise ConfigError(f"{key}: expected {kind}, got {raw!r}") from None
        if typ is float and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {raw!r}")
        if meta.get("min") is not None and value < meta["min"]:
            raise ConfigError(f"{key}: must be at least {meta['min']}, got {value}")
        if meta.get("max") is not None and value > meta["max"]:
            raise ConfigError(f"{key}: must be at most {meta['max']}, got {value}")
        return value
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise ConfigError(f"{key}: expected a string, got {raw!r}")
    value = str(raw).strip()
    choices = meta.get("choices") or ()
    if choices:
        canonical = {choice.lower(): choice for choice in choices}
        if value.lower() not in canonical:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {raw!r}")
        value = canonical[value.lower()]
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: must be a mapping of sections")
    return loaded


def _load_section(section: str, given: Any, env: Mapping[str, str]) -> Any:
    cls = _SECTIONS[section]
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{section}: must be a mapping")
    fields = {_camel(f.name): f for f in dataclasses.fields(cls)}
    for key in given:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{section}.{key}: unknown key (known: {known})")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for yaml_key, f in fields.items():
        variable = f.metadata["env"] or f"SIDECAR_{section.upper()}_{f.name.upper()}"
        if variable in env:
            values[f.name] = _coerce(variable, env[variable], hints[f.name], f.metadata)
        elif yaml_key in given:
            values[f.name] = _coerce(
                f"{section}.{yaml_key}", given[yaml_key], hints[f.name], f.metadata
            )
    return cls(**values)


def _secret_from_env(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip()
    file_name = env.get(f"{name}_FILE", "").strip()
    if value and file_name:
        raise ConfigError(f"{name}: set either {name} or {name}_FILE, not both")
    if file_name:
        try:
            value = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {file_name} ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{name}_FILE: {file_name} is empty")
    return Secret(value) if value else None


def _check_url(key: str, url: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
        raise ConfigError(f"{key}: must be a {' or '.join(schemes)} URL, got {url!r}")


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


def _check_redis(url: str, redis: RedisSettings) -> None:
    """The URL's form and the redis section agree; errors never quote the URL (it may carry a
    password)."""
    key = "SIDECAR_REDIS_URL"
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(f"{key}: must be a {', '.join(REDIS_SCHEMES)} URL")
    sentinel = parts.scheme.endswith("+sentinel")
    if parts.scheme != "unix" and not parts.netloc.rpartition("@")[2].strip(","):
        raise ConfigError(f"{key}: names no host")
    if sentinel:
        service, _, db = parts.path.strip("/").partition("/")
        if not service or not (db == "" or db.isdigit()):
            raise ConfigError(f"{key}: a sentinel URL ends in /<service-name>[/<db number>]")
        for host in parts.netloc.rpartition("@")[2].split(","):
            port = host.rpartition("]")[2].partition(":")[2]
            if port and not port.isdigit():
                raise ConfigError(f"{key}: a sentinel's port is not a number")
    if redis.cluster and parts.scheme not in ("redis", "rediss"):
        raise ConfigError("redis.cluster: needs a redis:// or rediss:// seed URL")
    if redis.cluster and redis.min_replicas_ack > 0:
        # WAIT must follow the write on the same connection to the slot's primary, which the
        # cluster client's pipeline cannot promise across redirections.
        raise ConfigError("redis.minReplicasAck: not supported with redis.cluster; set it to 0")
    tls = parts.scheme.startswith("rediss")
    for name, value in (
        ("caFile", redis.ca_file),
        ("certFile", redis.cert_file),
        ("keyFile", redis.key_file),
    ):
        if value and not tls:
            raise ConfigError(f"redis.{name}: needs a rediss:// (TLS) URL")
        if value and not Path(value).is_file():
            raise ConfigError(f"redis.{name}: {value} is not a readable file")
    if bool(redis.cert_file) != bool(redis.key_file):
        raise ConfigError("redis.certFile: set together with redis.keyFile (mutual TLS)")


def _check_ports(
    server: ServerSettings, mcp: McpSettings, management: ManagementSettings, grpc: GrpcSettings
) -> None:
    """Two listeners on one address would fail at bind time; say so before starting."""
    wildcard = ("0.0.0.0", "::", "")  # noqa: S104 - compared against, not bound
    listeners = [("server", server.host, server.port)]
    for name, section in (("mcp", mcp), ("management", management), ("grpc", grpc)):
        if section.enabled:
            listeners.append((name, section.host, section.port))
    for index, (name, host, port) in enumerate(listeners):
        for other, other_host, other_port in listeners[:index]:
            same_host = host == other_host or host in wildcard or other_host in wildcard
            if port != 0 and port == other_port and same_host:
                raise ConfigError(f"{name}.port: must differ from {other}.port (both are {port})")


# The old default of usage.redisKeyPrefix: says nothing about the environment.
_OLD_SPOOL_PREFIX = "stigg-sidecar"


def _one_namespace(
    cache: CacheSettings, usage: UsageSettings, environment_given: bool
) -> CacheSettings:
    """cache.environment names every Redis key's namespace; the spool's old prefix setting is
    honoured only where it does not contradict it (two namespaces would split the spool)."""
    alias = usage.redis_key_prefix
    if alias in ("", _OLD_SPOOL_PREFIX) or alias == cache.environment:
        return cache
    if environment_given:
        raise ConfigError(
            f"usage.redisKeyPrefix: deprecated alias of cache.environment, and {alias!r}"
            f" disagrees with cache.environment {cache.environment!r}: keep cache.environment"
            " and remove usage.redisKeyPrefix (SIDECAR_USAGE_REDIS_KEY_PREFIX)"
        )
    return dataclasses.replace(cache, environment=alias)


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    local_catalog: Path | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Settings:
    """Build settings from (lowest to highest precedence) defaults, YAML, environment, CLI."""
    env = os.environ if env is None else env
    try:
        env = with_stigg_sidecar_env(env)  # Stigg Sidecar's own names (SERVER_API_KEY, PORT, ...)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config_file is None and env.get("SIDECAR_CONFIG"):
        config_file = Path(env["SIDECAR_CONFIG"])
    raw = _read_yaml(config_file) if config_file is not None else {}
    for section in raw:
        if section not in _SECTIONS:
            known = ", ".join(_SECTIONS)
            raise ConfigError(f"{section}: unknown section (known: {known})")
    sections = {name: _load_section(name, raw.get(name), env) for name in _SECTIONS}
    server: ServerSettings = sections["server"]
    if host is not None:
        server = dataclasses.replace(server, host=host)
    if port is not None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port: must be between 0 and 65535, got {port}")
        server = dataclasses.replace(server, port=port)
    stigg: StiggSettings = sections["stigg"]
    _check_url("STIGG_API_URL", stigg.api_url, ("https", "http"))
    api_key = _secret_from_env(env, "STIGG_API_KEY")
    if api_key is not None and re.search(r"\s", api_key.reveal()):
        raise ConfigError("STIGG_API_KEY: must not contain white space")
    redis_url = _secret_from_env(env, "SIDECAR_REDIS_URL")
    redis_settings: RedisSettings = sections["redis"]
    redis_username = _secret_from_env(env, "SIDECAR_REDIS_USERNAME")
    redis_password = _secret_from_env(env, "SIDECAR_REDIS_PASSWORD")
    if redis_url is not None:
        _check_redis(redis_url.reveal(), redis_settings)
        in_url = urlsplit(redis_url.reveal())
        for name, given, from_url in (
            ("SIDECAR_REDIS_USERNAME", redis_username, in_url.username),
            ("SIDECAR_REDIS_PASSWORD", redis_password, in_url.password),
        ):
            if given is not None and from_url:
                raise ConfigError(f"{name}: SIDECAR_REDIS_URL carries one already; keep one")
    auth_token = _secret_from_env(env, "SIDECAR_AUTH_TOKEN")
    if auth_token is not None and re.search(r"\s", auth_token.reveal()):
        raise ConfigError("SIDECAR_AUTH_TOKEN: must not contain white space")
    mcp: McpSettings = sections["mcp"]
    management: ManagementSettings = sections["management"]
    grpc: GrpcSettings = sections["grpc"]
    _check_ports(server, mcp, management, grpc)
    data_dir = Path(env["SIDECAR_DATA_DIR"]) if env.get("SIDECAR_DATA_DIR") else None
    environment_given = "SIDECAR_CACHE_ENVIRONMENT" in env or "environment" in (
        raw.get("cache") or {}
    )
    settings = Settings(
        server=server,
        stigg=stigg,
        cache=_one_namespace(sections["cache"], sections["usage"], environment_given),
        entitlements=sections["entitlements"],
        realtime=sections["realtime"],
        logging=sections["logging"],
        mcp=mcp,
        grpc=grpc,
        management=management,
        usage=sections["usage"],
        api_key=api_key,
        auth_token=auth_token,
        redis=redis_settings,
        redis_url=redis_url,
        redis_username=redis_username,
        redis_password=redis_password,
        webhook_secret=_secret_from_env(env, "SIDECAR_WEBHOOK_SECRET"),
        local_catalog=local_catalog,
        **({"data_dir": data_dir} if data_dir is not None else {}),
    )
    if not settings.is_local and settings.api_key is None:
        raise ConfigError(
            "STIGG_API_KEY: not set. Set it (or STIGG_API_KEY_FILE) to your Stigg server API key,"
            " or run with --local to use the embedded emulator"
        )
    return settings
