"""Simulator settings; the generation knobs can be changed while it runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Fields POST /_sim/config may change, with the type each must have.
RUNTIME_FIELDS: dict[str, type] = {
    "difficulty": int,
    "pow_expire_ms": int,
    "thinking_tokens": int,
    "answer_tokens": int,
    "chunk": int,
    "delay": float,
    "first_delay": float,
    "search_fragments": int,
    "open_fragments": int,
    "cite_every": int,
    "keepalive_every": int,
    "coalesce": int,
    "legacy_session_shape": bool,
    "finish_event": bool,
    "tip": bool,
    "mute_seconds": float,
    # Drift of 2026-08..10 (protocol doc §16)
    "heartbeat": float,
    "waf": str,
    "min_client_version": str,
    "clock_skew": float,
    "pow_reject_in_stream": bool,
    "new_fragments": bool,
    "device_check": bool,
    "toast_hold": float,
}
WAF_MODES = ("", "captcha", "challenge", "challenge_body", "cloudflare", "cloudflare_429", "html")


@dataclass(frozen=True, slots=True)
class SimConfig:
    # Any email/mobile logs in with this password unless `accounts` names another.
    password: str = "sim-password"
    accounts: dict[str, str] = field(default_factory=dict)  # email or mobile -> password
    tokens: tuple[str, ...] = ()  # raw Bearer tokens valid from the start, one account each
    # Real challenges say 144000; a low default keeps pure-Python solving in tests fast.
    difficulty: int = 1000
    pow_expire_ms: int = 300_000
    thinking_tokens: int = 48
    answer_tokens: int = 64
    chunk: int = 1  # tokens per text frame
    delay: float = 0.0  # seconds between frames; 0 = as fast as the socket takes them
    first_delay: float = 0.0  # seconds before the response starts
    search_fragments: int = 2  # TOOL_SEARCH fragments per searched answer
    open_fragments: int = 3  # TOOL_OPEN fragments per searched answer (thinking only)
    cite_every: int = 12  # answer tokens between [reference:N] markers
    keepalive_every: int = 64  # a ": " comment every N text frames (0 = only where captures have them)
    coalesce: int = 1  # frames per socket write when delay is 0 (1 = one chunk per event, as upstream)
    legacy_session_shape: bool = False  # chat_session/create answers biz_data.id (2025 shape)
    finish_event: bool = True  # `event: finish` (captures up to 2026-04-05; absent later)
    tip: bool = False  # append the TIP fragment before the end, as the 2026-04-29 capture does
    session_ttl: int = 259_200
    mute_seconds: float = 3600.0  # default length of a `muted` fault
    requests_kept: int = 256
    # --- drift of 2026-08..10 (protocol doc §16) ---
    # > 0: streams carry x-ds-sse-heartbeat-timeout-secs and a ": " comment whenever
    # nothing was written for half that long (§16.2).
    heartbeat: float = 0.0
    waf: str = ""  # one of WAF_MODES: every /api/v0 call is blocked by the CDN/WAF that way (§16.4)
    min_client_version: str = ""  # older x-client-version (or none) -> 40005 CLIENT_VERSION_TOO_LOW
    clock_skew: float = 0.0  # seconds the simulator's clock runs ahead of the host's (challenge expiry)
    pow_reject_in_stream: bool = True  # a rejected PoW answer is the in-stream 40301 (§16.4), else JSON 40300
    new_fragments: bool = False  # searched answers use SEARCH / TOOL_FIND / READ_LINK / FILE fragments
    banned: tuple[str, ...] = ()  # logins (email or mobile) answered biz_code 10 USER_IS_BANNED
    device_check: bool = False  # every password login answered biz_code 11 RISK_DEVICE_DETECTED
    muted_at_login: tuple[str, ...] = ()  # logins muted (mute_seconds) from their first login on
    toast_hold: float = 60.0  # after an error toast the stream stays open this long before `close`

    def __post_init__(self) -> None:
        for name in ("difficulty", "chunk", "coalesce"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("thinking_tokens", "answer_tokens", "search_fragments", "open_fragments",
                     "keepalive_every", "pow_expire_ms", "cite_every", "requests_kept"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.delay < 0 or self.first_delay < 0 or self.heartbeat < 0 or self.toast_hold < 0:
            raise ValueError("delays must be >= 0")
        if self.waf not in WAF_MODES:
            raise ValueError(f"waf must be one of {', '.join(repr(m) for m in WAF_MODES)}")

    def with_changes(self, changes: dict[str, Any]) -> SimConfig:
        """A copy with runtime-changeable fields replaced; rejects anything else."""
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            kind = RUNTIME_FIELDS.get(name)
            if kind is None:
                raise ValueError(f"{name!r} cannot be changed at runtime")
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean")
            elif kind is str:
                if not isinstance(value, str):
                    raise ValueError(f"{name} must be a string")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number")
            elif kind is int and value != int(value):
                raise ValueError(f"{name} must be an integer")
            clean[name] = kind(value)
        return dataclasses.replace(self, **clean)  # __post_init__ checks the new values

    def runtime_view(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}
