"""Issue 8, the HTTP server under attack, over real loopback sockets: pipelined floods
stay bounded and do not starve others, every framing ambiguity (RFC 9112 §5-§7) is
an error that closes the connection, and no client-supplied header value reaches a
response unchecked. Each attack is answered with a 4xx JSON error, never a 500, and
never logged above WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from ds2a.server import Request, Responder, Router
from test_server import Spy, app, connect, error_shape, get, read_eof, read_reply, serving, wait_until, within

# -- helpers -------------------------------------------------------------------------


def held(server: Any) -> int:
    """Unparsed request bytes the server holds for all its connections, wherever it keeps
    them (h11's buffer, the core's own), so the figure means the same before and after."""
    total = 0
    for conn in server._connections:
        core = conn.core
        total += len(core._h11.trailing_data[0]) + getattr(core, "buffered", 0)
    return total


class Sampler:
    """Samples a figure on the server's loop every few milliseconds; keeps the maximum."""

    def __init__(self, measure: Any) -> None:
        self.measure = measure
        self.peak = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.measure())
            await asyncio.sleep(0.002)

    def stop(self) -> int:
        self.task.cancel()
        return self.peak


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


async def only_answer_then_close(port: int, payload: bytes, status: int) -> dict[str, Any]:
    """``payload`` (a bad request, then a good pipelined one) gets one answer: ``status``,
    ``Connection: close``, the end of the connection. The pipelined request is never served."""
    reader, writer = await connect(port)
    writer.write(payload + get("/json"))
    reply = await read_reply(reader)
    assert reply.status == status, reply.raw
    assert reply.header("connection") == "close"
    assert await read_eof(reader) == b"", "a request after a framing error was served"
    writer.close()
    return error_shape(reply)


# -- defect 1: pipelined input is bounded ---------------------------------------------------


async def test_pipelined_bodies_are_not_buffered_while_a_handler_runs(caplog: pytest.LogCaptureFixture) -> None:
    """A client pipelines megabytes of requests behind a slow one: the server holds at
    most about one head's worth (plus one socket read), not everything the client sends."""
    release = asyncio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        await release.wait()
        responder.send(200, b"{}")

    body = b"x" * 60_000
    request = get("/", f"Content-Length: {len(body)}", method="POST") + body
    async with serving(handler, max_header_bytes=4096) as (server, port):
        sampler = Sampler(lambda: held(server))
        client = BlockingClient(port)
        flood = asyncio.create_task(asyncio.to_thread(client.sock.sendall, request * 80))  # 4.8 MB
        await wait_until(lambda: bool(server._tasks))
        await wait_until(lambda: any(c._reading_paused for c in server._connections))
        await asyncio.sleep(0.2)  # the flood keeps pressing
        assert not flood.done(), "the server took everything the client sent"
        release.set()
        assert await asyncio.to_thread(client.count_answers, 80) == 80
        await within(flood)
        peak = sampler.stop()
        client.sock.close()
    # One socket read (up to 256 KiB with uvloop) on top of the 4 KiB limit, never megabytes.
    assert peak < 512 * 1024, peak
    no_errors_logged(caplog)


class BlockingClient:
    """A plain socket driven from threads, so sending and reading can block independently."""

    def __init__(self, port: int, *, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))

    def count_answers(self, want: int) -> int:
        received = bytearray()
        while received.count(b"HTTP/1.1 200 OK") < want:
            data = self.sock.recv(1 << 16)
            if not data:
                break
            received += data
        return received.count(b"HTTP/1.1 200 OK")


async def test_pipelined_flood_of_small_requests_stays_bounded_and_answered_in_order() -> None:
    """20,000 pipelined requests in one write, answers read as they come: all answered,
    in order, with the unparsed input never above one read's worth."""
    count = 20_000
    async with serving(app(), max_header_bytes=4096) as (server, port):
        sampler = Sampler(lambda: held(server))
        reader, writer = await connect(port)
        writer.write(b"".join(get(f"/items/{i}") for i in range(count)))
        for i in range(count):
            reply = await read_reply(reader)
            assert reply.status == 200 and reply.json()["params"] == {"item": str(i)}
        peak = sampler.stop()
        writer.close()
    assert peak < 512 * 1024, peak


