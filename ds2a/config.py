"""Configuration: config.json, then environment variables, then command-line flags.

Every setting lives in one dataclass field below; the JSON section and field name
are the dataclass names, and each field is also read from ``DS2A_<SECTION>_<FIELD>``
(``DS2A_POOL_QUEUE_TIMEOUT=30``). Bad config stops start-up with a message that
names the field, because a gateway that half-starts is worse than one that refuses.
"""

from __future__ import annotations

import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """Config that cannot be used; the message names the offending field."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5001
    max_body_bytes: int = 8 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    header_timeout: float = 10.0  # whole request head must arrive within this
    body_timeout: float = 30.0  # whole body must arrive within this after the head
    keepalive_timeout: float = 75.0  # idle keep-alive connections are closed after this
    shutdown_grace: float = 30.0  # running streams may finish within this on SIGTERM
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    log_level: str = "INFO"  # any case
    access_log: bool = True
    backlog: int = 2048  # pending connections the kernel queues (asyncio's default, 100, drops bursts)


# The header personality: the official web client as captured in 2026-08/09 (protocol
# doc §16.2). DeepSeek bumps its version without notice; README "Upstream changes and
# operator messages" says how to update these (every header is built from them, in
# ds2a.deepseek.client.personality_headers).
WEB_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36"
)
WEB_CLIENT_VERSION = "2.5.0"


@dataclass
class DeepSeekConfig:
    base_url: str = "https://chat.deepseek.com"
    # Header personality (§2.2, §16.2); extra_headers adds or overrides any header ("" drops one).
    user_agent: str = WEB_USER_AGENT
    client_version: str = WEB_CLIENT_VERSION
    client_platform: str = "web"
    client_locale: str = "en_US"
    client_bundle_id: str = "com.deepseek.chat"
    timezone_offset: int | None = None  # seconds east of UTC; None = the host's zone
    extra_headers: dict[str, str] = field(default_factory=dict)
    model_type: str = "default"  # §12: the only type enabled since 2026-09
    connect_timeout: float = 10.0
    first_byte_timeout: float = 60.0  # request sent -> first stream event
    idle_timeout: float = 300.0  # between two stream events; long thinking is quiet
    # A stream whose head promises a heartbeat (x-ds-sse-heartbeat-timeout-secs, §16.2) is
    # dead after this many promised periods of silence, however long idle_timeout is.
    heartbeat_factor: float = 3.0
    # The CDN/WAF blocks this host (§16.4): no upstream call for block_backoff seconds,
    # doubling on each block in a row up to block_backoff_max.
    block_backoff: float = 60.0
    block_backoff_max: float = 1800.0
    request_timeout: float = 30.0  # whole non-streaming call (login, session, challenge)
    pool_limit: int = 256  # connections to the upstream, all accounts together
    delete_sessions: bool = True  # delete each chat session after its answer


@dataclass
class PoolConfig:
    max_inflight_per_account: int = 1
    queue_max: int = 256  # waiting requests; more answer 429
    queue_timeout: float = 120.0  # seconds a request may wait for an account
    min_gap: float = 0.0  # seconds between two generations on one account
    cooldown: float = 60.0  # rate-limited / token-invalid accounts rest this long
    max_attempts: int = 3  # accounts tried per request before the first byte
    failover_budget: float = 30.0  # seconds spent trying accounts before the first byte
    continue_rounds: int = 8  # automatic chat/continue rounds for INCOMPLETE answers
    prepare: bool = True  # keep a session and a solved challenge ready on idle accounts
    refresh_margin: float = 30.0  # re-solve a ready challenge this long before it expires
    token_store: str = "data/tokens.json"  # relative to the config file's folder


@dataclass
class ApiConfig:
    allow_direct_tokens: bool = True  # an unknown bearer is used as a DeepSeek user token
    citations: str = "links"  # links | numbers | remove
    prompt_template: str = "deepseek"  # deepseek | plain
    prompt_tokens: str = "estimate"  # estimate | tokenizer
    # The web chat's input limit (protocol doc §12): a longer prompt is refused with a 400
    # before any account, session or proof of work is spent on it.
    max_prompt_chars: int = 2_621_440
    # An answer longer than this (text and thoughts) is ended with an error: an upstream that
    # never stops must not grow a collected body without bound. Real answers, continuations
    # included, stay far below it; a collected answer this long takes about 40 MB.
    max_answer_chars: int = 2_000_000
    models: list[dict[str, Any]] = field(default_factory=list)  # [] = the default table


@dataclass
class AnthropicConfig:
    # Claude model names (exact, or glob patterns such as "claude-*opus*") -> a model of the
    # table; merged over the defaults in ds2a/anthropic/models.py, which they override.
    models: dict[str, str] = field(default_factory=dict)


@dataclass
class ResponsesConfig:
    """Stored responses of the Responses API (``previous_response_id``, ``GET /v1/responses/{id}``)."""

    store_max_count: int = 1000  # responses kept at most, oldest dropped first; 0 stores none
    store_max_age: float = 86400.0  # seconds a stored response stays readable
    store_max_bytes: int = 64 * 1024 * 1024  # request + response bytes kept at most, in memory


@dataclass
class RedisConfig:
    url: str = ""  # redis://host:6379/0: replicas share one account pool there; "" = in-process pool
    prefix: str = "ds2a:"  # key prefix, so deployments can share one Redis
    lease_ttl: float = 15.0  # a dead replica's accounts are free again after this long
    connect_timeout: float = 2.0  # per connection attempt; Redis unreachable -> 503 at once


@dataclass
class MetricsConfig:
    public: bool = False  # GET /metrics without a gateway key (e.g. a scraper on a private network)


@dataclass
class LogConfig:
    format: str = "text"  # text | json (one JSON object per line, with every extra field)


@dataclass
class AccountConfig:
    email: str | None = None
    mobile: str | None = None
    area_code: str | None = None
    password: str | None = None
    token: str | None = None
    name: str | None = None  # label in logs and health; defaults to the masked login

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.email:
            user, _, domain = self.email.partition("@")
            return f"{user[:2]}***{user[-1:]}@{domain}" if len(user) > 3 else f"{user[:1]}***@{domain}"
        if self.mobile:
            return f"{self.mobile[:3]}****{self.mobile[-2:]}"
        return f"token:{(self.token or '')[:4]}***"


@dataclass
class Config:
    keys: list[str] = field(default_factory=list)
    accounts: list[AccountConfig] = field(default_factory=list)
    server: ServerConfig = field(default_factory=ServerConfig)
    deepseek: DeepSeekConfig = field(default_factory=DeepSeekConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    anthropic: AnthropicConfig = field(default_factory=AnthropicConfig)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: Path | None = None  # where it was loaded from; relative paths resolve here

    def resolve(self, relative: str) -> Path:
        """A path from config, relative to the config file's folder."""
        p = Path(relative)
        if p.is_absolute():
            return p
        base = self.path.parent if self.path else Path.cwd()
        return base / p


