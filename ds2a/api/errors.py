"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``.

Every non-stream error response of the gateway, from a malformed HTTP request
to an upstream failure, goes through ``ApiError`` so clients can rely on one shape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

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


class ApiError(Exception):
    """An error answered to the client with ``status`` and OpenAI's error body."""

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
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = list(headers)

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False).encode()

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, code={self.code!r})"


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
    """Shortcut for layers that only need the bytes (the HTTP server's own 4xx answers)."""
    return ApiError(status, message, code=code, param=param).body()
