"""HTTPServer over real loopback sockets: the bytes on the wire, limits, disconnects,
backpressure and shutdown. Responses are parsed here by hand, never by an HTTP library,
so the tests see exactly what a client would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from ds2a.api.errors import ApiError, render_openai_error
from ds2a.config import ServerConfig
from ds2a.server import HTTPServer, Request, Responder, Router
from ds2a.server.core import NEED_DATA, Continue, HTTPCore, Reject
from ds2a.server.cors import CorsPolicy

uvloop = pytest.importorskip("uvloop")

Handler = Callable[[Request, Responder], Coroutine[Any, Any, None]]
WAIT = 10.0  # generous upper bound for anything awaited; never asserted on


# -- helpers -------------------------------------------------------------------


async def within(aw: Awaitable[Any], timeout: float = WAIT) -> Any:
    return await asyncio.wait_for(aw, timeout)


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def serving(handler: Handler, **settings: Any) -> AsyncIterator[tuple[HTTPServer, int]]:
    config = ServerConfig(host="127.0.0.1", port=0, **settings)
    server = HTTPServer(handler, config, render_error=render_openai_error)
    _, port = await server.start()
    try:
        yield server, port
    finally:
        await within(server.shutdown(grace=0))


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    chunks: list[bytes] = field(default_factory=list)
    terminated: bool = False  # chunked body ended with a proper terminal chunk

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False) -> Reply:
    """One response, framed the way its headers say."""
    raw = await within(reader.readuntil(b"\r\n\r\n"))
    status_line, *header_lines = raw[:-4].decode("latin-1").split("\r\n")
    version, status, reason = (status_line.split(" ", 2) + [""])[:3]
    assert version == "HTTP/1.1"
    headers = [tuple(line.split(": ", 1)) for line in header_lines]
    reply = Reply(int(status), reason, headers, b"", raw)  # type: ignore[arg-type]
    if head_only or reply.status in (100, 204, 304):
        return reply
    if reply.header("content-length") is not None:
        reply.body = await within(reader.readexactly(int(reply.header("content-length") or 0)))
        reply.raw += reply.body
    elif reply.header("transfer-encoding") == "chunked":
        await read_chunks(reader, reply)
    else:
        reply.body = await within(reader.read())
        reply.raw += reply.body
    return reply


async def read_chunks(reader: asyncio.StreamReader, reply: Reply) -> None:
    raw = [reply.raw]
    try:
        while True:
            try:
                size_line = await within(reader.readuntil(b"\r\n"))
            except asyncio.IncompleteReadError as exc:
                raw.append(exc.partial)
                return  # cut without a terminal chunk
            raw.append(size_line)
            size = int(size_line, 16)
            if size == 0:
                trailer = await within(reader.readexactly(2))
                raw.append(trailer)
                assert trailer == b"\r\n"
                reply.terminated = True
                return
            data = await within(reader.readexactly(size + 2))
            raw.append(data)
            assert data.endswith(b"\r\n")
            reply.chunks.append(data[:-2])
    finally:
        reply.raw = b"".join(raw)
        reply.body = b"".join(reply.chunks)


async def read_eof(reader: asyncio.StreamReader) -> bytes:
    """What is left until the server closes (raises if it never does)."""
    return await within(reader.read())


def without_date(raw: bytes) -> bytes:
    """The bytes with the two fields that change per response (date, request id) as X."""
    raw = re.sub(rb"date: [^\r]+\r\n", b"date: X\r\n", raw)
    return re.sub(rb"x-request-id: [0-9a-f]{16}\r\n", b"x-request-id: X\r\n", raw)


def error_shape(reply: Reply) -> dict[str, Any]:
    data = reply.json()
    assert set(data) == {"error"}
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert reply.header("content-type") == "application/json"
    return data["error"]


async def json_handler(request: Request, responder: Responder) -> None:
    responder.send(200, b'{"ok":true}')


async def echo_handler(request: Request, responder: Responder) -> None:
    body = json.dumps(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode(),
            "params": request.params,
        }
    ).encode()
    responder.send(200, body)


async def sse_handler(request: Request, responder: Responder) -> None:
    responder.start_stream()
    responder.write(b'data: {"n":1}\n\n')
    await responder.drain()
    responder.write(b"data: [DONE]\n\n")
    responder.end_stream()


def app() -> Router:
    router = Router()
    router.add("GET", "/json", json_handler)
    router.add("POST", "/echo", echo_handler)
    router.add("GET", "/items/{item}", echo_handler)
    router.add("GET", "/sse", sse_handler)
    router.add("POST", "/sse", sse_handler)
    return router


# -- exact bytes -----------------------------------------------------------------


async def scenario_send_exact_bytes() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/json"))
        reply = await read_reply(reader)
        assert without_date(reply.raw) == (
            b"HTTP/1.1 200 OK\r\n"
            b"content-type: application/json\r\n"
            b"content-length: 11\r\n"
            b"date: X\r\n"
            b"x-request-id: X\r\n"
            b"access-control-allow-origin: *\r\n"
            b"access-control-expose-headers: Retry-After, X-Request-Id\r\n"
            b"\r\n"
            b'{"ok":true}'
        )
        assert re.search(rb"date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", reply.raw)
        writer.close()


async def test_send_exact_bytes() -> None:
    await scenario_send_exact_bytes()


async def scenario_stream_exact_bytes() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/sse"))
        reply = await read_reply(reader)
        assert without_date(reply.raw) == (
            b"HTTP/1.1 200 OK\r\n"
            b"content-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\n"
            b"x-accel-buffering: no\r\n"
            b"date: X\r\n"
            b"x-request-id: X\r\n"
            b"access-control-allow-origin: *\r\n"
            b"access-control-expose-headers: Retry-After, X-Request-Id\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"\r\n"
            b'f\r\ndata: {"n":1}\n\n\r\n'
            b"e\r\ndata: [DONE]\n\n\r\n"
            b"0\r\n\r\n"
        )
        # The connection is still usable: h11's state machine followed the stream.
        writer.write(get("/json"))
        assert (await read_reply(reader)).body == b'{"ok":true}'
        writer.close()


async def test_stream_exact_bytes() -> None:
    await scenario_stream_exact_bytes()


class RecordingTransport:
    """Delegates to the real transport and records each write call."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_each_stream_write_is_one_transport_write() -> None:
    recorded: list[bytes] = []

    async def handler(request: Request, responder: Responder) -> None:
        responder.start_stream()
        proxy = RecordingTransport(responder._transport)
        responder._transport = proxy  # type: ignore[assignment]
        for text in (b"data: a\n\n", b"data: bc\n\n", b"x" * 300):
            responder.write(text)
        responder.write(b"")  # skipped: an empty chunk would end the body
        recorded.extend(proxy.writes)
        responder.end_stream()

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/"))
        reply = await read_reply(reader)
        assert reply.terminated and reply.chunks == [b"data: a\n\n", b"data: bc\n\n", b"x" * 300]
        writer.close()
    assert recorded == [b"9\r\ndata: a\n\n\r\n", b"a\r\ndata: bc\n\n\r\n", b"12c\r\n" + b"x" * 300 + b"\r\n"]


