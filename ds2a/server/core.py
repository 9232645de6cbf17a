"""Sans-I/O HTTP/1.1 core of one connection: bytes in, requests out; responses in, bytes out.

h11 parses requests and keeps the connection's state machine honest. This class adds
the gateway's limits (head size, header count, body size) and encodes responses; it
never touches a socket, a timer or a task, which the asyncio shell (protocol.py) owns.

Stream bodies bypass h11: one upstream event becomes one chunk and one transport
write, formatted by ``chunk()``. Only the response head and the end of the message go
through h11, so its idea of where the connection stands stays right.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import urlsplit

import h11

from ..config import ServerConfig
from .cors import CorsPolicy
from .errors import ErrorRenderer, HTTPError, plain_error_body
from .request import Request

HeaderPairs = Iterable[tuple[str, str]]
_RawHeaders = list[tuple[bytes, bytes]]

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS[529] = b"Overloaded"  # Anthropic's status for "every account busy"; not in HTTPStatus
_NO_BODY_STATUS = frozenset((204, 304))
_SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied responses unless told otherwise, which would batch tokens.
    (b"x-accel-buffering", b"no"),
    (b"transfer-encoding", b"chunked"),
]
# Fixed texts: h11's own messages quote the offending input, which may hold an API key.
_PROTOCOL_ERRORS = {
    400: "Malformed HTTP request",
    431: "Request header fields too large",
    501: "Unsupported Transfer-Encoding (only chunked is supported)",
}


class Phase(enum.Enum):
    IDLE = "idle"  # between requests: nothing of the next one received
    HEAD = "head"  # part of a request head received
    BODY = "body"  # head accepted, body still arriving
    HANDLING = "handling"  # request complete, a handler owns the connection
    CLOSED = "closed"  # rejected or finished for good


class Framing(enum.Enum):
    CHUNKED = "chunked"
    RAW = "raw"  # HTTP/1.0 peer: plain bytes, end of body = connection close
    NONE = "none"  # HEAD: headers only


class NeedData:
    """More bytes must arrive before anything can happen."""


NEED_DATA = NeedData()


class Reject:
    """The request breaks a limit or HTTP itself: answer ``status`` and close."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class Continue:
    """Bytes of a ``100 Continue`` to send before the client will send its body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header value, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class HTTPCore:
    __slots__ = (
        "_body",
        "_body_size",
        "_client",
        "_config",
        "_cors",
        "_h11",
        "_headers",
        "_method",
        "_render_error",
        "_target",
        "_version",
        "phase",
    )

    def __init__(
        self,
        config: ServerConfig,
        cors: CorsPolicy,
        client: tuple[str, int] | None = None,
        render_error: ErrorRenderer = plain_error_body,
    ) -> None:
        self._render_error = render_error
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self._config = config
        self._cors = cors
        self._client = client
        self.phase = Phase.IDLE
        self._reset_request()

    def _reset_request(self) -> None:
        self._method = ""
        self._target = ""
        self._headers: dict[str, str] = {}
        self._version = "1.1"
        self._body: list[bytes] = []
        self._body_size = 0

    # -- input ---------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if data and self.phase is Phase.IDLE:
            self.phase = Phase.HEAD
        self._h11.receive_data(data)

    def next_event(self) -> Request | Reject | Continue | NeedData:
        """The next thing the shell must act on; NEED_DATA once the buffer is used up."""
        if self.phase is Phase.CLOSED or self.phase is Phase.HANDLING:
            return NEED_DATA
        conn = self._h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                return self._reject(status, _PROTOCOL_ERRORS.get(status, _PROTOCOL_ERRORS[400]))
            kind = type(event)
            if kind is h11.Data:
                rejected = self._take_body(event.data)  # type: ignore[union-attr]
                if rejected is not None:
                    return rejected
            elif kind is h11.Request:
                outcome = self._take_head(event)  # type: ignore[arg-type]
                if outcome is not None:
                    return outcome
            elif kind is h11.EndOfMessage:
                return self._complete_request()
            else:
                # NEED_DATA, PAUSED (pipelined bytes wait for the next cycle) or
                # ConnectionClosed: in every case nothing more to do now.
                return NEED_DATA

    def _take_head(self, event: h11.Request) -> Reject | Continue | None:
        config = self._config
        if len(event.headers) > config.max_header_count:
            return self._reject(431, f"Too many header fields (at most {config.max_header_count})")
        headers: dict[str, str] = {}
        # h11 only bounds an incomplete head; one that arrives whole in a single read
        # must be measured here (request line + "name: value\r\n" per field).
        size = len(event.method) + len(event.target) + 14
        for raw_name, raw_value in event.headers:
            size += len(raw_name) + len(raw_value) + 4
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name in headers:
                headers[name] += ", " + value
            else:
                headers[name] = value
        if size > config.max_header_bytes:
            return self._reject(431, _PROTOCOL_ERRORS[431])
        self._method = event.method.decode("latin-1")
        self._target = event.target.decode("latin-1")
        self._headers = headers
        self._version = event.http_version.decode("latin-1")
        self.phase = Phase.BODY
        length = headers.get("content-length")
        if length is not None and int(length) > config.max_body_bytes:
            return self._reject(413, self._too_large_message())
        expects_body = "transfer-encoding" in headers or (length is not None and int(length) > 0)
        if expects_body and self._h11.they_are_waiting_for_100_continue:
            return Continue(self._h11.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
        return None

    def _take_body(self, data: bytes) -> Reject | None:
        self._body_size += len(data)
        if self._body_size > self._config.max_body_bytes:
            return self._reject(413, self._too_large_message())
        self._body.append(data)
        return None

    def _too_large_message(self) -> str:
        return f"Request body too large (at most {self._config.max_body_bytes} bytes)"

    def _complete_request(self) -> Request:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        path, query = split_target(self._target)
        self.phase = Phase.HANDLING
        return Request(
            method=self._method,
            path=path,
            query=query,
            headers=self._headers,
            body=body,
            client=self._client,
            http_version=self._version,
        )

    def _reject(self, status: int, message: str) -> Reject:
        self.phase = Phase.CLOSED
        return Reject(status, message)

    # -- cycle ---------------------------------------------------------------

    def next_cycle(self) -> bool:
        """After a complete response: True if the connection may carry another request."""
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._reset_request()
            self.phase = Phase.HEAD if conn.trailing_data[0] else Phase.IDLE
            return True
        self.phase = Phase.CLOSED
        return False

    def timeout_message(self) -> str:
        if self.phase is Phase.BODY:
            return "Request body not received in time"
        return "Request head not received in time"

    # -- output --------------------------------------------------------------

    @property
    def head_only(self) -> bool:
        return self._method == "HEAD"

    def _extra_headers(self, headers: _RawHeaders, extra: HeaderPairs, close: bool) -> _RawHeaders:
        headers.append((b"date", http_date()))
        headers.extend(self._cors.headers_for(self._headers.get("origin")))
        headers.extend((name.encode("ascii"), value.encode("ascii")) for name, value in extra)
        if close:
            headers.append((b"connection", b"close"))
        return headers

    def encode_response(
        self, status: int, body: bytes, content_type: str, extra: HeaderPairs, *, close: bool = False
    ) -> bytes:
        """A whole response with Content-Length (no body bytes for HEAD, 204, 304)."""
        conn = self._h11
        has_body = status not in _NO_BODY_STATUS
        headers: _RawHeaders = []
        if has_body:
            headers.append((b"content-type", content_type.encode("ascii")))
            headers.append((b"content-length", b"%d" % len(body)))
        self._extra_headers(headers, extra, close)
        out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
        if has_body and body and not self.head_only:
            out += conn.send(h11.Data(data=body))
        return out + conn.send(h11.EndOfMessage())

    def encode_stream_head(self, status: int, extra: HeaderPairs, *, close: bool = False) -> tuple[bytes, Framing]:
        extra = list(extra)
        given = {name.lower() for name, _ in extra}
        headers: _RawHeaders = [h for h in _SSE_HEADERS if h[0].decode() not in given]
        self._extra_headers(headers, extra, close)
        conn = self._h11
        out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
        if self.head_only or status in _NO_BODY_STATUS:
            return out, Framing.NONE
        if conn.their_http_version is None or conn.their_http_version < b"1.1":
            return out, Framing.RAW
        return out, Framing.CHUNKED

    def encode_stream_end(self) -> bytes:
        """The terminal chunk (nothing for HTTP/1.0 and HEAD, whose end is the close or the head)."""
        return self._h11.send(h11.EndOfMessage())

    def encode_error(self, status: int, message: str) -> bytes:
        """The server's own error answer, always followed by closing the connection.

        Written without h11: it may follow a parse error, which leaves h11 unable to send.
        """
        body = self._render_error(self.path if self._target else "", HTTPError(status, message))
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason(status)),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"date: %s\r\n" % http_date(),
        ]
        lines += [b"%s: %s\r\n" % pair for pair in self._cors.headers_for(self._headers.get("origin"))]
        lines.append(b"connection: close\r\n\r\n")
        if not self.head_only:
            lines.append(body)
        return b"".join(lines)

    def send_failed(self) -> None:
        self._h11.send_failed()

    @property
    def method(self) -> str:
        return self._method

    @property
    def path(self) -> str:
        return split_target(self._target)[0] if self._target else "-"


def split_target(target: str) -> tuple[str, str]:
    """Path and query of an origin-form or absolute-form request target."""
    if not target.startswith("/") and "://" in target:
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path, query
