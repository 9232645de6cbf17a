"""The pool's own refusals, in its own words: no HTTP, no API dialect.

Each API dialect maps them to its status and error shape (``status`` is only a hint
of the HTTP family: 429 for "busy, come back", 503 for "cannot serve now").
"""

from __future__ import annotations


class PoolError(Exception):
    status = 503

    def __init__(self, message: str, *, code: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after = retry_after


class PoolBusy(PoolError):
    """Every account is busy and the queue is full, or the wait for one expired."""

    status = 429


class PoolResting(PoolError):
    """Every account is cooling down after a rate limit."""

    status = 429


class PoolUnavailable(PoolError):
    """No account can serve: none configured, all tried, all disabled or muted."""


class PoolClosing(PoolError):
    """The gateway is shutting down."""