# -- keep-alive, pipelining, HEAD, Expect ---------------------------------------------


async def test_keep_alive_several_requests_on_one_connection() -> None:
    async with serving(app()) as (server, port):
        reader, writer = await connect(port)
        for i in range(4):
            writer.write(get(f"/items/{i}?q={i}"))
            reply = await read_reply(reader)
            assert reply.status == 200 and reply.header("connection") is None
            assert reply.json() == {
                "method": "GET",
                "path": f"/items/{i}",
                "query": f"q={i}",
                "body": "",
                "params": {"item": str(i)},
            }
        assert server.connection_count == 1
        writer.close()


async def scenario_pipelining_in_order() -> None:
    running = 0
    most = 0

    async def handler(request: Request, responder: Responder) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        # The first request is the slowest: out-of-order answers would show.
        await asyncio.sleep({"/a": 0.05, "/b": 0.01, "/c": 0.0}[request.path])
        running -= 1
        if request.path == "/b":
            responder.start_stream()
            responder.write(b"data: b\n\n")
            responder.end_stream()
        else:
            responder.send(200, request.path.encode() + request.body, content_type="text/plain")

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(
            get("/a", "Content-Length: 5", method="POST") + b"hello" + get("/b") + get("/c", "Connection: close")
        )
        first, second, third = [await read_reply(reader) for _ in range(3)]
        assert first.body == b"/ahello"
        assert second.chunks == [b"data: b\n\n"] and second.terminated
        assert third.body == b"/c" and third.header("connection") == "close"
        assert await read_eof(reader) == b""
        assert most == 1
        writer.close()