SECTIONS = {
    "server": ServerConfig,
    "deepseek": DeepSeekConfig,
    "pool": PoolConfig,
    "api": ApiConfig,
    "anthropic": AnthropicConfig,
    "responses": ResponsesConfig,
    "redis": RedisConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}
CHOICES = {
    "api.citations": ("links", "numbers", "remove"),
    "api.prompt_template": ("deepseek", "plain"),
    "api.prompt_tokens": ("estimate", "tokenizer"),
    "server.log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "log.format": ("text", "json"),
}


def _convert(name: str, value: Any, hint: Any) -> Any:
    """Check and convert one JSON/env value against its field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(name, value, args[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_convert(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected an object, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _convert(f"{name}.{k}", v, item) for k, v in value.items()}
    if hint is Any:
        return value
    if is_dataclass(hint):
        return _build(hint, name, value)
    raise ConfigError(f"{name}: unsupported field type {hint!r}")  # pragma: no cover


def _build(cls: type, name: str, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "path"}
    unknown = [k for k in data if k not in known and not k.startswith(("_", "//"))]
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in data.items():
        if key.startswith(("_", "//")):
            continue  # comments
        kwargs[key] = _convert(f"{name}.{key}" if name else key, value, hints[key])
    return cls(**kwargs)


def _parse_env(name: str, raw: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
        origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}: expected true or false, got {raw!r}")
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
        if origin is list and typing.get_args(hint)[0] is str:
            return [part.strip() for part in raw.split(",") if part.strip()]
        return json.loads(raw)
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{name}: cannot parse {raw!r} ({exc})") from None


# Shortcuts for the settings people set most, and the one variable that is not a setting.
_ENV_SHORTCUTS = {"DS2A_HOST": ("server", "host"), "DS2A_PORT": ("server", "port")}
_ENV_OTHERS = ("DS2A_KEYS", "DS2A_ACCOUNTS", "DS2A_CONFIG")


def env_names() -> list[str]:
    """Every ``DS2A_*`` variable ds2a reads."""
    names = [f"DS2A_{section}_{f.name}".upper() for section, cls in SECTIONS.items() for f in fields(cls)]
    return names + list(_ENV_SHORTCUTS) + list(_ENV_OTHERS)


TEST_PREFIX = "DS2A_TEST_"  # the test suite's own variables (a Redis URL, caches): never config


def _check_env_names(env: typing.Mapping[str, str]) -> None:
    """A mistyped variable stops start-up, as a mistyped key in config.json does."""
    known = set(env_names())
    for var in sorted(env):
        upper = var.upper()
        if upper.startswith("DS2A_") and not upper.startswith(TEST_PREFIX) and var not in known:
            close = difflib.get_close_matches(var.upper(), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{var}: unknown environment variable{hint}; see README.md, Configuration")


def _env_overrides(env: typing.Mapping[str, str]) -> dict[str, Any]:
    """``DS2A_<SECTION>_<FIELD>`` values, shaped like config.json."""
    _check_env_names(env)
    out: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            var = f"DS2A_{section}_{f.name}".upper()
            if var in env:
                out.setdefault(section, {})[f.name] = _parse_env(var, env[var], hints[f.name])
    for var, (section, key) in _ENV_SHORTCUTS.items():
        if var in env:
            hint = typing.get_type_hints(ServerConfig)[key]
            out.setdefault(section, {})[key] = _parse_env(var, env[var], hint)
    if "DS2A_KEYS" in env:
        out["keys"] = _parse_env("DS2A_KEYS", env["DS2A_KEYS"], list[str])
    if "DS2A_ACCOUNTS" in env:
        out["accounts"] = _parse_env("DS2A_ACCOUNTS", env["DS2A_ACCOUNTS"], list[dict[str, Any]])
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key in SECTIONS:
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _validate_redis(cfg: Config) -> None:
    redis = cfg.redis
    if not redis.url:
        return
    if not redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"redis.url: must start with redis://, rediss:// or unix://, got {redis.url!r}")
    if not redis.prefix:
        raise ConfigError("redis.prefix: must not be empty (it keeps deployments apart)")
    if redis.lease_ttl < 3:
        raise ConfigError(f"redis.lease_ttl: must be at least 3 s, got {redis.lease_ttl:g}")
    if redis.connect_timeout <= 0:
        raise ConfigError("redis.connect_timeout: must be positive")
    if cfg.pool.max_inflight_per_account != 1:
        raise ConfigError("pool.max_inflight_per_account: must be 1 with a shared Redis pool (DeepSeek allows one)")


def _validate(cfg: Config) -> None:
    cfg.server.log_level = cfg.server.log_level.upper()  # "info" works as "INFO" does
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{dotted}: must be one of {', '.join(allowed)}, got {value!r}")
    positive = [
        ("server.port", cfg.server.port, 0),
        ("server.max_body_bytes", cfg.server.max_body_bytes, 1),
        ("server.max_header_bytes", cfg.server.max_header_bytes, 1),
        ("server.max_header_count", cfg.server.max_header_count, 1),
        ("server.backlog", cfg.server.backlog, 1),
        ("pool.max_inflight_per_account", cfg.pool.max_inflight_per_account, 1),
        ("pool.max_attempts", cfg.pool.max_attempts, 1),
        ("deepseek.pool_limit", cfg.deepseek.pool_limit, 1),
        ("api.max_prompt_chars", cfg.api.max_prompt_chars, 1),
        ("api.max_answer_chars", cfg.api.max_answer_chars, 1),
    ]
    for name, value, low in positive:
        if value < low:
            raise ConfigError(f"{name}: must be at least {low}, got {value}")
    if not 0 <= cfg.server.port <= 65535:
        raise ConfigError(f"server.port: must be 0-65535, got {cfg.server.port}")
    for name in ("queue_max", "continue_rounds"):
        if getattr(cfg.pool, name) < 0:
            raise ConfigError(f"pool.{name}: must not be negative")
    for name in ("queue_timeout", "min_gap", "cooldown", "failover_budget", "refresh_margin"):
        if getattr(cfg.pool, name) < 0:
            raise ConfigError(f"pool.{name}: must not be negative")
    if cfg.deepseek.heartbeat_factor < 1:
        raise ConfigError(f"deepseek.heartbeat_factor: must be at least 1, got {cfg.deepseek.heartbeat_factor}")
    if not 0 < cfg.deepseek.block_backoff <= cfg.deepseek.block_backoff_max:
        raise ConfigError("deepseek.block_backoff: must be positive and at most deepseek.block_backoff_max")
    for name in ("store_max_count", "store_max_age", "store_max_bytes"):
        if getattr(cfg.responses, name) < 0:
            raise ConfigError(f"responses.{name}: must not be negative")
    if not cfg.deepseek.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"deepseek.base_url: must start with http:// or https://, got {cfg.deepseek.base_url!r}")
    _validate_redis(cfg)
    for i, key in enumerate(cfg.keys):
        if not key.strip():
            raise ConfigError(f"keys[{i}]: empty key")
    for i, acc in enumerate(cfg.accounts):
        where = f"accounts[{i}]"
        if acc.email and acc.mobile:
            raise ConfigError(f"{where}: give email or mobile, not both")
        if not (acc.email or acc.mobile or acc.token):
            raise ConfigError(f"{where}: needs an email, a mobile or a token")
        if (acc.email or acc.mobile) and not acc.password and not acc.token:
            raise ConfigError(f"{where}.password: required to log in with {'email' if acc.email else 'mobile'}")
    from ds2a.api.models import ModelTable  # late: the model table imports ConfigError from here

    table = ModelTable.from_config(cfg.api, cfg.deepseek)  # raises ConfigError naming the api.models field
    from ds2a.anthropic.models import ClaudeModels

    ClaudeModels.from_config(cfg.anthropic, table)  # raises ConfigError naming the anthropic.models entry
    labels = [a.label for a in cfg.accounts]
    logins = [a.email or a.mobile or a.token for a in cfg.accounts]
    for i, login in enumerate(logins):
        if login in logins[:i]:
            raise ConfigError(f"accounts[{i}]: duplicate of accounts[{logins.index(login)}] ({labels[i]})")


def load_config(
    path: str | Path | None = None,
    *,
    env: typing.Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Read config.json (if any), apply environment and explicit overrides, validate."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    resolved: Path | None = None
    if path is None and "DS2A_CONFIG" in env:
        path = env["DS2A_CONFIG"]
    if path is not None:
        resolved = Path(path).resolve()
        try:
            text = resolved.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {resolved}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{resolved}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{resolved}: the top level must be a JSON object")
    data = _merge(data, _env_overrides(env))
    if overrides:
        data = _merge(data, overrides)
    cfg = _build(Config, "", data)
    cfg.path = resolved
    _validate(cfg)
    return cfg
