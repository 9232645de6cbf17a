"""The asyncio shell around HTTPCore: one protocol instance per TCP connection.

It owns what the core must not: the transport, the phase timers, the handler task
(one at a time, so pipelined requests are answered in order) and write flow control.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, cast

from .core import Continue, HTTPCore, Phase, Reject
from .errors import HTTPError
from .request import Request
from .responder import Responder

if TYPE_CHECKING:
    from .server import HTTPServer

log = logging.getLogger("ds2a.server")
access_log = logging.getLogger("ds2a.access")

# After an error answer the client may still be uploading. Closing at once would make
# the kernel reset the connection, and a reset can destroy the answer before the client
# reads it; so the answer is followed by FIN and the rest of the upload is swallowed
# for at most this long.
LINGER_SECONDS = 2.0


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Token-by-token streams must not wait for Nagle's algorithm."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a Unix socket in tests, say): nothing to tune


class HTTPConnection(asyncio.Protocol):
    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._config = server.config
        self._loop = server.loop
        self.core: HTTPCore  # made in connection_made, once the peer is known
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._responder: Responder | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_phase: Phase | None = None
        self._fresh = True  # no request yet: its head is due header_timeout after accept
        self._lingering = False
        self._reading_paused = False
        self._pending_input = 0  # bytes buffered while a handler runs (pipelining)
        self._input_limit = self._config.max_header_bytes + self._config.max_body_bytes
        self._head_started_at = 0.0
        self._writable: asyncio.Future[None] | None = None
        self.closed = False  # closing or gone: nothing more is written
        self.write_paused = False
        self.lost: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.core = HTTPCore(
            self._config,
            self._server.cors,
            (peer[0], peer[1]) if isinstance(peer, tuple) else None,
            self._server.render_error,
        )
        self._server.connection_opened(self)
        if self._server.shutting_down:
            self._close()
            return
        self._update_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering or self.closed:
            return
        if self._task is not None:
            self._buffer_while_busy(data)
            return
        if self.core.phase is Phase.IDLE:
            self._head_started_at = self._loop.time()
        self.core.receive(data)
        self._process_input()

    def eof_received(self) -> bool:
        if self._task is not None:
            self._client_gone()
        self.closed = True
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._wake_writer()
        self._client_gone()
        self._server.connection_closed(self)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    # -- flow control --------------------------------------------------------

    async def wait_writable(self) -> None:
        waiter = self._writable
        if waiter is None or waiter.done():
            waiter = self._writable = self._loop.create_future()
        await waiter

    def _wake_writer(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _buffer_while_busy(self, data: bytes) -> None:
        """Keep pipelined bytes for after the running handler, but not without bound."""
        self.core.receive(data)
        self._pending_input += len(data)
        if self._pending_input > self._input_limit and not self._reading_paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._reading_paused = True

    def _resume_reading(self) -> None:
        self._pending_input = 0
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    # -- requests ------------------------------------------------------------

    def _process_input(self) -> None:
        """Act on everything buffered, until a handler runs or more bytes are needed."""
        core = self.core
        try:
            while True:
                event = core.next_event()
                kind = type(event)
                if kind is Request:
                    self._dispatch(event)  # type: ignore[arg-type]
                    break
                if kind is Continue:
                    self.write(event.data)  # type: ignore[union-attr]
                    continue
                if kind is Reject:
                    self._reject(event.status, event.message)  # type: ignore[union-attr]
                    return
                break
        except Exception:
            log.exception("unexpected error while reading a request; connection dropped")
            self._abort()
            return
        if not self._lingering and not self.closed:
            self._update_timer()

    def _dispatch(self, request: Request) -> None:
        if self._server.shutting_down:
            self._reject(503, "Server is shutting down")
            return
        assert self._transport is not None
        self._fresh = False
        responder = Responder(self, self._transport, request, self._head_started_at)
        self._responder = responder
        task = self._loop.create_task(self._server.handler(request, responder))
        self._task = task
        self._server.track(task)
        # A done callback rather than a wrapper coroutine: it also runs for a task
        # cancelled before its first step, whose coroutine body never executes.
        task.add_done_callback(self._on_handler_done)

    def _on_handler_done(self, task: asyncio.Task[None]) -> None:
        responder = self._responder
        self._task = None
        self._responder = None
        assert responder is not None
        try:
            must_close = self._settle_response(task, responder)
        except Exception:
            log.exception("could not finish the response to %s %s", responder.request.method, responder.request.path)
            self._log_access(responder)
            self._abort()
            return
        self._log_access(responder)
        if self.closed:
            return
        if must_close or self._server.shutting_down or not self.core.next_cycle():
            self._close()
            return
        self._resume_reading()
        self._head_started_at = self._loop.time()  # pipelined bytes may already hold the next head
        self._process_input()

    def _error_body(self, path: str, status: int, message: str, code: str | None = None) -> bytes:
        return self._server.render_error(path, HTTPError(status, message, code=code))

    def _settle_response(self, task: asyncio.Task[None], responder: Responder) -> bool:
        """Make the response complete whatever the handler did; True to close afterwards."""
        request = responder.request
        must_close = False
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            must_close = responder.started
            if isinstance(exc, HTTPError):
                if responder.started:
                    log.warning("%s %s: error after the response started: %r", request.method, request.path, exc)
                elif not self.closed:
                    responder.send(exc.status, self._server.render_error(request.path, exc), headers=exc.headers)
            else:
                log.error("%s %s: handler failed", request.method, request.path, exc_info=exc)
                if not responder.started and not self.closed:
                    responder.send(500, self._error_body(request.path, 500, "Internal server error"))
        elif not responder.started and not self.closed:
            if responder.shutting_down:
                responder.send(503, self._error_body(request.path, 503, "Server is shutting down", "shutting_down"))
            else:
                log.error("%s %s: handler returned without a response", request.method, request.path)
                responder.send(500, self._error_body(request.path, 500, "Internal server error"))
        if responder.started and not responder.finished:
            # Cut by an error or the shutdown: still end the body properly.
            must_close = must_close or task.cancelled() or responder.shutting_down
            responder.end_stream()
        return must_close

    def _reject(self, status: int, message: str) -> None:
        """Answer the server's own error, then close gently."""
        self._cancel_timer()
        if self.closed:
            return
        self._log_reject(status)
        self.write(self.core.encode_error(status, message))
        self._linger()

    def _linger(self) -> None:
        transport = self._transport
        assert transport is not None
        self._lingering = True
        if not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        self._resume_reading()  # EOF from the client ends the lingering early
        self._timer = self._loop.call_later(LINGER_SECONDS, self._abort)
        self._timer_phase = Phase.CLOSED

    def _client_gone(self) -> None:
        """The client left: its handler stops now, so cleanup (upstream, account) runs at once."""
        responder = self._responder
        if responder is None or responder.disconnected.is_set():
            return
        responder.mark_disconnected()
        task = self._task
        if task is not None and not task.done():
            task.cancel("client disconnected")

    # -- timers --------------------------------------------------------------

    def _update_timer(self) -> None:
        phase = self.core.phase
        if phase is self._timer_phase:
            return
        if self._fresh and phase is Phase.HEAD and self._timer_phase is Phase.IDLE:
            self._timer_phase = phase  # the first head's deadline counts from accept
            return
        self._cancel_timer()
        self._timer_phase = phase
        timeout = self._timeout_for(phase)
        if timeout is not None:
            self._timer = self._loop.call_later(timeout, self._on_timeout)

    def _timeout_for(self, phase: Phase) -> float | None:
        config = self._config
        if phase is Phase.IDLE:
            return config.header_timeout if self._fresh else config.keepalive_timeout
        if phase is Phase.HEAD:
            return config.header_timeout
        if phase is Phase.BODY:
            return config.body_timeout
        return None

    def _on_timeout(self) -> None:
        self._timer = None
        phase = self.core.phase
        if phase is Phase.IDLE:
            self._close()  # nothing was asked, so nothing is answered
        elif phase is Phase.HEAD or phase is Phase.BODY:
            self._reject(408, self.core.timeout_message())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_phase = None

    # -- output and closing --------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            assert self._transport is not None
            self._transport.write(data)

    def begin_shutdown(self) -> None:
        """Idle connections close now; a running handler is told and may finish."""
        if self._responder is not None:
            self._responder.shutting_down = True
        elif not self._lingering:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _abort(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def force_close(self) -> None:
        """Last step of shutdown: a client that does not read cannot hold us up."""
        if not self.lost.done():
            self._abort()

    # -- access log ----------------------------------------------------------

    def _log_access(self, responder: Responder) -> None:
        if not self._config.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        request = responder.request
        status = responder.status if responder.started else 499  # 499: client gone before an answer
        elapsed = (self._loop.time() - responder.started_at) * 1000.0
        access_log.info("%s %s %d %d %.1fms", request.method, request.path, status, responder.bytes_sent, elapsed)

    def _log_reject(self, status: int) -> None:
        if not self._config.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        core = self.core
        elapsed = (self._loop.time() - self._head_started_at) * 1000.0 if self._head_started_at else 0.0
        access_log.info("%s %s %d 0 %.1fms", core.method or "-", core.path, status, elapsed)
