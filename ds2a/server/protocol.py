"""The asyncio shell around HTTPCore: one protocol instance per TCP connection.

It owns what the core must not: the transport, the phase timers, the handler task
(one at a time, so pipelined requests are answered in order) and flow control both
ways. Input is bounded: while a handler runs, pipelined bytes wait in the core and
reading pauses once they exceed ``max_header_bytes``; the next pipelined request is
taken only once the client has read enough of the answers for the transport's buffer
to drain. So one connection holds a bounded amount of memory and gets one request
per handler run, however much it sends.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, cast

from .access import AccessRecord
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

# A client's EOF before its answer has begun is ambiguous: it may have half-closed
# (shutdown(SHUT_WR) after sending; it still reads) or left for good. Only data sent to
# it tells: a socket that is gone answers with a reset. So after PROBE_DELAY (a quick
# answer needs no probe) an interim "100 Continue", which HTTP/1.1 clients must accept
# before any final response, is sent, and the socket's error state is read at each of
# PROBE_CHECKS: a reset means the client left, and its handler is cancelled then.
PROBE_DELAY = 0.2
PROBE_CHECKS = (0.05, 0.2, 1.0, 3.0)  # seconds after the probe (the reset takes a round trip)
_INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n"


def peer_reset(transport: asyncio.BaseTransport | None) -> bool:
    """The peer answered our last bytes with a reset: it closed its socket for good."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    except OSError:
        return True


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
        self._probe: asyncio.TimerHandle | None = None  # is a client that sent EOF still there?
        self._fresh = True  # no request yet: its head is due header_timeout after accept
        self._lingering = False
        self._reading_paused = False
        # Unparsed bytes allowed while a handler runs: room for the next request's head.
        # A body beyond it waits in the client's socket (TCP flow control), not in memory.
        self._input_limit = self._config.max_header_bytes
        self._peer_done = False  # the client sent EOF (it may only have half-closed)
        self._next_waits_for_writable = False  # the next pipelined request waits for the client to read
        self._head_started_at = 0.0  # time.monotonic(), for the access log
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
        core = self.core
        if core.phase is Phase.IDLE:
            self._head_started_at = time.monotonic()
        core.receive(data)
        if self._task is None and not self._next_waits_for_writable:
            self._process_input()
        if core.buffered > self._input_limit:
            self._pause_reading()

    def eof_received(self) -> bool:
        self._peer_done = True
        if self._task is not None or self._next_waits_for_writable:
            # Maybe a half-close: the answer is still written. A client that left for good
            # is noticed by the probe (answer not begun) or at the next write, which fails.
            responder = self._responder
            if responder is not None and not responder.started and self.core.may_send_interim:
                self._probe = self._loop.call_later(PROBE_DELAY, self._probe_peer)
            return True
        self.closed = True
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_probe()
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
        if self._next_waits_for_writable:
            self._next_waits_for_writable = False
            self._next_request()

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

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._peer_done:
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
        if self._lingering or self.closed:
            return
        if self._task is None and self._peer_done:
            self._close()  # the client sent EOF and no complete request is left to answer
            return
        if core.buffered <= self._input_limit:
            self._resume_reading()
        self._update_timer()

    def _dispatch(self, request: Request) -> None:
        if self._server.shutting_down:
            self._reject(503, "Server is shutting down", code="shutting_down")
            return
        assert self._transport is not None
        self._fresh = False
        record = AccessRecord(
            self.core.request_id, request.client, request.method, request.path, self._head_started_at
        )
        responder = Responder(self, self._transport, request, record)
        self._responder = responder
        task = self._loop.create_task(self._server.handler(request, responder))
        self._task = task
        self._server.track(task)
        # A done callback rather than a wrapper coroutine: it also runs for a task
        # cancelled before its first step, whose coroutine body never executes.
        task.add_done_callback(self._on_handler_done)

    def _on_handler_done(self, task: asyncio.Task[None]) -> None:
        responder = self._responder
        self._cancel_probe()
        self._task = None
        self._responder = None
        assert responder is not None
        answered = responder.finished  # before the settling below completes what the handler left
        try:
            must_close = self._settle_response(task, responder)
        except Exception:
            log.exception("could not finish the response to %s %s", responder.request.method, responder.request.path)
            self._log_access(responder, answered)
            self._abort()
            return
        self._log_access(responder, answered)
        if self.closed:
            return
        if must_close or self._server.shutting_down or not self.core.next_cycle():
            self._close()
            return
        if self.write_paused:
            # The client is not reading its answers: take no more requests until it does.
            self._next_waits_for_writable = True
            return
        self._next_request()

    def _next_request(self) -> None:
        if self.closed or self._lingering:
            return
        self._head_started_at = time.monotonic()  # pipelined bytes may already hold the next head
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

    def _reject(self, status: int, message: str, code: str | None = None) -> None:
        """Answer the server's own error, then close gently."""
        self._cancel_timer()
        if self.closed:
            return
        data = self.core.encode_error(status, message, code)
        self._log_reject(status)
        self.write(data)
        self._linger()

    def _linger(self) -> None:
        transport = self._transport
        assert transport is not None
        self._lingering = True
        if self._peer_done or not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        self._resume_reading()  # EOF from the client ends the lingering early (bytes are dropped)
        self._timer = self._loop.call_later(LINGER_SECONDS, self._abort)
        self._timer_phase = Phase.CLOSED

    def _probe_peer(self) -> None:
        self._probe = None
        responder = self._responder
        if self.closed or responder is None or responder.started:
            return  # answered (or being answered) meanwhile: its writes tell the rest
        self.write(_INTERIM)
        self._check_peer(0)

    def _check_peer(self, step: int) -> None:
        self._probe = None
        if self.closed or self._responder is None:
            return
        if step > 0 and peer_reset(self._transport):
            log.debug("client left before its answer (reset after EOF)")
            self._client_gone()
            self._abort()
            return
        if step < len(PROBE_CHECKS):
            self._probe = self._loop.call_later(PROBE_CHECKS[step], self._check_peer, step + 1)

    def _cancel_probe(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

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
        self._cancel_probe()
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _abort(self) -> None:
        self.closed = True
        self._cancel_probe()
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def force_close(self) -> None:
        """Last step of shutdown: a client that does not read cannot hold us up."""
        if not self.lost.done():
            self._abort()

    # -- access log ----------------------------------------------------------

    def _log_access(self, responder: Responder, answered: bool) -> None:
        """One line per exchange; ``answered``: the handler itself completed the response."""
        record = responder.log
        status = responder.status if responder.started else 499  # 499: client gone before an answer
        record.bytes = responder.bytes_sent
        gone = responder.disconnected.is_set() and not answered
        cut = responder.shutting_down and not answered and (status == 503 or responder.framing is not None)
        record.finish(status, gone=gone, shutdown=cut)
        if self._config.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info("%s", record.line(), extra={"access": record.as_dict()})

    def _log_reject(self, status: int) -> None:
        if not self._config.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        core = self.core
        started = self._head_started_at or time.monotonic()
        record = AccessRecord(core.request_id, core.client, core.method or "-", core.path, started)
        record.finish(status, shutdown=status == 503 and self._server.shutting_down)
        access_log.info("%s", record.line(), extra={"access": record.as_dict()})
