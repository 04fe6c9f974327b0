import dataclasses
from pathlib import Path

import pytest
import yaml

from sidecar.config import (
    _SECTIONS,
    DEFAULT_STIGG_API_URL,
    ConfigError,
    McpSettings,
    Secret,
    _camel,
    load_settings,
)

KEY = {"STIGG_API_KEY": "server-key-abc"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return path


def test_defaults_bind_loopback_and_point_at_stigg() -> None:
    settings = load_settings(env=KEY)
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.stigg.api_url == DEFAULT_STIGG_API_URL
    assert settings.server.max_body_bytes == 1024 * 1024
    assert settings.api_key == Secret("server-key-abc")


def test_yaml_then_environment_then_cli_precedence(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "server:\n  port: 9000\n  host: 127.0.0.2\nstigg:\n  readTimeoutSeconds: 3.5\n",
    )
    env = {**KEY, "SIDECAR_SERVER_PORT": "9100", "STIGG_API_URL": "http://127.0.0.1:1/graphql"}
    settings = load_settings(config, env)
    assert settings.server.port == 9100  # environment beats YAML
    assert settings.server.host == "127.0.0.2"  # YAML beats default
    assert settings.stigg.read_timeout_seconds == 3.5
    assert settings.stigg.api_url == "http://127.0.0.1:1/graphql"
    assert load_settings(config, env, port=9200).server.port == 9200  # CLI beats environment


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path, "logging:\n  level: debug\n")
    settings = load_settings(env={**KEY, "SIDECAR_CONFIG": str(config)})
    assert settings.logging.level == "DEBUG"


@pytest.mark.parametrize(
    ("yaml_text", "env", "expected"),
    [
        ("server:\n  port: eighty\n", {}, "server.port: expected an integer"),
        ("server:\n  port: 70000\n", {}, "server.port: must be at most 65535"),
        ("server:\n  prot: 1\n", {}, "server.prot: unknown key"),
        ("servers: {}\n", {}, "servers: unknown section"),
        ("stigg:\n  readTimeoutSeconds: .nan\n", {}, "stigg.readTimeoutSeconds: expected a finite"),
        ("", {"SIDECAR_STIGG_MAX_RETRIES": "-1"}, "SIDECAR_STIGG_MAX_RETRIES: must be at least 0"),
        ("", {"STIGG_API_URL": "ftp://x"}, "STIGG_API_URL: must be a https or http URL"),
        ("", {"SIDECAR_REDIS_URL": "http://x"}, "SIDECAR_REDIS_URL: must be a redis"),
        ("logging:\n  level: LOUD\n", {}, "logging.level: must be one of"),
        ("- a\n- b\n", {}, "must be a mapping of sections"),
        ("server: [\n", {}, "not valid YAML"),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, yaml_text: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, yaml_text), {**KEY, **env})
    assert expected in str(error.value)


def test_refuses_to_start_without_api_key_unless_local() -> None:
    with pytest.raises(ConfigError, match=r"STIGG_API_KEY: not set.*--local"):
        load_settings(env={})
    assert load_settings(env={}, local_catalog=Path("config/catalog.yaml")).is_local


def test_api_key_from_mounted_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file-key\n")
    settings = load_settings(env={"STIGG_API_KEY_FILE": str(key_file)})
    assert settings.api_key is not None
    assert settings.api_key.reveal() == "from-file-key"
    with pytest.raises(ConfigError, match=r"STIGG_API_KEY_FILE: cannot read"):
        load_settings(env={"STIGG_API_KEY_FILE": str(tmp_path / "missing")})


def test_api_key_never_appears_in_reprs() -> None:
    settings = load_settings(
        env={
            "STIGG_API_KEY": "super-secret-key",
            "SIDECAR_REDIS_URL": "redis://:pw-secret@127.0.0.1:6379/0",
        }
    )
    text = repr(settings) + str(settings)
    assert "super-secret-key" not in text
    assert "pw-secret" not in text
    assert "***" in text


def test_api_key_is_not_accepted_from_the_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stigg\.apiKey: unknown key"):
        load_settings(write(tmp_path, "stigg:\n  apiKey: k\n"), KEY)