async def test_pipelining_answers_in_order_one_at_a_time() -> None:
    await scenario_pipelining_in_order()


async def test_head_is_get_without_body() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/json", method="HEAD") + get("/sse", method="HEAD") + get("/json"))
        head = await read_reply(reader, head_only=True)
        assert head.status == 200 and head.header("content-length") == "11"
        stream_head = await read_reply(reader, head_only=True)
        assert stream_head.header("content-type") == "text/event-stream; charset=utf-8"
        # Had any body bytes been sent for the HEADs, this would not parse as a response.
        after = await read_reply(reader)
        assert after.status == 200 and after.body == b'{"ok":true}'
        writer.close()


async def test_expect_100_continue() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/echo", "Content-Length: 4", "Expect: 100-continue", method="POST"))
        interim = await within(reader.readuntil(b"\r\n\r\n"))
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ping")
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.json()["body"] == "ping"
        writer.close()


async def test_expect_100_continue_too_large_gets_413_without_100() -> None:
    async with serving(app(), max_body_bytes=10) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/echo", "Content-Length: 11", "Expect: 100-continue", method="POST"))
        reply = await read_reply(reader)
        assert reply.status == 413
        assert await read_eof(reader) == b""
        writer.close()


async def test_connection_close_is_honoured() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/json", "Connection: close") + get("/json"))
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.header("connection") == "close"
        assert await read_eof(reader) == b""  # the pipelined second request is not answered
        writer.close()


async def test_http10_stream_is_unchunked_and_closes() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /sse HTTP/1.0\r\n\r\n")
        reply = await read_reply(reader)  # no framing header: body runs until close
        assert reply.header("transfer-encoding") is None
        assert reply.header("connection") == "close"
        assert reply.body == b'data: {"n":1}\n\ndata: [DONE]\n\n'
        writer.close()


# -- CORS and routing answers ---------------------------------------------------------


async def test_cors_preflight_and_wildcard_headers() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(
            get(
                "/sse",
                "Origin: https://app.example",
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: authorization, content-type",
                method="OPTIONS",
            )
        )
        reply = await read_reply(reader)
        assert reply.status == 204 and reply.body == b""
        assert reply.header("content-length") is None
        assert reply.header("access-control-allow-origin") == "*"
        assert reply.header("access-control-allow-methods") == "GET, HEAD, OPTIONS, POST"
        assert reply.header("access-control-allow-headers") == "authorization, content-type"
        assert reply.header("access-control-max-age") == "7200"
        assert reply.header("access-control-allow-credentials") is None
        writer.write(get("/json", "Origin: https://app.example"))
        reply = await read_reply(reader)
        assert reply.header("access-control-allow-origin") == "*" and reply.header("vary") is None
        writer.close()


async def test_cors_explicit_origin_list() -> None:
    async with serving(app(), cors_origins=["https://a.example"]) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/json", "Origin: https://a.example"))
        reply = await read_reply(reader)
        assert reply.header("access-control-allow-origin") == "https://a.example"
        assert reply.header("vary") == "Origin"
        writer.write(get("/json", "Origin: https://evil.example"))
        reply = await read_reply(reader)
        assert reply.header("access-control-allow-origin") is None
        assert reply.header("vary") == "Origin"
        writer.write(get("/nope", "Origin: https://a.example"))  # error answers carry CORS too
        reply = await read_reply(reader)
        assert reply.status == 404 and reply.header("access-control-allow-origin") == "https://a.example"
        writer.close()


async def test_404_and_405_in_openai_shape() -> None:
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/v1/nothing?x=1", method="POST"))
        reply = await read_reply(reader)
        assert reply.status == 404
        assert error_shape(reply) == {
            "message": "Invalid URL (POST /v1/nothing)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        writer.write(get("/json", "Content-Length: 0", method="DELETE"))
        reply = await read_reply(reader)
        assert reply.status == 405 and reply.header("allow") == "GET, HEAD, OPTIONS"
        error = error_shape(reply)
        assert error["type"] == "invalid_request_error" and "DELETE" in error["message"]
        writer.close()


# -- limits ------------------------------------------------------------------------


async def expect_rejection(port: int, payload: bytes, status: int) -> dict[str, Any]:
    """Send ``payload``; the server must answer ``status`` in OpenAI's shape, then close."""
    reader, writer = await connect(port)
    writer.write(payload)
    reply = await read_reply(reader)
    assert reply.status == status, reply.raw
    assert reply.header("connection") == "close"
    assert await read_eof(reader) == b""
    writer.close()
    return error_shape(reply)


class Spy:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: Request, responder: Responder) -> None:
        self.calls += 1
        responder.send(200, b"{}")


