"""Sans-I/O HTTP/1.1 core of one connection: bytes in, requests out; responses in, bytes out.

h11 parses requests and keeps the connection's state machine honest. This class adds
the gateway's limits (head size, header count, body size) and encodes responses; it
never touches a socket, a timer or a task, which the asyncio shell (protocol.py) owns.

Input waits in the core's own buffer and reaches h11 one message at a time, cut
exactly where ``framing`` says the message ends: h11 never holds a byte of the next
request, so nothing is copied per request, and what is buffered is known exactly
(``buffered``), which is what the shell bounds while a handler runs.

Stream bodies bypass h11: one upstream event becomes one chunk and one transport
write, formatted by ``chunk()``. Only the response head and the end of the message go
through h11, so its idea of where the connection stands stays right.
"""

from __future__ import annotations

import enum
import logging
import re
import secrets
import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import urlsplit

import h11

from ..config import ServerConfig
from .cors import CorsPolicy
from .errors import ErrorRenderer, HTTPError, plain_error_body
from .framing import MALFORMED, ChunkedBody, FramingError, HeadFinder, transfer_coding_status
from .request import Request

log = logging.getLogger("ds2a.server")

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
    400: MALFORMED,
    431: "Request header fields too large",
    501: "Unsupported Transfer-Encoding (only chunked is supported)",
}
_AMBIGUOUS_LENGTH = "Malformed HTTP request: Content-Length and Transfer-Encoding together"
_HTTP10_CHUNKED = "Malformed HTTP request: Transfer-Encoding in an HTTP/1.0 request"
_BAD_TARGET = "Malformed HTTP request: invalid request target"
# A client's X-Request-Id is kept only when it cannot disturb a log line or a header.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
# A response header value: visible ASCII, spaces and tabs inside (RFC 9110 §5.5).
_HEADER_VALUE = re.compile(r"[!-~]+(?:[ \t]+[!-~]+)*|")


class Phase(enum.Enum):
    IDLE = "idle"  # between requests: nothing of the next one received
    HEAD = "head"  # part of a request head received
    BODY = "body"  # head accepted, body still arriving
    HANDLING = "handling"  # request complete, a handler owns the connection
    CLOSED = "closed"  # rejected or finished for good


class _Stage(enum.Enum):
    """What the core feeds h11 next."""

    HEAD = "head"  # a request head, up to its blank line
    LENGTH = "length"  # body bytes counted by Content-Length
    CHUNKED = "chunked"  # a chunked body, as far as it is valid
    END = "end"  # the whole message is in h11: nothing more until the next cycle


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


def new_request_id() -> str:
    return secrets.token_hex(8)


