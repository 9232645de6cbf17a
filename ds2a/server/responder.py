"""How a handler answers one request: a whole response, or a stream of chunks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .access import AccessRecord
from .core import Framing, HeaderPairs, chunk
from .request import Request

if TYPE_CHECKING:
    from .protocol import HTTPConnection

# Stream states; write() tests for _CHUNKED first, the hot path.
_NOT_STARTED = 0
_CHUNKED = 1  # streaming to a live HTTP/1.1 client: the fast path of write()
_OTHER = 2  # streaming raw (HTTP/1.0), headers only (HEAD), or to a gone client
_ENDED = 3


class Responder:
    __slots__ = (
        "_conn",
        "_stream",
        "_transport",
        "bytes_sent",
        "disconnected",
        "finished",
        "framing",
        "log",
        "request",
        "shutting_down",
        "started",
        "status",
    )

    def __init__(
        self, conn: HTTPConnection, transport: asyncio.Transport, request: Request, record: AccessRecord
    ) -> None:
        self._conn = conn
        self._transport = transport
        self._stream = _NOT_STARTED
        self.request = request
        self.disconnected = asyncio.Event()
        self.shutting_down = False
        self.started = False
        self.finished = False
        self.status = 0
        self.bytes_sent = 0  # body bytes, for the access log
        self.framing: Framing | None = None
        # The access-log line of this exchange: handlers add model, account, ttft, tokens, outcome.
        self.log = record

    def send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: HeaderPairs = (),
    ) -> None:
        """The whole response at once, with Content-Length."""
        if self.started:
            raise RuntimeError("response already started")
        data = self._conn.core.encode_response(status, body, content_type, headers, close=self.shutting_down)
        self.started = True
        self.finished = True
        self.status = status
        if not self._conn.core.head_only:
            self.bytes_sent = len(body)
        self._conn.write(data)

    def start_stream(self, status: int = 200, headers: HeaderPairs = ()) -> None:
        """Send the head of a chunked text/event-stream response."""
        if self.started:
            raise RuntimeError("response already started")
        data, framing = self._conn.core.encode_stream_head(status, headers, close=self.shutting_down)
        self.started = True
        self.status = status
        self.framing = framing
        self._stream = _CHUNKED if framing is Framing.CHUNKED and not self._conn.closed else _OTHER
        self._conn.write(data)

    def write(self, data: bytes) -> None:
        """One chunk, one transport write. Empty data is skipped: it would end the body."""
        if self._stream == _CHUNKED and data:
            self.bytes_sent += len(data)
            self._transport.write(chunk(data))
        else:
            self._write_other(data)

    def _write_other(self, data: bytes) -> None:
        state = self._stream
        if state == _NOT_STARTED:
            raise RuntimeError("write() before start_stream()")
        if state == _ENDED:
            raise RuntimeError("write() after end_stream()")
        if data and self.framing is Framing.RAW and not self._conn.closed:
            self.bytes_sent += len(data)
            self._transport.write(data)

    @property
    def paused(self) -> bool:
        """The client reads slower than we write: ``drain()`` would wait."""
        return self._conn.write_paused and not self._conn.closed

    async def drain(self) -> None:
        """Wait while the client reads slower than we write; returns at once otherwise."""
        conn = self._conn
        if conn.write_paused and not conn.closed:
            await conn.wait_writable()

    def end_stream(self) -> None:
        """The terminal chunk; a second call does nothing."""
        if self._stream == _NOT_STARTED:
            raise RuntimeError("end_stream() before start_stream()")
        if self._stream == _ENDED:
            return
        self._stream = _ENDED
        self.finished = True
        data = self._conn.core.encode_stream_end()
        if data:
            self._conn.write(data)

    def mark_disconnected(self) -> None:
        if self._stream == _CHUNKED:
            self._stream = _OTHER
        self.disconnected.set()