async def test_413_by_content_length_before_the_body() -> None:
    spy = Spy()
    async with serving(spy, max_body_bytes=100) as (_, port):
        error = await expect_rejection(port, get("/", "Content-Length: 101", method="POST"), 413)
        assert "100" in error["message"]
        # At the limit exactly is fine.
        reader, writer = await connect(port)
        writer.write(get("/", "Content-Length: 100", method="POST") + b"x" * 100)
        assert (await read_reply(reader)).status == 200
        writer.close()
    assert spy.calls == 1


async def test_413_as_soon_as_a_chunked_body_is_too_large() -> None:
    spy = Spy()
    async with serving(spy, max_body_bytes=100) as (_, port):
        body = b"40\r\n" + b"a" * 64 + b"\r\n"
        # Two chunks exceed the limit; the terminal chunk is never sent.
        await expect_rejection(port, get("/", "Transfer-Encoding: chunked", method="POST") + body * 2, 413)
    assert spy.calls == 0


async def test_431_head_too_large_whole_or_incomplete() -> None:
    spy = Spy()
    async with serving(spy, max_header_bytes=1024) as (_, port):
        # Arrives complete in one write: measured by the server itself.
        await expect_rejection(port, get("/", "X-Big: " + "a" * 2000), 431)
        # Never completes: h11's incomplete-event bound.
        await expect_rejection(port, get("/", "X-Big: " + "a" * 2000)[:-4], 431)
    assert spy.calls == 0


async def test_431_too_many_headers() -> None:
    spy = Spy()
    async with serving(spy, max_header_count=5) as (_, port):
        error = await expect_rejection(port, get("/", *[f"X-H{i}: v" for i in range(10)]), 431)
        assert "5" in error["message"]
        reader, writer = await connect(port)
        writer.write(get("/", *[f"X-H{i}: v" for i in range(4)]))  # + Host = 5
        assert (await read_reply(reader)).status == 200
        writer.close()
    assert spy.calls == 1


async def scenario_limits_then_close() -> None:
    """413 mid-body, 408, 400: each answered, then FIN (write_eof) and close."""
    spy = Spy()
    async with serving(spy, max_body_bytes=100, header_timeout=0.1) as (_, port):
        body = b"40\r\n" + b"a" * 64 + b"\r\n"
        await expect_rejection(port, get("/", "Transfer-Encoding: chunked", method="POST") + body * 20, 413)
        await expect_rejection(port, b"GET / HTTP/1.1\r\nHost: x\r\n", 408)
        await expect_rejection(port, b"\x00garbage\r\n\r\n", 400)
    assert spy.calls == 0


async def test_limits_then_close() -> None:
    await scenario_limits_then_close()


async def test_pipelined_flood_pauses_reading_and_is_answered_after() -> None:
    release = asyncio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        await release.wait()
        responder.send(200, b"{}")

    async with serving(handler, max_body_bytes=100, max_header_bytes=1024) as (server, port):
        reader, writer = await connect(port)
        writer.write(get("/"))
        await wait_until(lambda: bool(server._tasks))
        writer.write(b"x" * 50_000)  # far beyond what one request may buffer
        await wait_until(lambda: any(c._reading_paused for c in server._connections))
        release.set()
        assert (await read_reply(reader)).status == 200
        assert (await read_reply(reader)).status in (400, 431)  # the flood, parsed at last
        assert await read_eof(reader) == b""
        writer.close()


async def scenario_tcp_nodelay() -> None:
    seen: list[int] = []

    async def handler(request: Request, responder: Responder) -> None:
        sock = responder._transport.get_extra_info("socket")
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        responder.send(200, b"{}")

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/"))
        await read_reply(reader)
        writer.close()
    assert seen and seen[0] != 0