def test_example_config_loads_and_documents_every_key() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "sidecar.example.yaml"
    settings = load_settings(example, KEY)  # an unknown key would raise
    assert settings == load_settings(None, KEY)  # the example shows the defaults
    documented = yaml.safe_load(example.read_text())
    assert set(documented) == set(_SECTIONS)
    for name in _SECTIONS:
        fields = dataclasses.fields(getattr(settings, name))
        assert set(documented[name]) == {_camel(f.name) for f in fields}, name


def test_mcp_defaults_to_loopback_9090_and_can_be_switched_off(tmp_path: Path) -> None:
    assert load_settings(env=KEY).mcp == McpSettings(enabled=True, host="127.0.0.1", port=9090)
    config = write(tmp_path, "mcp:\n  enabled: false\n  port: 9191\n")
    assert load_settings(config, KEY).mcp == McpSettings(enabled=False, port=9191)
    env = {**KEY, "SIDECAR_MCP_ENABLED": "true", "SIDECAR_MCP_PORT": "9292"}
    assert load_settings(config, env).mcp == McpSettings(enabled=True, port=9292)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SIDECAR_MCP_ENABLED": "maybe"}, "SIDECAR_MCP_ENABLED: expected true or false"),
        ({"SIDECAR_MCP_PORT": "70000"}, "SIDECAR_MCP_PORT: must be at most 65535"),
        ({"SIDECAR_MCP_PORT": "8080"}, "mcp.port: must differ from server.port (both are 8080)"),
    ],
)
def test_bad_mcp_values_name_the_key(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env={**KEY, **env})
    assert expected in str(error.value)


def test_mcp_may_share_the_port_number_on_another_address() -> None:
    env = {**KEY, "SIDECAR_MCP_PORT": "8080", "SIDECAR_MCP_HOST": "127.0.0.2"}
    assert load_settings(env=env).mcp.port == 8080
    assert not load_settings(env={**KEY, "SIDECAR_MCP_ENABLED": "0"}, port=9090).mcp.enabled


def test_auth_token_from_environment_or_file(tmp_path: Path) -> None:
    assert load_settings(env=KEY).auth_token is None
    settings = load_settings(env={**KEY, "SIDECAR_AUTH_TOKEN": "tok-123"})
    assert settings.auth_token == Secret("tok-123")
    assert "tok-123" not in repr(settings)
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file\n")
    settings = load_settings(env={**KEY, "SIDECAR_AUTH_TOKEN_FILE": str(token_file)})
    assert settings.auth_token == Secret("tok-from-file")
    with pytest.raises(ConfigError, match=r"SIDECAR_AUTH_TOKEN: must not contain white space"):
        load_settings(env={**KEY, "SIDECAR_AUTH_TOKEN": "two words"})


def test_the_old_spool_prefix_is_an_alias_of_cache_environment(tmp_path: Path) -> None:
    alias = {**KEY, "SIDECAR_USAGE_REDIS_KEY_PREFIX": "staging"}
    assert load_settings(env=alias).cache.environment == "staging"
    same = {**alias, "SIDECAR_CACHE_ENVIRONMENT": "staging"}
    assert load_settings(env=same).cache.environment == "staging"
    # The old default says nothing about the environment.
    config = write(tmp_path, "usage:\n  redisKeyPrefix: stigg-sidecar\n")
    assert load_settings(config, KEY).cache.environment == "default"


def test_an_old_spool_prefix_that_disagrees_with_the_environment_stops_startup(
    tmp_path: Path,
) -> None:
    config = write(tmp_path, "cache:\n  environment: production\n")
    env = {**KEY, "SIDECAR_USAGE_REDIS_KEY_PREFIX": "staging"}
    with pytest.raises(ConfigError) as raised:
        load_settings(config, env)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("usage.redisKeyPrefix: deprecated alias of cache.environment")
    assert "keep cache.environment and remove usage.redisKeyPrefix" in message


