"""Issue 8, the sans-I/O parts of the server's input: exact message framing (h11 gets
one message at a time, never a byte of the next), strict chunked and head grammar,
and a buffer whose size is known, all without a socket.
"""

from __future__ import annotations

import pytest

from ds2a.config import ServerConfig
from ds2a.server import Request
from ds2a.server.core import HTTPCore, Reject
from ds2a.server.cors import CorsPolicy, allowed_request_headers
from ds2a.server.framing import ChunkedBody, FramingError, HeadFinder, transfer_coding_status
from test_server import get


def test_core_holds_nothing_in_h11_between_requests() -> None:
    """h11 gets one message at a time: after a request, its buffer is empty and the rest
    waits in the core, counted (no per-request copy of a growing buffer)."""
    core = HTTPCore(ServerConfig(), CorsPolicy([]))
    core.receive(get("/a") + get("/b") + b"GET /c HTTP/1.1\r\nHo")
    request = core.next_event()
    assert isinstance(request, Request) and request.path == "/a"
    assert core._h11.trailing_data[0] == b""
    assert core.buffered == len(get("/b")) + len(b"GET /c HTTP/1.1\r\nHo")
    core.encode_response(200, b"", "application/json", ())
    assert core.next_cycle()
    request = core.next_event()
    assert isinstance(request, Request) and request.path == "/b"


def test_head_finder_and_chunked_body_are_sans_io() -> None:
    finder = HeadFinder(1024)
    buffer = bytearray(b"\r\nGET / HTTP/1.1\r\nHost: x\r\n")
    assert finder.find(buffer) is None
    buffer += b"\r\nbody"
    size = finder.find(buffer)
    assert size is not None and bytes(buffer[:size]) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"  # leading CRLF skipped
    with pytest.raises(FramingError) as caught:
        HeadFinder(16).find(bytearray(b"GET / HTTP/1.1\r\nHost: " + b"x" * 32))
    assert caught.value.status == 431

    chunked = ChunkedBody(1024)
    data = bytearray(b"3\r\nabc\r\n0\r\n\r\nGET /next")
    assert chunked.scan(data) == len(b"3\r\nabc\r\n0\r\n\r\n") and chunked.done
    partial = ChunkedBody(1024)
    assert partial.scan(bytearray(b"3\r\nab")) == 5 and not partial.done
    with pytest.raises(FramingError):
        ChunkedBody(1024).scan(bytearray(b"3\r\nabcX"))


def test_core_rejects_without_echoing_and_clears_its_buffer() -> None:
    core = HTTPCore(ServerConfig(), CorsPolicy([]))
    core.receive(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + get("/x"))
    event = core.next_event()
    assert isinstance(event, Reject) and event.status == 400
    assert core.buffered == 0


def test_a_chunked_body_is_validated_however_it_is_split() -> None:
    whole = b"3;a=b\r\nabc\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nT: v\r\n\r\n"
    for step in (1, 2, 3, 7, len(whole)):
        body = ChunkedBody(1024)
        buffer = bytearray()
        consumed = 0
        for i in range(0, len(whole), step):
            buffer += whole[i : i + step]
            consumed += body.scan(buffer, consumed)
        assert body.done and consumed == len(whole), step


@pytest.mark.parametrize(
    "data",
    [b"g\r\n", b"1\nx", b"1\r\nx\n", b"1;\r\n", b"1;a=\r\n", b'1;a="x\r\n', b"0\r\nbad trailer\r\n\r\n", b"\r\n"],
)
def test_chunked_grammar_violations_raise(data: bytes) -> None:
    with pytest.raises(FramingError) as caught:
        ChunkedBody(1024).scan(bytearray(data + b"\r\n0\r\n\r\n"))
    assert caught.value.status == 400


def test_transfer_coding_status_follows_rfc_9112() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s\r\n\r\n"
    assert transfer_coding_status(head % b"gzip, chunked") == 501
    assert transfer_coding_status(head % b"chunked, gzip") == 400
    assert transfer_coding_status(head % b"chunked, chunked") == 400
    assert transfer_coding_status(head % b"identity") == 400


def test_allowed_request_headers_keeps_valid_names_once() -> None:
    assert allowed_request_headers("Authorization, content-type, AUTHORIZATION") == "Authorization, content-type"
    assert allowed_request_headers("x-caf\xe9, x-ok, a b, ") == "x-ok"
    assert allowed_request_headers(", ".join(f"h{i}" for i in range(1000))).count(",") < 64