def request_id_from(headers: dict[str, str]) -> str:
    """The client's X-Request-Id when it is short and plain, else a new one."""
    given = headers.get("x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def safe_header_value(value: str) -> bytes | None:
    """``value`` as header bytes, or None when it is not fit for a response header."""
    if _HEADER_VALUE.fullmatch(value) is None:
        return None
    return value.encode("ascii")


class HTTPCore:
    __slots__ = (
        "_body",
        "_body_left",
        "_body_size",
        "_chunked",
        "_client",
        "_config",
        "_cors",
        "_finder",
        "_h11",
        "_head",
        "_headers",
        "_inbox",
        "_method",
        "_render_error",
        "_stage",
        "_target",
        "_version",
        "phase",
        "request_id",
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
        self._inbox = bytearray()
        self._finder = HeadFinder(config.max_header_bytes)
        self.phase = Phase.IDLE
        self._reset_request()

    def _reset_request(self) -> None:
        self._method = ""
        self._target = ""
        self._headers: dict[str, str] = {}
        self._version = "1.1"
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_left = 0
        self._chunked: ChunkedBody | None = None
        self._head = b""
        self._stage = _Stage.HEAD
        self.request_id = ""

    # -- input ---------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if data and self.phase is Phase.IDLE:
            self.phase = Phase.HEAD
        self._inbox += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed: pipelined requests, while a handler runs."""
        return len(self._inbox)

    def next_event(self) -> Request | Reject | Continue | NeedData:
        """The next thing the shell must act on; NEED_DATA once the buffer is used up."""
        if self.phase is Phase.CLOSED or self.phase is Phase.HANDLING:
            return NEED_DATA
        conn = self._h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                return self._protocol_error(exc)
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
            elif event is h11.NEED_DATA:
                try:
                    if not self._feed():
                        return NEED_DATA
                except FramingError as exc:
                    return self._reject(exc.status, exc.message)
            else:
                # PAUSED (a request is complete: the rest waits for the next cycle) or
                # ConnectionClosed: nothing more to do now.
                return NEED_DATA

    def _feed(self) -> bool:
        """Give h11 the next piece of the current message; False when there is none yet."""
        inbox = self._inbox
        if not inbox:
            return False
        stage = self._stage
        if stage is _Stage.HEAD:
            size = self._finder.find(inbox)
            if size is None:
                return False
        elif stage is _Stage.LENGTH:
            size = min(self._body_left, len(inbox))
            self._body_left -= size
            if not self._body_left:
                self._stage = _Stage.END
        elif stage is _Stage.CHUNKED:
            assert self._chunked is not None
            size = self._chunked.scan(inbox)
            if self._chunked.done:
                self._stage = _Stage.END
            if not size:
                return False
        else:
            return False
        if size == len(inbox):
            data = bytes(inbox)
            inbox.clear()
        else:
            data = bytes(inbox[:size])
            del inbox[:size]
        if stage is _Stage.HEAD:
            self._head = data  # kept for the rare refusal that needs a second look at it
        self._h11.receive_data(data)
        return True

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> Reject:
        status = exc.error_status_hint
        if status == 501 and self._head:
            status = transfer_coding_status(self._head)
        return self._reject(status, _PROTOCOL_ERRORS.get(status, _PROTOCOL_ERRORS[400]))

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
        self.request_id = request_id_from(headers)
        self.phase = Phase.BODY
        framing = self._body_framing(headers)
        if framing is not None:
            return framing
        expects_body = self._stage is not _Stage.END
        if expects_body and self._h11.they_are_waiting_for_100_continue:
            return Continue(self._h11.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
        return None

    def _body_framing(self, headers: dict[str, str]) -> Reject | None:
        """How the body is delimited (RFC 9112 §6.3), refusing every ambiguous case."""
        length = headers.get("content-length")  # h11 has checked it: digits, one value
        chunked = "transfer-encoding" in headers  # h11 has checked it: exactly "chunked"
        if chunked:
            if length is not None:
                return self._reject(400, _AMBIGUOUS_LENGTH)  # §6.1: an error, then close
            if self._version != "1.1":
                return self._reject(400, _HTTP10_CHUNKED)  # §6.1: faulty framing
            self._chunked = ChunkedBody(self._config.max_header_bytes)
            self._stage = _Stage.CHUNKED
        elif length is not None and int(length) > 0:
            size = int(length)
            if size > self._config.max_body_bytes:
                return self._reject(413, self._too_large_message())
            self._body_left = size
            self._stage = _Stage.LENGTH
        else:
            self._stage = _Stage.END
        return None

    def _take_body(self, data: bytes) -> Reject | None:
        self._body_size += len(data)
        if self._body_size > self._config.max_body_bytes:
            return self._reject(413, self._too_large_message())
        self._body.append(data)
        return None

    def _too_large_message(self) -> str:
        return f"Request body too large (at most {self._config.max_body_bytes} bytes)"

    def _complete_request(self) -> Request | Reject:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        try:
            path, query = split_target(self._target)
        except ValueError:  # an absolute-form target urlsplit cannot take ("http://[x/")
            return self._reject(400, _BAD_TARGET)
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
        self._inbox.clear()  # nothing after a rejected request is ever parsed
        return Reject(status, message)

    # -- cycle ---------------------------------------------------------------

    def next_cycle(self) -> bool:
        """After a complete response: True if the connection may carry another request."""
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # h11 holds nothing: it was fed this message only
            self._reset_request()
            self._finder.reset()
            self.phase = Phase.HEAD if self._inbox else Phase.IDLE
            return True
        self.phase = Phase.CLOSED
        return False

    def timeout_message(self) -> str:
        if self.phase is Phase.BODY:
            return "Request body not received in time"
        return "Request head not received in time"

    # -- output --------------------------------------------------------------

    @property
    def may_send_interim(self) -> bool:
        """A 1xx response may go out now: an HTTP/1.1 client whose response has not begun."""
        conn = self._h11
        return self._version == "1.1" and conn.our_state is h11.SEND_RESPONSE

    @property
    def head_only(self) -> bool:
        return self._method == "HEAD"

    def _extra_headers(self, headers: _RawHeaders, extra: HeaderPairs, close: bool) -> _RawHeaders:
        headers.append((b"date", http_date()))
        if self.request_id:
            headers.append((b"x-request-id", self.request_id.encode("ascii")))
        headers.extend(self._cors.headers_for(self._headers.get("origin")))
        for name, value in extra:
            raw = safe_header_value(value)
            if raw is None:
                # Never a 500 and never a header split: the field is left out instead.
                log.warning("response header %r dropped: its value is not plain ASCII text", name)
                continue
            headers.append((name.encode("ascii"), raw))
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

    def encode_error(self, status: int, message: str, code: str | None = None) -> bytes:
        """The server's own error answer, always followed by closing the connection.

        Written without h11: it may follow a parse error, which leaves h11 unable to send.
        """
        body = self._render_error(self.path if self._target else "", HTTPError(status, message, code=code))
        if not self.request_id:
            self.request_id = new_request_id()  # rejected before its head was read
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason(status)),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"date: %s\r\n" % http_date(),
            b"x-request-id: %s\r\n" % self.request_id.encode("ascii"),
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
    def client(self) -> tuple[str, int] | None:
        return self._client

    @property
    def path(self) -> str:
        try:
            return split_target(self._target)[0] if self._target else "-"
        except ValueError:
            return "-"  # a target too broken to split: rejected, and logged without it


def split_target(target: str) -> tuple[str, str]:
    """Path and query of an origin-form or absolute-form request target."""
    if not target.startswith("/") and "://" in target:
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path, query