# --- Redis: connection forms, TLS files, replica acks -----------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SIDECAR_REDIS_URL": "redis://h:6379/0"}, None),
        ({"SIDECAR_REDIS_URL": "rediss://app:pw@h:6380/0"}, None),
        ({"SIDECAR_REDIS_URL": "redis+sentinel://s1:26379,s2:26379,s3/primary/2"}, None),
        ({"SIDECAR_REDIS_URL": "rediss+sentinel://u:pw@s1,s2/primary"}, None),
        ({"SIDECAR_REDIS_URL": "redis://seed:7000", "SIDECAR_REDIS_CLUSTER": "true"}, None),
        (
            {"SIDECAR_REDIS_URL": "redis+sentinel://s1:26379"},
            "SIDECAR_REDIS_URL: a sentinel URL ends in /<service-name>[/<db number>]",
        ),
        (
            {"SIDECAR_REDIS_URL": "redis+sentinel://s1:26379/primary/zero"},
            "SIDECAR_REDIS_URL: a sentinel URL ends in /<service-name>[/<db number>]",
        ),
        (
            {"SIDECAR_REDIS_URL": "redis+sentinel://s1:port/primary"},
            "SIDECAR_REDIS_URL: a sentinel's port is not a number",
        ),
        (
            {"SIDECAR_REDIS_URL": "redis+sentinel://s1/p", "SIDECAR_REDIS_CLUSTER": "1"},
            "redis.cluster: needs a redis:// or rediss:// seed URL",
        ),
        (
            {
                "SIDECAR_REDIS_URL": "redis://seed:7000",
                "SIDECAR_REDIS_CLUSTER": "true",
                "SIDECAR_REDIS_MIN_REPLICAS_ACK": "1",
            },
            "redis.minReplicasAck: not supported with redis.cluster; set it to 0",
        ),
        (
            {"SIDECAR_REDIS_URL": "redis://h", "SIDECAR_REDIS_CA_FILE": "/etc/hosts"},
            "redis.caFile: needs a rediss:// (TLS) URL",
        ),
        (
            {"SIDECAR_REDIS_URL": "rediss://h", "SIDECAR_REDIS_CA_FILE": "/no/such/ca.pem"},
            "redis.caFile: /no/such/ca.pem is not a readable file",
        ),
        (
            {"SIDECAR_REDIS_URL": "rediss://h", "SIDECAR_REDIS_CERT_FILE": "/etc/hosts"},
            "redis.certFile: set together with redis.keyFile (mutual TLS)",
        ),
        (
            {"SIDECAR_REDIS_URL": "redis://:pw@h", "SIDECAR_REDIS_PASSWORD": "other"},
            "SIDECAR_REDIS_PASSWORD: SIDECAR_REDIS_URL carries one already; keep one",
        ),
        (
            {"SIDECAR_REDIS_URL": "redis://h", "SIDECAR_REDIS_MIN_REPLICAS_ACK": "-1"},
            "SIDECAR_REDIS_MIN_REPLICAS_ACK: must be at least 0, got -1",
        ),
    ],
)
def test_redis_connection_forms_and_their_bad_combinations(
    env: dict[str, str], expected: str | None
) -> None:
    if expected is None:
        assert load_settings(env={**KEY, **env}).redis_url is not None
        return
    with pytest.raises(ConfigError) as raised:
        load_settings(env={**KEY, **env})
    assert str(raised.value) == expected


def test_redis_errors_never_quote_the_url() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env={**KEY, "SIDECAR_REDIS_URL": "http://user:hunter2-secret@h/0"})
    assert "hunter2-secret" not in str(raised.value)


def test_redis_credentials_from_files_are_secrets(tmp_path: Path) -> None:
    (tmp_path / "user").write_text("app\n")
    (tmp_path / "password").write_text("pw-from-file\n")
    settings = load_settings(
        env={
            **KEY,
            "SIDECAR_REDIS_URL": "rediss+sentinel://s1,s2,s3/primary",
            "SIDECAR_REDIS_USERNAME_FILE": str(tmp_path / "user"),
            "SIDECAR_REDIS_PASSWORD_FILE": str(tmp_path / "password"),
            "SIDECAR_REDIS_MIN_REPLICAS_ACK": "1",
        }
    )
    assert settings.redis_username == Secret("app")
    assert settings.redis_password == Secret("pw-from-file")
    assert settings.redis.min_replicas_ack == 1
    assert "pw-from-file" not in repr(settings)
    assert settings.redis_password in settings.secrets()  # redacted from every log line
