"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``.

Every non-stream error response of the gateway, from a malformed HTTP request
to an upstream failure, goes through ``ApiError`` so clients can rely on one shape.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence

from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool.errors import PoolError
from ds2a.server.errors import HTTPError

# Default OpenAI error type per status; a raise site may name a more precise one.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    502: "upstream_error",
    503: "upstream_error",
    504: "upstream_error",
}


class ApiError(HTTPError):
    """An error answered to the client with ``status`` and OpenAI's error body.

    Other dialects raise it too (it is the gateway's one error taxonomy: status, code,
    param, headers); each dialect's renderer gives it that dialect's envelope.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(status, message, code=code, headers=headers)
        self.type = type or openai_type(status)
        self.param = param

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False).encode()

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, code={self.code!r})"


def openai_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
    """Shortcut for layers that only need the bytes."""
    return ApiError(status, message, code=code, param=param).body()


def render_openai_error(path: str, error: HTTPError) -> bytes:
    """The server's ErrorRenderer for OpenAI routes: any HTTPError in OpenAI's shape."""
    if isinstance(error, ApiError):
        return error.body()
    return error_body(error.status, error.message, code=error.code)


def pool_error(exc: PoolError) -> ApiError:
    """The pool's own refusals (busy, exhausted, disabled, closing) as API errors."""
    headers = [("Retry-After", str(max(1, math.ceil(exc.retry_after))))] if exc.retry_after is not None else []
    return ApiError(exc.status, exc.message, code=exc.code, headers=headers)


# --- upstream failures -------------------------------------------------------------

# (status, OpenAI error type, code) per upstream error kind, when the request cannot be served.
_UPSTREAM = {
    "auth": (502, "upstream_error", "upstream_auth_failed"),
    "login_failed": (502, "upstream_error", "upstream_login_failed"),
    "banned": (503, "upstream_error", "upstream_account_banned"),
    "muted": (503, "upstream_error", "upstream_account_muted"),
    "rate_limited": (429, "rate_limit_error", "upstream_rate_limited"),
    "busy": (429, "rate_limit_error", "upstream_busy"),
    "invalid_session": (502, "upstream_error", "upstream_invalid_session"),
    "pow": (502, "upstream_error", "upstream_proof_of_work"),
    "input_too_long": (400, "invalid_request_error", "context_length_exceeded"),
    "unavailable": (502, "upstream_error", "upstream_unavailable"),
    "timeout": (504, "upstream_error", "upstream_timeout"),
    "blocked": (503, "upstream_error", "upstream_blocked"),
    "protocol": (502, "upstream_error", "upstream_protocol_error"),
    "upstream": (502, "upstream_error", "upstream_error"),
}


def upstream_error(exc: DeepSeekError, *, direct: bool = False) -> ApiError:
    """The client-facing error for an upstream failure, carrying the upstream's own words."""
    status, type_, code = _UPSTREAM[exc.kind.value]
    headers: list[tuple[str, str]] = []
    if exc.kind is ErrorKind.AUTH and direct:
        return ApiError(
            401,
            "the bearer is not one of this gateway's keys, and DeepSeek rejected it as a user token: "
            + exc.message,
            type="authentication_error",
            code="invalid_api_key",
        )
    if status in (429, 503):
        wait = exc.retry_after
        if wait is None and exc.mute_until:
            wait = exc.mute_until - time.time()
        if wait is None:
            wait = 5.0 if exc.kind is ErrorKind.BUSY else 30.0
        headers.append(("Retry-After", str(max(1, math.ceil(wait)))))
    param = "messages" if exc.kind is ErrorKind.INPUT_TOO_LONG else None
    return ApiError(status, f"DeepSeek: {exc.message}", type=type_, param=param, code=code, headers=headers)