async def test_tcp_nodelay() -> None:
    await scenario_tcp_nodelay()


async def test_408_for_a_stalled_head() -> None:
    async with serving(Spy(), header_timeout=0.1) as (_, port):
        error = await expect_rejection(port, b"GET / HTTP/1.1\r\nHost: x\r\n", 408)
        assert "head" in error["message"]


async def test_408_for_a_stalled_body() -> None:
    async with serving(Spy(), body_timeout=0.1) as (_, port):
        error = await expect_rejection(port, get("/", "Content-Length: 10", method="POST") + b"abc", 408)
        assert "body" in error["message"]


async def test_idle_keep_alive_connection_is_closed_without_408() -> None:
    async with serving(app(), keepalive_timeout=0.1) as (server, port):
        reader, writer = await connect(port)
        writer.write(get("/json"))
        assert (await read_reply(reader)).status == 200
        assert await read_eof(reader) == b""
        await wait_until(lambda: server.connection_count == 0)
        writer.close()


async def test_silent_new_connection_is_closed_without_408() -> None:
    async with serving(app(), header_timeout=0.1) as (_, port):
        reader, writer = await connect(port)
        assert await read_eof(reader) == b""
        writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02 nonsense\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_400_for_malformed_http(garbage: bytes) -> None:
    spy = Spy()
    async with serving(spy) as (_, port):
        error = await expect_rejection(port, garbage, 400)
        assert error["message"].startswith("Malformed HTTP request")  # fixed texts: never the input
        reader, writer = await connect(port)  # the server is still fine
        writer.write(get("/"))
        assert (await read_reply(reader)).status == 200
        writer.close()
    assert spy.calls == 1


# -- disconnects ---------------------------------------------------------------------


async def scenario_disconnect_cancels_handler(how: str) -> None:
    """A client that leaves mid-stream: its handler is cancelled at once (reset) or at the
    next write (close: a FIN alone may be a half-close, so it is not taken as leaving)."""
    streaming = asyncio.Event()
    cleaned_up = asyncio.Event()
    seen: dict[str, Any] = {}

    async def handler(request: Request, responder: Responder) -> None:
        responder.start_stream()
        try:
            responder.write(b"data: first\n\n")
            streaming.set()
            while True:  # a relay writing a token now and then
                await asyncio.sleep(0.02)
                responder.write(b"data: token\n\n")
        except asyncio.CancelledError as exc:
            seen["disconnected_first"] = responder.disconnected.is_set()
            seen["message"] = exc.args
            raise
        finally:
            cleaned_up.set()

    async with serving(handler) as (server, port):
        reader, writer = await connect(port)
        writer.write(get("/"))
        await within(reader.readuntil(b"data: first"))
        await within(streaming.wait())
        sock = writer.get_extra_info("socket")
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        await within(cleaned_up.wait())
        assert seen == {"disconnected_first": True, "message": ("client disconnected",)}
        await wait_until(lambda: not server._tasks and server.connection_count == 0)
        assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_disconnect_cancels_handler(how: str) -> None:
    await scenario_disconnect_cancels_handler(how)


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_client_that_closes_before_its_answer_begins_cancels_the_handler(version: str) -> None:
    """A FIN before the answer: a probe (HTTP/1.1) finds the socket gone; no write needed."""
    cancelled = asyncio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        try:
            await asyncio.sleep(3600)  # queued, or waiting for the upstream's first token
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serving(handler) as (server, port):
        reader, writer = await connect(port)
        writer.write(get("/", version=version))
        await wait_until(lambda: bool(server._tasks))
        writer.close()
        if version == "1.1":
            await within(cancelled.wait())
            await wait_until(lambda: not server._tasks and server.connection_count == 0)
        else:  # no interim answer may be sent to HTTP/1.0: the next write would tell
            await asyncio.sleep(0.5)
            assert not cancelled.is_set()