async def test_a_client_that_does_not_read_its_answers_gets_no_more_of_them() -> None:
    """Pipelined requests from a client that never reads: answers stop once the transport's
    buffer is full, instead of piling up in memory without end; others are still served."""
    count = 50_000
    async with serving(app(), max_header_bytes=4096) as (server, port):

        def write_buffer() -> int:
            return sum(c._transport.get_write_buffer_size() for c in server._connections if c._transport)

        sampler = Sampler(write_buffer)
        client = BlockingClient(port, receive_buffer=4096)
        await wait_until(lambda: server.connection_count == 1)
        conn = next(iter(server._connections))
        conn._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        flood = asyncio.create_task(asyncio.to_thread(send_until_closed, client.sock, get("/json") * count))
        await asyncio.sleep(0.5)
        peak = sampler.stop()
        reader, writer = await connect(port)
        writer.write(get("/json"))
        assert (await read_reply(reader)).status == 200
        writer.close()
        client.sock.shutdown(socket.SHUT_RDWR)
        await within(flood)
        client.sock.close()
    # The transport pauses at 64 KiB; one more answer may land on top. Not 50,000 answers.
    assert peak < 256 * 1024, peak


def send_until_closed(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the test shut the socket down while the server held the flood back


async def test_a_flooding_connection_does_not_starve_another() -> None:
    """While one connection pipelines requests without pause, another one's requests are
    answered between them (one request per handler run and connection)."""
    async with serving(app()) as (server, port):
        flooder_reader, flooder = await connect(port)
        stop = asyncio.Event()
        answered = 0

        async def flood() -> None:
            while not stop.is_set():
                flooder.write(get("/json") * 500)
                await flooder.drain()

        async def drain_answers() -> None:
            nonlocal answered
            while not stop.is_set():
                data = await flooder_reader.read(1 << 16)
                if not data:
                    return
                answered += data.count(b"HTTP/1.1 200")

        tasks = [asyncio.create_task(flood()), asyncio.create_task(drain_answers())]
        await wait_until(lambda: answered > 1000)
        reader, writer = await connect(port)
        for _ in range(20):
            writer.write(get("/json"))
            assert (await read_reply(reader)).status == 200
        stop.set()
        for task in tasks:
            task.cancel()
        writer.close()
        flooder.close()


# -- defect 3: request smuggling -----------------------------------------------------------------

CHUNKED = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
SMUGGLING = {
    # RFC 9112 §6.1: both length headers: an error, then close.
    "cl+te": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te+cl": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n", 400),
    # §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
    "te-http10": (b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # §6.1/§7: chunked twice, or not last: the length cannot be known.
    "te-repeated": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-comma-joined": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    "te-chunked-not-last": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    # A coding we do not implement before chunked: 501, and still the end of the connection.
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "te-identity": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    # §5.2: obsolete line folding, refused rather than joined.
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", 400),
    "obs-fold-te": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    # §2.2: bare LF / bare CR line endings.
    "bare-lf": (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    "bare-lf-in-head": (b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400),
    "bare-cr": (b"GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n", 400),
    # §7.1: chunk sizes and extensions exactly as the grammar says.
    "chunk-ext-bare-cr": (CHUNKED + b"1;a\rb\r\nx\r\n0\r\n\r\n", 400),
    "chunk-ext-bare-lf": (CHUNKED + b"1;a\nx\r\n0\r\n\r\n", 400),
    "chunk-ext-space": (CHUNKED + b"1 ;a=b\r\nx\r\n0\r\n\r\n", 400),
    "chunk-ext-endless": (
        CHUNKED + b"1;" + b"a" * 5000 + b"\r\nx\r\n0\r\n\r\n",
        400,
    ),
    "chunk-size-space": (CHUNKED + b"1 \r\nx\r\n0\r\n\r\n", 400),
    "chunk-size-hex-prefix": (CHUNKED + b"0x1\r\nx\r\n0\r\n\r\n", 400),
    "chunk-data-too-long": (CHUNKED + b"1\r\nxy\r\n0\r\n\r\n", 400),
    "chunk-trailer-fold": (
        CHUNKED + b"0\r\nX-T: 1\r\n 2\r\n\r\n",
        400,
    ),
    "content-length-conflict": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", 400),
    "content-length-sign": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "bad-absolute-target": (b"GET http://[x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", list(SMUGGLING))
async def test_framing_errors_are_answered_once_and_close_the_connection(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    payload, status = SMUGGLING[case]
    spy = Spy()
    async with serving(spy) as (_, port):
        error = await only_answer_then_close(port, payload, status)
        assert error["message"].startswith(("Malformed HTTP request", "Unsupported Transfer-Encoding"))
        reader, writer = await connect(port)  # others are served as before
        writer.write(get("/"))
        assert (await read_reply(reader)).status == 200
        writer.close()
    assert spy.calls == 1, "the smuggled or pipelined request reached the handler"
    no_errors_logged(caplog)


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhello\r\n0\r\n\r\n",
        b"5;name\r\nhello\r\n0\r\n\r\n",
        b"5;name=value;other=\"quoted ;,\\\" text\"\r\nhello\r\n0\r\n\r\n",
        b"2\r\nhe\r\n3\r\nllo\r\n0\r\nX-Trailer: yes\r\n\r\n",
        b"00005\r\nhello\r\n000\r\n\r\n",
    ],
    ids=["plain", "ext-name", "ext-values", "trailer", "leading-zeros"],
)
async def test_well_formed_chunked_bodies_and_extensions_are_accepted(body: bytes) -> None:
    """Strict is not broken: what the grammar allows still works, pipelined too."""
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/echo", "Transfer-Encoding: chunked", method="POST") + body + get("/json"))
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.json()["body"] == "hello"
        assert (await read_reply(reader)).status == 200  # the connection is still in sync
        writer.close()


async def test_a_chunked_body_split_byte_by_byte_is_framed_the_same() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        payload = get("/echo", "Transfer-Encoding: chunked", method="POST") + b"3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
        for i in range(len(payload)):
            writer.write(payload[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.json()["body"] == "hello"
        writer.close()


async def test_a_bare_lf_head_is_refused_at_once_not_after_the_header_timeout() -> None:
    async with serving(Spy(), header_timeout=30) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\nHost: x\n")  # incomplete, and already wrong
        reply = await read_reply(reader)
        assert reply.status == 400
        writer.close()


# -- defect 5: client header values never reach a response unchecked ---------------------------


async def test_cors_preflight_with_non_ascii_or_control_requested_headers_is_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(app()) as (_, port):
        for requested in (b"authorization, x-caf\xe9", b"x-a\x01b, content-type", b"a" * 100 + b", " + b"b" * 10):
            reader, writer = await connect(port)
            writer.write(
                b"OPTIONS /sse HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
                b"Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: " + requested + b"\r\n\r\n"
            )
            reply = await read_reply(reader)
            assert reply.status == 204, reply.raw
            allowed = reply.header("access-control-allow-headers") or ""
            assert allowed.isascii() and allowed.isprintable()
            assert "\\x" not in allowed and "caf" not in allowed and "\x01" not in allowed
            writer.close()
    no_errors_logged(caplog)


async def test_cors_preflight_keeps_valid_names_only() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(
            b"OPTIONS /sse HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: Authorization, x-caf\xe9, Content-Type, bad name, authorization\r\n\r\n"
        )
        reply = await read_reply(reader)
        assert reply.header("access-control-allow-headers") == "Authorization, Content-Type"
        writer.close()


@pytest.mark.parametrize(
    "given, kept",
    [(b"req-42.abc_DEF:1", True), (b"caf\xe9", False), (b"a b", False), (b"x" * 129, False), (b"a\x01b", False)],
)
async def test_x_request_id_is_echoed_only_when_sane(given: bytes, kept: bool) -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /json HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + given + b"\r\n\r\n")
        reply = await read_reply(reader)
        rid = reply.header("x-request-id")
        assert rid is not None and rid.isascii() and rid.isprintable() and " " not in rid
        assert (rid == given.decode("latin-1")) is kept
        writer.close()


async def test_every_answer_carries_a_request_id_even_a_rejection() -> None:
    async with serving(Spy()) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"\x00garbage\r\n\r\n")
        reply = await read_reply(reader)
        assert reply.status == 400 and len(reply.header("x-request-id") or "") == 16
        writer.close()


async def test_a_handler_header_that_is_not_plain_ascii_is_dropped_not_a_500(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        # A handler that copies client input into a header by mistake.
        responder.send(200, b"{}", headers=[("x-echo", request.headers.get("x-in", "")), ("x-fine", "yes")])

    router = Router()
    router.add("GET", "/", handler)
    async with serving(router) as (_, port):
        for value in (b"caf\xe9", b"a\x01b"):
            reader, writer = await connect(port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-In: " + value + b"\r\n\r\n")
            reply = await read_reply(reader)
            assert reply.status == 200 and reply.header("x-echo") is None and reply.header("x-fine") == "yes"
            writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- shutdown ---------------------------------------------------------------------------------------


async def test_a_pipelined_request_refused_at_shutdown_has_a_code() -> None:
    release = asyncio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        await release.wait()
        responder.send(200, b"{}")

    async with serving(handler) as (server, port):
        reader, writer = await connect(port)
        writer.write(get("/") + get("/"))
        await wait_until(lambda: bool(server._tasks))
        shutdown = asyncio.create_task(server.shutdown(grace=5))
        await asyncio.sleep(0.05)
        release.set()
        first = await read_reply(reader)
        assert first.status == 200 and first.header("connection") == "close"
        await within(shutdown)
        writer.close()
