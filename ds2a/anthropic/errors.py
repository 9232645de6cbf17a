"""Anthropic's error envelope: ``{"type": "error", "error": {"type", "message"}}``.

The gateway has one error taxonomy (``ds2a.api.errors.ApiError``: status, message,
code, headers); this module gives it Anthropic's shape and Anthropic's statuses.
The error ``type`` follows from the status, as in Anthropic's API reference:

==========  =========================  =============================================
status      type                       raised here for
==========  =========================  =============================================
400         invalid_request_error      bad JSON or fields (also other 4xx: 405, 408, 431)
401         authentication_error       no key / not a gateway key
403         permission_error           (not raised today)
404         not_found_error            unknown model or route
413         request_too_large          body over ``server.max_body_bytes``
429         rate_limit_error           every DeepSeek account cools down after a rate limit
500         api_error                  a bug of ours
502         api_error                  the upstream failed (bad login, protocol, 5xx)
503         api_error                  no account can serve (none set up, all muted)
504         timeout_error              the upstream went silent
529         overloaded_error           every account busy and the queue full (or the wait
                                       for one expired): the one "come back soon" case
==========  =========================  =============================================

502 and 503 stay ``api_error`` rather than ``overloaded_error``: they are not
capacity problems, and retrying soon rarely helps. ``timeout_error`` is the type
Anthropic's SDKs know for 504.
"""

from __future__ import annotations

import json
import math

from ds2a.api.errors import ApiError, upstream_error
from ds2a.deepseek.errors import DeepSeekError
from ds2a.pool.errors import PoolBusy, PoolError
from ds2a.server.errors import HTTPError

OVERLOADED = 529

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (other 4xx: invalid request, other 5xx: api error)."""
    found = _TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def error_object(status: int, message: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}


def error_body(status: int, message: str) -> bytes:
    # ASCII escapes: an error is rare, and a message quoting the client's input may hold a lone surrogate.
    return json.dumps(error_object(status, message), separators=(",", ":")).encode()


def render_anthropic_error(path: str, error: HTTPError) -> bytes:
    """The server's ErrorRenderer for the Anthropic routes: any HTTPError in Anthropic's envelope."""
    return error_body(error.status, error.message)


def invalid_request(message: str) -> ApiError:
    """A 400 with Anthropic's wording: ``message`` names the field (``messages.0.content``)."""
    return ApiError(400, message, code="invalid_request_error")


def pool_error(exc: PoolError) -> ApiError:
    """The pool's refusals: busy past the queue is Anthropic's 529, the rest keep their status."""
    status = OVERLOADED if isinstance(exc, PoolBusy) else exc.status
    headers = [("retry-after", str(max(1, math.ceil(exc.retry_after))))] if exc.retry_after is not None else []
    return ApiError(status, exc.message, code=exc.code, headers=headers)


def deepseek_error(exc: DeepSeekError, *, direct: bool = False) -> ApiError:
    """An upstream failure: the OpenAI route's status and wording (one taxonomy), shown in our envelope."""
    return upstream_error(exc, direct=direct)


def stream_error_event(status: int, message: str) -> bytes:
    """The ``error`` event that ends a stream which failed after it began (200 already sent)."""
    return b"event: error\ndata: " + error_body(status, message) + b"\n\n"