async def scenario_half_close_still_gets_the_answer() -> None:
    """EOF right after the request (shutdown(SHUT_WR)): the answer is still written whole,
    for a slow handler, a stream, and two pipelined requests sent before the EOF."""

    async def slow(request: Request, responder: Responder) -> None:
        await asyncio.sleep(float(request.query))  # the EOF arrives while the handler runs
        responder.send(200, b'{"slow":true}')

    router = app()
    router.add("GET", "/slow", slow)
    async with serving(router) as (server, port):
        for payload, expected in (
            (get("/slow?0.05"), [b'{"slow":true}']),
            (get("/slow?0.6"), [b'{"slow":true}']),  # long enough for the probe: a 100 comes first
            (get("/sse"), [b'data: {"n":1}\n\ndata: [DONE]\n\n']),
            (get("/slow?0.05") + get("/json"), [b'{"slow":true}', b'{"ok":true}']),
        ):
            reader, writer = await connect(port)
            writer.write(payload)
            writer.write_eof()
            for body in expected:
                reply = await read_reply(reader)
                while reply.status == 100:  # an HTTP/1.1 client skips interim responses
                    reply = await read_reply(reader)
                assert reply.status == 200 and reply.body == body
            assert await read_eof(reader) == b""
            writer.close()
        await wait_until(lambda: server.connection_count == 0 and not server._tasks)


async def test_half_close_still_gets_the_answer() -> None:
    await scenario_half_close_still_gets_the_answer()


# -- backpressure --------------------------------------------------------------------


async def scenario_backpressure() -> None:
    piece = b"x" * 16384
    total = 512  # 8 MiB: far more than the (shrunk) kernel buffers absorb
    state: dict[str, Any] = {"written": 0, "max_buffer": 0}
    parked = asyncio.Event()
    done = asyncio.Event()

    async def handler(request: Request, responder: Responder) -> None:
        responder.start_stream()
        transport = responder._transport
        # Small kernel buffers make the transport's own buffer fill quickly.
        state["socket"] = transport.get_extra_info("socket")
        state["socket"].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        for _ in range(total):
            responder.write(piece)
            state["written"] += 1
            state["max_buffer"] = max(state["max_buffer"], transport.get_write_buffer_size())
            if responder._conn.write_paused:
                parked.set()
            await responder.drain()
        responder.end_stream()
        done.set()

    async with serving(handler) as (_, port):
        # A bare socket that is not read at all (a stream reader would buffer megabytes).
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, get("/"))
        await within(parked.wait())
        await asyncio.sleep(0.1)  # room for a handler that drain() failed to hold back
        # Without backpressure all 8 MiB would sit in the transport's buffer by now.
        assert state["written"] < total and not done.is_set(), "drain() did not hold the handler back"
        assert state["max_buffer"] < 1 << 20, state["max_buffer"]
        state["socket"].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)  # read back fast
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        reply = await read_reply(reader)  # reading lets the handler run to the end
        assert reply.terminated and len(reply.body) == total * len(piece)
        await within(done.wait())
        assert state["max_buffer"] < 1 << 20
        writer.close()


async def test_backpressure_drain_blocks_and_buffer_stays_bounded() -> None:
    await scenario_backpressure()


async def test_drain_returns_at_once_for_a_reading_client() -> None:
    suspended: list[bool] = []

    async def handler(request: Request, responder: Responder) -> None:
        responder.start_stream()
        for _ in range(50):
            responder.write(b"data: x\n\n")
            step = responder.drain()
            try:
                step.send(None)  # a drain that waits yields here
            except StopIteration:
                suspended.append(False)
            else:
                suspended.append(True)
                step.close()
        responder.end_stream()

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/"))
        assert (await read_reply(reader)).terminated
        writer.close()
    assert suspended == [False] * 50


# -- handler failures ------------------------------------------------------------------


