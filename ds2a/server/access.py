"""One access-log record per exchange: what the server knows, plus what handlers add.

The server fills the HTTP side (request id, client, method, path, status, duration)
and decides the outcome it can see itself (the client left, the shutdown cut the
answer, the request was refused). A handler fills what only it knows, on
``responder.log``: the model, the (masked) account, when the first token left, how
many tokens, and an outcome such as ``upstream_error``. The server writes the line
once the exchange has ended; ``as_dict()`` serves a structured (JSON) formatter.
"""

from __future__ import annotations

import time
from typing import Any

# Outcomes. A handler may set any of them; the server derives the rest from the status.
OK = "ok"
CLIENT_GONE = "client_gone"  # the client left before the answer was complete
SHUTDOWN = "shutdown"  # the gateway's shutdown refused or cut the answer
BAD_REQUEST = "bad_request"  # the client's request was refused (4xx)
BUSY = "busy"  # no capacity: 429
UPSTREAM_ERROR = "upstream_error"  # DeepSeek failed (before or during the answer)
UNAVAILABLE = "unavailable"  # no account could serve (none configured, all resting or disabled)
ERROR = "error"  # a bug of the gateway's own (500)

_MAX_FIELD = 200  # characters of a client-chosen string kept in a log line


class AccessRecord:
    __slots__ = (
        "account",
        "bytes",
        "client",
        "duration",
        "method",
        "model",
        "outcome",
        "path",
        "request_id",
        "started",
        "status",
        "tokens",
        "ttft",
    )

    def __init__(
        self, request_id: str, client: tuple[str, int] | None, method: str, path: str, started: float
    ) -> None:
        self.request_id = request_id
        self.client = f"{client[0]}:{client[1]}" if client else "-"
        self.method = method
        self.path = path
        self.started = started  # time.monotonic() when the request head began to arrive
        self.status = 0
        self.bytes = 0  # response body bytes written
        self.duration: float | None = None  # seconds, set when the exchange ends
        self.outcome: str | None = None  # None: the server derives it from what it saw
        self.model: str | None = None
        self.account: str | None = None  # a masked label, never a login or a token
        self.ttft: float | None = None  # seconds from the request head to the first answer token
        self.tokens: int | None = None  # completion tokens

    def first_token(self) -> None:
        """Mark now as the moment the first token of the answer was ready (once)."""
        if self.ttft is None:
            self.ttft = time.monotonic() - self.started

    def finish(self, status: int, *, gone: bool = False, shutdown: bool = False) -> None:
        """The exchange ended with ``status``; settle the outcome unless a handler did."""
        self.status = status
        self.duration = time.monotonic() - self.started
        if gone:
            self.outcome = CLIENT_GONE  # overrides: the client never saw the whole answer
        elif shutdown:
            self.outcome = SHUTDOWN
        elif self.outcome is None:
            self.outcome = outcome_for(status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome,
            "bytes": self.bytes,
            "model": self.model,
            "account": self.account,
            "ttft_ms": _ms(self.ttft),
            "tokens": self.tokens,
            "duration_ms": _ms(self.duration),
        }

    def line(self) -> str:
        """The text form: fixed fields first, then key=value pairs; client strings escaped."""
        ttft = "-" if self.ttft is None else f"{self.ttft * 1000:.0f}ms"
        duration = 0.0 if self.duration is None else self.duration * 1000
        return (
            f"{self.request_id} {self.client} {printable(self.method)} {printable(self.path)} "
            f"{self.status} {self.outcome} {self.bytes} {duration:.1f}ms model={printable(self.model or '-')} "
            f"account={printable(self.account or '-')} ttft={ttft} tokens={'-' if self.tokens is None else self.tokens}"
        )


def outcome_for(status: int) -> str:
    if status < 400:
        return OK
    if status == 429:
        return BUSY
    if status < 500:
        return BAD_REQUEST
    if status == 500:
        return ERROR
    return UPSTREAM_ERROR


def printable(text: str) -> str:
    """``text`` safe for one log line: no control characters, no spaces, bounded."""
    if len(text) > _MAX_FIELD:
        text = text[:_MAX_FIELD] + "..."
    if text.isascii() and text.isprintable() and " " not in text:
        return text
    return "".join(c if c.isprintable() and c != " " else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
