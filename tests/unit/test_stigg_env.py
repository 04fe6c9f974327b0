"""Stigg Sidecar's own environment variables, mapped onto this sidecar's settings."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, FeatureFallback, GrpcSettings, Secret, load_settings

STIGG = {"SERVER_API_KEY": "stigg-server-key-0123"}


def test_stigg_names_map_onto_ours() -> None:
    settings = load_settings(
        env={
            **STIGG,
            "API_URL": "https://api.eu.stigg.example/",
            "PORT": "8443",
            "WS_ENABLED": "false",
            "EDGE_ENABLED": "true",
            "EDGE_API_URL": "https://edge.api.stigg.io",
            "WS_URL": "wss://api.stigg.io",
            "CACHE_MAX_SIZE_BYTES": "1048576",
            "REDIS_ENVIRONMENT_PREFIX": "production",
            "REDIS_KEYS_TTL_IN_SECS": "604800",
            "REDIS_HOST": "redis.internal",
            "REDIS_PORT": "6380",
            "REDIS_DB": "2",
            "REDIS_USERNAME": "sidecar",
            "REDIS_PASSWORD": "p@ss word",
            "REDIS_TLS": "true",
            "ENTITLEMENTS_FALLBACK": '{"feature-01-templates":{"hasAccess":true,"usageLimit":1000},'
            '"feature-02-campaigns":{"hasAccess":true,"isUnlimited":true}}',
        }
    )
    assert settings.api_key == Secret("stigg-server-key-0123")
    assert settings.stigg.api_url == "https://api.eu.stigg.example/graphql"
    assert settings.grpc.port == 8443
    assert settings.realtime.enabled is False
    assert settings.cache.memory_budget_bytes == 1048576
    assert settings.cache.environment == "production"
    assert settings.cache.max_stale_seconds == 604800
    assert settings.redis_url == Secret("rediss://sidecar:p%40ss%20word@redis.internal:6380/2")
    assert settings.entitlements.fallback == {
        "feature-01-templates": FeatureFallback(has_access=True, usage_limit=1000.0),
        "feature-02-campaigns": FeatureFallback(has_access=True, is_unlimited=True),
    }


def test_stigg_defaults_are_ours() -> None:
    settings = load_settings(env=STIGG)
    assert settings.stigg.api_url == "https://api.stigg.io/graphql"
    assert settings.grpc == GrpcSettings()
    assert settings.redis_url is None


def test_the_fallback_in_its_protobuf_shape_is_unwrapped() -> None:
    env = {**STIGG, "ENTITLEMENTS_FALLBACK": '{"f": {"metered": {"hasAccess": false}}}'}
    fallback = load_settings(env=env).entitlements.fallback
    assert fallback == {"f": FeatureFallback(has_access=False)}


def test_generic_names_are_ignored_outside_a_stigg_sidecar_deployment() -> None:
    env = {"STIGG_API_KEY": "k", "PORT": "3000", "REDIS_HOST": "elsewhere", "API_URL": "x"}
    settings = load_settings(env=env)
    assert settings.grpc.port == 50051
    assert settings.redis_url is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STIGG_API_KEY": "other"}, "SERVER_API_KEY and STIGG_API_KEY: both are set and disagree"),
        ({"PORT": "1", "SIDECAR_GRPC_PORT": "2"}, "PORT and SIDECAR_GRPC_PORT: both are set"),
        (
            {"REDIS_HOST": "a", "SIDECAR_REDIS_URL": "redis://b:6379/0"},
            "REDIS_HOST and SIDECAR_REDIS_URL: both are set and disagree",
        ),
        ({"REDIS_PORT": "6380"}, "REDIS_PORT: needs REDIS_HOST"),
        ({"REDIS_HOST": "a", "REDIS_DB": "x"}, "REDIS_DB: expected an integer"),
        ({"EDGE_ENABLED": "maybe"}, "EDGE_ENABLED: expected true or false"),
        ({"WS_URL": "nope"}, "WS_URL: must be a URL"),
        ({"ENTITLEMENTS_FALLBACK": "[1]"}, "ENTITLEMENTS_FALLBACK: must be a JSON object"),
        ({"PORT": "http"}, "PORT: expected an integer"),
    ],
)
def test_conflicts_and_bad_values_stop_startup_with_one_line(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings(env={**STIGG, **env})
    assert "\n" not in str(raised.value)
    assert "stigg-server-key" not in str(raised.value)
    assert "other" not in str(raised.value)


def test_the_same_value_under_both_names_is_no_conflict() -> None:
    env = {**STIGG, "STIGG_API_KEY": STIGG["SERVER_API_KEY"], "PORT": "9", "SIDECAR_GRPC_PORT": "9"}
    assert load_settings(env=env).grpc.port == 9


def test_grpc_port_must_differ_from_the_others() -> None:
    env = {"STIGG_API_KEY": "k", "SIDECAR_GRPC_PORT": "8080"}
    with pytest.raises(ConfigError, match=r"grpc.port: must differ from server.port"):
        load_settings(env=env)
