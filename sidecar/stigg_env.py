"""Stigg Sidecar's own environment variables, read as they are, so its deployments move here
without renaming anything.

The names are generic (``PORT``, ``API_URL``, ``REDIS_HOST``), so they are read only when
``SERVER_API_KEY`` (or ``SERVER_API_KEY_FILE``) is set: that is what marks a Stigg Sidecar
deployment. Each maps onto this sidecar's own name; where both are set and disagree, startup
stops with one line naming both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from urllib.parse import quote, urlsplit

STIGG_DEFAULT_API_URL = "https://api.stigg.io"


def _graphql_url(value: str) -> str:
    """Stigg's API_URL is the API's base (https://api.stigg.io); ours is its GraphQL endpoint."""
    base = value.strip().rstrip("/")
    return base if base.endswith("/graphql") else base + "/graphql"


def _fallbacks(value: str) -> str:
    """Stigg's ENTITLEMENTS_FALLBACK is ours as is; the protobuf-style shape
    (``{"feature": {"metered": {...}}}``) is unwrapped."""
    try:
        raw = json.loads(value)
    except ValueError:
        raise ValueError("ENTITLEMENTS_FALLBACK: must be a JSON object") from None
    if not isinstance(raw, dict):
        raise ValueError("ENTITLEMENTS_FALLBACK: must be a JSON object of feature ids")  # noqa: TRY004 - a setting, not an argument
    unwrapped = {}
    for feature_id, spec in raw.items():
        kinds = ("boolean", "numeric", "metered", "enum")
        if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in kinds:
            spec = next(iter(spec.values()))
        unwrapped[feature_id] = spec
    return json.dumps(unwrapped)


def _same(value: str) -> str:
    return value


# Stigg's name -> (ours, how its value becomes ours).
_DIRECT: dict[str, tuple[str, Callable[[str], str]]] = {
    "SERVER_API_KEY": ("STIGG_API_KEY", _same),
    "SERVER_API_KEY_FILE": ("STIGG_API_KEY_FILE", _same),
    "API_URL": ("STIGG_API_URL", _graphql_url),
    "WS_ENABLED": ("SIDECAR_REALTIME_ENABLED", _same),
    "PORT": ("SIDECAR_GRPC_PORT", _same),
    "CACHE_MAX_SIZE_BYTES": ("SIDECAR_CACHE_MEMORY_BUDGET_BYTES", _same),
    "REDIS_ENVIRONMENT_PREFIX": ("SIDECAR_CACHE_ENVIRONMENT", _same),
    "REDIS_KEYS_TTL_IN_SECS": ("SIDECAR_CACHE_MAX_STALE_SECONDS", _same),
    "ENTITLEMENTS_FALLBACK": ("SIDECAR_ENTITLEMENTS_FALLBACK", _fallbacks),
}
# Accepted and checked, not used: checks are answered from this sidecar's cache (fed by the
# GraphQL API, not the edge), and the websocket is the API's own /graphql.
ACCEPTED_UNUSED = ("EDGE_ENABLED", "EDGE_API_URL", "WS_URL")
_REDIS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_TLS")
_TRUE = ("1", "true", "yes", "on")


def _redis_url(env: Mapping[str, str]) -> str | None:
    """``REDIS_HOST`` and friends as one ``SIDECAR_REDIS_URL`` (None without a host)."""
    host = env.get("REDIS_HOST", "").strip()
    if not host:
        stray = [name for name in _REDIS if env.get(name, "").strip()]
        if stray:
            raise ValueError(f"{stray[0]}: needs REDIS_HOST")
        return None
    port = env.get("REDIS_PORT", "6379").strip() or "6379"
    db = env.get("REDIS_DB", "0").strip() or "0"
    for name, value in (("REDIS_PORT", port), ("REDIS_DB", db)):
        if not value.isdigit():
            raise ValueError(f"{name}: expected an integer, got {value!r}")
    scheme = "rediss" if env.get("REDIS_TLS", "").strip().lower() in _TRUE else "redis"
    user = quote(env.get("REDIS_USERNAME", ""), safe="")
    password = quote(env.get("REDIS_PASSWORD", ""), safe="")
    credentials = f"{user}:{password}@" if user or password else ""
    return f"{scheme}://{credentials}{host}:{port}/{db}"


def is_stigg_sidecar_env(env: Mapping[str, str]) -> bool:
    """Whether ``env`` is a Stigg Sidecar deployment's (its API key variable is set)."""
    return bool(env.get("SERVER_API_KEY", "").strip() or env.get("SERVER_API_KEY_FILE"))


def with_stigg_sidecar_env(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with Stigg Sidecar's names translated to ours (unchanged when it is not one);
    ValueError naming the variable when one is wrong (``load_settings`` reports it)."""
    if not is_stigg_sidecar_env(env):
        return env
    translated: dict[str, str] = {}
    for stigg_name, (ours, convert) in _DIRECT.items():
        if env.get(stigg_name, "").strip():
            translated[ours] = convert(env[stigg_name])
    for name in ("PORT", "CACHE_MAX_SIZE_BYTES", "REDIS_KEYS_TTL_IN_SECS"):
        value = env.get(name, "").strip()
        if value and not value.isdigit():
            raise ValueError(f"{name}: expected an integer, got {value!r}")
    for name in ("EDGE_ENABLED", "WS_ENABLED", "REDIS_TLS"):
        value = env.get(name, "").strip().lower()
        if value and value not in (*_TRUE, "0", "false", "no", "off"):
            raise ValueError(f"{name}: expected true or false, got {env[name]!r}")
    for name in ("EDGE_API_URL", "WS_URL"):
        value = env.get(name, "").strip()
        if value and not urlsplit(value).hostname:
            raise ValueError(f"{name}: must be a URL, got {value!r}")
    redis_url = _redis_url(env)
    if redis_url is not None:
        translated["SIDECAR_REDIS_URL"] = redis_url
    sources = {ours: stigg for stigg, (ours, _) in _DIRECT.items()}
    sources["SIDECAR_REDIS_URL"] = "REDIS_HOST"
    for ours, value in translated.items():
        given = env.get(ours, "").strip()
        if given and given != value.strip():
            # Never the values: some are secrets.
            raise ValueError(f"{sources[ours]} and {ours}: both are set and disagree; set only one")
    return {**env, **translated}
