"""What can go wrong upstream, classified once so every layer reacts the same way.

The client raises ``DeepSeekError`` for envelopes, HTTP failures and transport
errors; the stream parser reports in-stream errors as events that carry the same
``ErrorKind``. The pool decides per kind (re-login, cool down, fail over) and the
API layer maps kinds to HTTP statuses.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    AUTH = "auth"  # 40001/40002/40003, HTTP 401/403: the token is bad -> log in again
    LOGIN_FAILED = "login_failed"  # wrong password, device refused (biz_code 2, 11): do not retry
    BANNED = "banned"  # biz_code 10 USER_IS_BANNED: never use the account again
    MUTED = "muted"  # biz_code 5: account restricted until mute_until
    RATE_LIMITED = "rate_limited"  # 40029, HTTP 429, hint rate_limit_reached: back off
    BUSY = "busy"  # "A message is being generated": this account is already generating
    INVALID_SESSION = "invalid_session"  # biz_code 1: make a new session
    POW = "pow"  # 40300 MISSING_HEADER, 40301 INVALID_POW_RESPONSE, or a challenge we cannot solve
    INPUT_TOO_LONG = "input_too_long"  # input_exceeds_limit / context_length_exceeded (hint or status)
    UNAVAILABLE = "unavailable"  # connection refused/reset, 5xx, generation_err
    TIMEOUT = "timeout"  # connect, first byte, idle-between-events timeout, or status TIMEOUT
    BLOCKED = "blocked"  # the CDN/WAF in front of DeepSeek refuses this host (§16.4): back off, never re-login
    PROTOCOL = "protocol"  # a body we cannot read: wrong content type, bad JSON, no terminal, too large
    UPSTREAM = "upstream"  # any other non-zero code: surfaced with its message, not retried


# Kinds where trying again on another account (before the first byte) is sensible.
RETRYABLE = frozenset(
    {
        ErrorKind.AUTH,
        ErrorKind.MUTED,
        ErrorKind.RATE_LIMITED,
        ErrorKind.BUSY,
        ErrorKind.INVALID_SESSION,
        ErrorKind.POW,
        ErrorKind.UNAVAILABLE,
        ErrorKind.TIMEOUT,
        ErrorKind.LOGIN_FAILED,
        ErrorKind.BANNED,
    }
)

AUTH_CODES = frozenset({40001, 40002, 40003})
POW_CODES = frozenset({40300, 40301})  # MISSING_HEADER, INVALID_POW_RESPONSE (§5.4, §16.4)
CLIENT_VERSION_TOO_LOW = 40005
BANNED_BIZ_CODE = 10  # USER_IS_BANNED (§16.3)
RISK_DEVICE_BIZ_CODE = 11  # RISK_DEVICE_DETECTED (§16.3)
BUSY_TEXT = "being generated"

# What the operator must do, in ds2a's words; the upstream's own text follows in parentheses.
CLIENT_TOO_OLD_MESSAGE = (
    "DeepSeek refuses this client version (40005 CLIENT_VERSION_TOO_LOW): raise deepseek.client_version "
    "(and user_agent) to the current web client's, see README 'Upstream changes and operator messages'"
)
RISK_DEVICE_MESSAGE = (
    "DeepSeek refuses password login from this device (RISK_DEVICE_DETECTED): it wants an id from its "
    "own device SDK, which ds2a does not imitate; use a token account instead (a userToken copied from "
    "a logged-in browser, see README)"
)
BANNED_MESSAGE = "DeepSeek has banned this account (USER_IS_BANNED): remove it from the config"


class DeepSeekError(Exception):
    """An upstream failure with its classification and the upstream's own words."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: int | None = None,
        biz_code: int | None = None,
        http_status: int | None = None,
        mute_until: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.biz_code = biz_code
        self.http_status = http_status
        self.mute_until = mute_until
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    def __repr__(self) -> str:
        return f"DeepSeekError({self.kind.value}, {self.message!r}, code={self.code}, biz_code={self.biz_code})"


def classify_stream_error(finish_reason: str | None, content: str | None, code: int | None = None) -> ErrorKind:
    """Kind of an in-stream error (a ``hint``/``toast`` event or a bare error frame, §7.9, §16.4)."""
    if code in POW_CODES:
        return ErrorKind.POW
    if code in AUTH_CODES:
        return ErrorKind.AUTH
    text = (content or "").lower()
    if BUSY_TEXT in text:
        return ErrorKind.BUSY
    if finish_reason == "rate_limit_reached" or "too frequent" in text or "频繁" in text:
        return ErrorKind.RATE_LIMITED
    if finish_reason in ("input_exceeds_limit", "context_length_exceeded"):
        return ErrorKind.INPUT_TOO_LONG
    if finish_reason == "generation_err" or "temporarily unavailable" in text:
        return ErrorKind.UNAVAILABLE
    return ErrorKind.UPSTREAM


def classify_envelope(code: int, biz_code: int | None, message: str, *, login: bool = False) -> ErrorKind:
    """Kind of a non-zero envelope (§2.1, §10)."""
    if code in AUTH_CODES:
        return ErrorKind.AUTH
    if code in POW_CODES:
        return ErrorKind.POW
    if code == 40029 or biz_code == 40029:
        return ErrorKind.RATE_LIMITED
    if code == 0 and biz_code is not None:
        if login and biz_code in (2, RISK_DEVICE_BIZ_CODE):
            return ErrorKind.LOGIN_FAILED
        if (login and biz_code == BANNED_BIZ_CODE) or "user_is_banned" in message.lower():
            return ErrorKind.BANNED
        if biz_code == 5 and "mute" in message.lower():
            return ErrorKind.MUTED
        if biz_code == 1 and "session" in message.lower():
            return ErrorKind.INVALID_SESSION
        if BUSY_TEXT in message.lower():
            return ErrorKind.BUSY
    return ErrorKind.UPSTREAM


def operator_message(code: int | None, biz_code: int | None, upstream: str, *, login: bool) -> str:
    """The upstream's words, led by what the operator must do where ds2a knows it."""
    if code == CLIENT_VERSION_TOO_LOW:
        return f"{CLIENT_TOO_OLD_MESSAGE} ({upstream})"
    if login and code == 0 and biz_code == RISK_DEVICE_BIZ_CODE:
        return f"{RISK_DEVICE_MESSAGE} ({upstream})"
    if login and code == 0 and biz_code == BANNED_BIZ_CODE:
        return f"{BANNED_MESSAGE} ({upstream})"
    return upstream
