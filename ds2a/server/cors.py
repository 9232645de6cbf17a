"""Which CORS headers a response carries, decided once per response from its Origin.

Browser front-ends call the gateway with a bearer key, never cookies, so credentials
are never allowed and "*" is a safe default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Header = tuple[bytes, bytes]

_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
MAX_REQUESTED_HEADERS = 64

_ALLOW_ORIGIN = b"access-control-allow-origin"
# A browser client must see Retry-After to back off on 429, and X-Request-Id to report
# a problem with the request's log line; nothing else is exposed.
_EXPOSE = (b"access-control-expose-headers", b"Retry-After, X-Request-Id")
_VARY = (b"vary", b"Origin")


class CorsPolicy:
    """``["*"]`` allows any origin; an explicit list echoes a matching Origin; ``[]`` disables CORS."""

    __slots__ = ("_any_headers", "_miss_headers", "_origins", "_wildcard")

    def __init__(self, origins: Sequence[str]) -> None:
        self._wildcard = "*" in origins
        self._origins = frozenset(o.rstrip("/") for o in origins if o != "*")
        # Prebuilt: these lists are appended to every response.
        self._any_headers: list[Header] = [(_ALLOW_ORIGIN, b"*"), _EXPOSE]
        # An explicit list makes the answer depend on Origin, so caches must key on it.
        self._miss_headers: list[Header] = [_VARY] if self._origins else []

    @property
    def enabled(self) -> bool:
        return self._wildcard or bool(self._origins)

    def headers_for(self, origin: str | None) -> list[Header]:
        if self._wildcard:
            return self._any_headers
        if origin is not None and origin in self._origins:
            return [(_ALLOW_ORIGIN, origin.encode("latin-1")), _EXPOSE, _VARY]
        return self._miss_headers


def allowed_request_headers(requested: str) -> str:
    """The preflight's Access-Control-Request-Headers, echoed only as valid field names.

    A browser lists plain header names; anything else (non-ASCII, control characters,
    an endless list) is dropped rather than copied into the response, and the browser
    then refuses the request the page wanted to send, as it should.
    """
    names: dict[str, str] = {}  # lower-case name -> as the browser spelt it
    for item in requested.split(",", MAX_REQUESTED_HEADERS)[:MAX_REQUESTED_HEADERS]:
        name = item.strip()
        if _FIELD_NAME.fullmatch(name):
            names.setdefault(name.lower(), name)
    return ", ".join(names.values())
