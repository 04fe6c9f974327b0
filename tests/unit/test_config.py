import dataclasses
from pathlib import Path

import pytest
import yaml

from sidecar.config import DEFAULT_STIGG_API_URL, ConfigError, Secret, _camel, load_settings

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
    for name in ("server", "stigg", "logging", "usage"):
        fields = dataclasses.fields(getattr(settings, name))
        assert set(documented[name]) == {_camel(f.name) for f in fields}, name
