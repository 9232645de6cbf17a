"""The server's error seam: what a handler raises, and who turns it into a body.

The server knows HTTP, not API dialects. A handler (or the router) raises
``HTTPError``; the server answers it with ``status`` and the body made by the
``ErrorRenderer`` it was given, chosen by the application per request path, so
``/v1/messages`` can answer in Anthropic's envelope and ``/v1/chat/completions``
in OpenAI's while the server stays ignorant of both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence


class HTTPError(Exception):
    """An error answered with ``status``; dialect errors subclass it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = list(headers)


# (request path or "" when unknown, error) -> response body (JSON)
ErrorRenderer = Callable[[str, HTTPError], bytes]


def plain_error_body(path: str, error: HTTPError) -> bytes:
    """The default renderer: a small JSON object, for servers without a dialect."""
    body = {"error": {"message": error.message, "code": error.code}}
    return json.dumps(body, ensure_ascii=True).encode()