async def test_handler_exception_gives_500_and_server_lives_on(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        if request.path == "/boom":
            raise RuntimeError("kaput")
        responder.send(200, b"{}")

    caplog.set_level(logging.INFO)
    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(
            get("/boom", "Authorization: Bearer sk-secret-key", "Content-Length: 13", method="POST") + b"secret-prompt"
        )
        reply = await read_reply(reader)
        assert reply.status == 500
        assert error_shape(reply) == {
            "message": "Internal server error",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        writer.close()
        reader, writer = await connect(port)
        writer.write(get("/fine"))
        assert (await read_reply(reader)).status == 200
        writer.close()
    assert "kaput" in caplog.text and "Traceback" in caplog.text
    assert "sk-secret-key" not in caplog.text and "secret-prompt" not in caplog.text
    assert "POST /boom 500" in caplog.text  # the access log line


async def test_api_error_gives_its_status_body_and_headers() -> None:
    async def handler(request: Request, responder: Responder) -> None:
        raise ApiError(429, "All accounts are busy", code="busy", headers=[("Retry-After", "7")])

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/") + get("/"))
        for _ in range(2):  # keep-alive survives an ApiError
            reply = await read_reply(reader)
            assert reply.status == 429 and reply.header("retry-after") == "7"
            assert error_shape(reply) == {
                "message": "All accounts are busy",
                "type": "rate_limit_error",
                "param": None,
                "code": "busy",
            }
        writer.close()


async def test_exception_after_stream_start_ends_body_and_closes() -> None:
    async def handler(request: Request, responder: Responder) -> None:
        responder.start_stream()
        responder.write(b"data: partial\n\n")
        raise RuntimeError("upstream broke")

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/") + get("/"))
        reply = await read_reply(reader)
        assert reply.chunks == [b"data: partial\n\n"] and reply.terminated
        assert await read_eof(reader) == b""
        writer.close()


async def test_handler_without_response_gives_500() -> None:
    async def handler(request: Request, responder: Responder) -> None:
        return None

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/"))
        assert (await read_reply(reader)).status == 500
        writer.close()


# -- graceful shutdown -------------------------------------------------------------------


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_shutdown_lets_a_short_stream_finish_and_closes_idle_connections() -> None:
    release = asyncio.Event()
    seen: dict[str, bool] = {}

    async def handler(request: Request, responder: Responder) -> None:
        if request.path == "/json":
            responder.send(200, b"{}")
            return
        responder.start_stream()
        responder.write(b"data: 1\n\n")
        await release.wait()
        seen["shutting_down"] = responder.shutting_down
        responder.write(b"data: 2\n\n")
        responder.end_stream()

    server = HTTPServer(handler, ServerConfig(host="127.0.0.1", port=0), render_error=render_openai_error)
    _, port = await server.start()
    idle_reader, idle_writer = await connect(port)
    idle_writer.write(get("/json"))
    assert (await read_reply(idle_reader)).status == 200
    reader, writer = await connect(port)
    writer.write(get("/"))
    await within(reader.readuntil(b"data: 1\n\n\r\n"))

    stopping = asyncio.create_task(server.shutdown(grace=WAIT))
    await wait_until(lambda: server.shutting_down)
    assert await read_eof(idle_reader) == b""  # idle keep-alive: closed at once
    assert await refused(port)
    assert not stopping.done()
    release.set()
    rest = await read_eof(reader)
    assert rest == b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"
    await within(stopping)
    assert seen == {"shutting_down": True}
    assert server.connection_count == 0
    writer.close()
    idle_writer.close()


async def scenario_shutdown_cuts_a_long_stream(catch: bool) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: Request, responder: Responder) -> None:
        responder.start_stream()
        try:
            while True:
                responder.write(b"data: tick\n\n")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError as exc:
            seen["message"] = exc.args
            if catch:
                responder.write(b'event: error\ndata: {"error":"shutting down"}\n\n')
                return
            raise

    server = HTTPServer(handler, ServerConfig(host="127.0.0.1", port=0), render_error=render_openai_error)
    _, port = await server.start()
    reader, writer = await connect(port)
    writer.write(get("/"))
    head = await read_reply(reader, head_only=True)
    assert head.header("transfer-encoding") == "chunked"
    await within(reader.readuntil(b"data: tick"))
    await within(server.shutdown(grace=0.1))
    rest = await read_eof(reader)
    assert rest.endswith(b"\r\n0\r\n\r\n")
    assert rest.count(b"0\r\n\r\n") == 1
    if catch:
        assert rest.endswith(b'event: error\ndata: {"error":"shutting down"}\n\n\r\n0\r\n\r\n')
    assert seen["message"] == ("shutdown",)
    assert not server._tasks and server.connection_count == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    writer.close()


@pytest.mark.parametrize("catch", [True, False])
async def test_shutdown_cuts_a_long_stream_with_a_terminal_chunk(catch: bool) -> None:
    await scenario_shutdown_cuts_a_long_stream(catch)


async def test_shutdown_aborts_a_client_that_does_not_read() -> None:
    async def handler(request: Request, responder: Responder) -> None:
        responder.start_stream()
        sock = responder._transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        for _ in range(256):
            responder.write(b"x" * 16384)  # no drain(): pile it up in the transport
        await asyncio.sleep(3600)

    server = HTTPServer(handler, ServerConfig(host="127.0.0.1", port=0), render_error=render_openai_error)
    _, port = await server.start()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, get("/"))
    await wait_until(lambda: bool(server._tasks))
    await within(server.shutdown(grace=0))  # the unread buffer cannot hold shutdown up
    assert server.connection_count == 0 and not server._tasks
    sock.close()


