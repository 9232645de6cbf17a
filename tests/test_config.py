"""The config loader: file, environment, overrides; every mistake names its field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ds2a.config import ConfigError, load_config


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, env={})
    assert cfg.server.port == 5001 and cfg.server.host == "127.0.0.1"
    assert cfg.pool.max_inflight_per_account == 1  # DeepSeek allows one generation per account
    assert cfg.deepseek.base_url == "https://chat.deepseek.com"
    assert cfg.keys == [] and cfg.accounts == []


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, {"server": {"port": 6000, "host": "0.0.0.0"}, "pool": {"cooldown": 10}})
    cfg = load_config(
        path,
        env={"DS2A_POOL_COOLDOWN": "20", "DS2A_SERVER_CORS_ORIGINS": "https://a.example, https://b.example"},
        overrides={"server": {"port": 7000}},
    )
    assert cfg.server.port == 7000  # override beats file
    assert cfg.server.host == "0.0.0.0"  # the rest of the file's section stays
    assert cfg.pool.cooldown == 20.0  # environment beats file
    assert cfg.server.cors_origins == ["https://a.example", "https://b.example"]
    assert cfg.path == path.resolve()


def test_environment_shortcuts_and_json_values() -> None:
    cfg = load_config(
        None,
        env={
            "DS2A_HOST": "0.0.0.0",
            "DS2A_PORT": "8080",
            "DS2A_KEYS": "k1,k2",
            "DS2A_ACCOUNTS": '[{"email": "a@example.com", "password": "pw"}]',
            "DS2A_API_ALLOW_DIRECT_TOKENS": "off",
            "DS2A_DEEPSEEK_EXTRA_HEADERS": '{"x-extra": "1"}',
        },
    )
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 8080)
    assert cfg.keys == ["k1", "k2"]
    assert cfg.accounts[0].email == "a@example.com"
    assert cfg.api.allow_direct_tokens is False
    assert cfg.deepseek.extra_headers == {"x-extra": "1"}


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, {"keys": ["from-file"]})
    assert load_config(None, env={"DS2A_CONFIG": str(path)}).keys == ["from-file"]


def test_comment_keys_are_ignored(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"_comment": "hi", "pool": {"_why": "x", "min_gap": 2}}), env={})
    assert cfg.pool.min_gap == 2.0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"pool": {"cooldwn": 1}}, "pool.cooldwn"),
        ({"pool": {"cooldown": "soon"}}, "pool.cooldown"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"max_body_bytes": 0}}, "server.max_body_bytes"),
        ({"api": {"citations": "footnotes"}}, "api.citations"),
        ({"deepseek": {"base_url": "chat.deepseek.com"}}, "deepseek.base_url"),
        ({"keys": ["ok", " "]}, "keys[1]"),
        ({"keys": "one-key"}, "keys"),
        ({"accounts": [{"email": "a@example.com"}]}, "accounts[0].password"),
        ({"accounts": [{"password": "pw"}]}, "accounts[0]"),
        ({"accounts": [{"email": "a@example.com", "mobile": "1", "password": "pw"}]}, "accounts[0]"),
        ({"accounts": [{"email": "a@x.com", "password": "p"}, {"email": "a@x.com", "password": "q"}]}, "accounts[1]"),
        ({"accounts": [{"email": "a@example.com", "pasword": "pw"}]}, "accounts[0].pasword"),
        ({"api": {"models": [{"id": "m", "thinking": "yes"}]}}, "api.models[0].thinking"),
        ({"pool": {"queue_timeout": -1}}, "pool.queue_timeout"),
        ({"pool": {"max_attempts": 0}}, "pool.max_attempts"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(tmp_path: Path, data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), env={})
    assert str(info.value).startswith(field), str(info.value)


@pytest.mark.parametrize(
    ("env", "field"),
    [({"DS2A_PORT": "http"}, "DS2A_PORT"), ({"DS2A_POOL_PREPARE": "maybe"}, "DS2A_POOL_PREPARE")],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert str(info.value).startswith(field)


def test_unreadable_or_invalid_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.json", env={})
    with pytest.raises(ConfigError, match="line 1 column"):
        load_config(write(tmp_path, "{not json"), env={})
    with pytest.raises(ConfigError, match="top level must be a JSON object"):
        load_config(write(tmp_path, "[1, 2]"), env={})


def test_relative_paths_resolve_beside_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"pool": {"token_store": "state/tokens.json"}}), env={})
    assert cfg.resolve(cfg.pool.token_store) == tmp_path.resolve() / "state" / "tokens.json"


def test_account_labels_never_show_the_whole_login() -> None:
    cfg = load_config(
        None,
        env={},
        overrides={
            "accounts": [
                {"email": "someone.long@example.com", "password": "pw"},
                {"mobile": "13800001234", "password": "pw"},
                {"token": "tok-abcdefghijklmnop"},
                {"email": "x@example.com", "password": "pw", "name": "work"},
            ]
        },
    )
    labels = [a.label for a in cfg.accounts]
    assert labels[0] == "so***g@example.com"
    assert labels[1] == "138****34"
    assert labels[2] == "token:tok-***"
    assert labels[3] == "work"


@pytest.mark.parametrize(
    "var, hint",
    [
        ("DS2A_SERVER_PROT", "DS2A_SERVER_PORT"),
        ("DS2A_POOL_QUEUE_TIMOUT", "DS2A_POOL_QUEUE_TIMEOUT"),
        ("DS2A_KEY", "DS2A_KEYS"),
        ("ds2a_port", "DS2A_PORT"),
        ("DS2A_NOTHING_LIKE_IT_AT_ALL", None),
    ],
)
def test_a_mistyped_environment_variable_stops_start_up_with_a_suggestion(var: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={var: "1"})
    message = str(caught.value)
    assert message.startswith(var) and "unknown environment variable" in message
    if hint:
        assert f"did you mean {hint}?" in message
    else:
        assert "did you mean" not in message


def test_every_known_environment_variable_is_accepted() -> None:
    from ds2a.config import env_names

    assert "DS2A_SERVER_BACKLOG" in env_names() and "DS2A_CONFIG" in env_names()
    load_config(None, env={"DS2A_SERVER_BACKLOG": "10", "OTHER_DS2A_THING": "x", "PATH": "/bin"})


@pytest.mark.parametrize("level", ["info", "Debug", "WARNING", "error"])
def test_log_level_is_case_insensitive(level: str) -> None:
    assert load_config(None, env={"DS2A_SERVER_LOG_LEVEL": level}).server.log_level == level.upper()
    with pytest.raises(ConfigError, match="server.log_level"):
        load_config(None, env={"DS2A_SERVER_LOG_LEVEL": "verbose"})


def test_listen_backlog_has_a_large_default_and_must_be_positive() -> None:
    assert load_config(None, env={}).server.backlog >= 1024
    with pytest.raises(ConfigError, match="server.backlog"):
        load_config(None, env={}, overrides={"server": {"backlog": 0}})


def test_the_test_suites_own_variables_are_not_config() -> None:
    # .ci/run exports DS2A_TEST_* for the tests; gateways the tests start inherit them.
    config = load_config(None, env={"DS2A_TEST_REQUIRE_REDIS": "1", "DS2A_TEST_REDIS_URL": "redis://x"})
    assert config.redis.url == ""
    with pytest.raises(ConfigError, match="DS2A_TESTS_X"):
        load_config(None, env={"DS2A_TESTS_X": "1"})