async def test_shutdown_answers_503_for_a_handler_that_had_not_started() -> None:
    async def handler(request: Request, responder: Responder) -> None:
        await asyncio.sleep(3600)

    server = HTTPServer(handler, ServerConfig(host="127.0.0.1", port=0), render_error=render_openai_error)
    _, port = await server.start()
    reader, writer = await connect(port)
    writer.write(get("/"))
    await wait_until(lambda: bool(server._tasks))
    await within(server.shutdown(grace=0.05))
    reply = await read_reply(reader)
    assert reply.status == 503 and reply.header("connection") == "close"
    assert error_shape(reply)["message"] == "Server is shutting down"
    writer.close()


# -- access log --------------------------------------------------------------------------


async def test_access_log_line_without_query_headers_or_body(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ds2a.access")
    async with serving(app()) as (_, port):
        reader, writer = await connect(port)
        writer.write(
            get("/echo?key=sk-in-query", "Authorization: Bearer sk-header", "Content-Length: 2", method="POST") + b"hi"
        )
        reply = await read_reply(reader)
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "ds2a.access"]
    assert len(lines) == 1
    rid = reply.header("x-request-id")
    assert rid and re.fullmatch(
        rf"{rid} 127\.0\.0\.1:\d+ POST /echo 200 ok {len(reply.body)} \d+\.\dms "
        r"model=- account=- ttft=- tokens=-",
        lines[0],
    ), lines
    assert "sk-" not in caplog.text


async def test_access_log_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ds2a.access")
    async with serving(app(), access_log=False) as (_, port):
        reader, writer = await connect(port)
        writer.write(get("/json"))
        await read_reply(reader)
        writer.close()
    assert not [r for r in caplog.records if r.name == "ds2a.access"]


# -- the sans-I/O core alone ----------------------------------------------------------------


def test_core_parses_pipelined_requests_and_enforces_limits_without_io() -> None:
    core = HTTPCore(ServerConfig(max_body_bytes=5), CorsPolicy(["*"]), ("1.2.3.4", 5))
    core.receive(b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Dup: 1\r\nx-dup: 2\r\nContent-Length: 3\r\n\r\nabc")
    request = core.next_event()
    assert isinstance(request, Request)
    assert (request.method, request.path, request.query, request.body) == ("POST", "/a", "x=1", b"abc")
    assert request.headers["x-dup"] == "1, 2" and request.client == ("1.2.3.4", 5)
    core.receive(b"POST /b HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n")
    assert core.next_event() is NEED_DATA  # one request at a time
    core.encode_response(200, b"", "application/json", ())
    assert core.next_cycle()
    rejected = core.next_event()
    assert isinstance(rejected, Reject) and rejected.status == 413


def test_core_sends_100_continue_only_when_a_body_is_expected() -> None:
    core = HTTPCore(ServerConfig(), CorsPolicy([]))
    core.receive(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    event = core.next_event()
    assert isinstance(event, Continue) and event.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert core.next_event() is NEED_DATA
    core.receive(b"ok")
    request = core.next_event()
    assert isinstance(request, Request) and request.body == b"ok"


# -- uvloop ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        scenario_send_exact_bytes,
        scenario_stream_exact_bytes,
        scenario_pipelining_in_order,
        lambda: scenario_disconnect_cancels_handler("close"),
        lambda: scenario_disconnect_cancels_handler("reset"),
        scenario_half_close_still_gets_the_answer,
        scenario_backpressure,
        lambda: scenario_shutdown_cuts_a_long_stream(False),
        scenario_limits_then_close,
        scenario_tcp_nodelay,
    ],
    ids=[
        "send", "stream", "pipelining", "disconnect", "reset", "half-close", "backpressure", "shutdown", "limits",
        "nodelay",
    ],
)
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(scenario())  # type: ignore[arg-type]
