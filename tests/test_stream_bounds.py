"""Memory bounds of the sans-I/O stream parser (issue 8, defect 6).

An upstream that never ends an SSE block, or an answer that never ends, must not grow
the gateway: the block buffer stops at ``max_block`` bytes and ends the stream with a
clear error, and the text of a long answer is forgotten once it has been emitted
(only its length stays, which is what a continuation needs).
"""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from ds2a.deepseek.errors import ErrorKind
from ds2a.deepseek.events import AnswerDelta, Event, Finish, ReasoningDelta, StreamError
from ds2a.deepseek.stream import MAX_BLOCK_BYTES, SSEDecoder, StreamParser, Text


def data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def snapshot(*fragments: dict[str, Any]) -> bytes:
    response = {"message_id": 2, "parent_id": 1, "status": "WIP", "accumulated_token_usage": 0, "fragments": list(fragments)}
    return data({"v": {"response": response}})


def fragment(fid: int, kind: str, content: str) -> dict[str, Any]:
    return {"id": fid, "type": kind, "content": content, "references": []}


def kept_text(parser: StreamParser) -> int:
    """Characters of fragment text the parser still holds."""
    total = 0
    for frag in parser.state["response"]["fragments"]:
        content = frag.get("content")
        total += content.held if type(content) is Text else len(content or "")
    return total


def errors(events: list[Event]) -> list[StreamError]:
    return [e for e in events if type(e) is StreamError]


# --------------------------------------------------------------------------- the SSE block buffer


def test_a_block_that_never_ends_stops_at_the_limit() -> None:
    decoder = SSEDecoder(max_block=64 * 1024)
    piece = b"data: " + b"x" * 4090 + b"\n"  # lines, never a blank one
    for _ in range(1000):  # ~4 MB offered
        assert decoder.feed(piece) == []
        assert decoder._size <= 64 * 1024
    assert decoder.overflowed
    assert decoder.close() == []  # nothing half-kept is dispatched at the end either


def test_the_default_limit_is_far_above_a_real_frame() -> None:
    assert SSEDecoder().max_block == MAX_BLOCK_BYTES >= 4 * 1024 * 1024
    big = data({"v": {"response": {"fragments": [fragment(1, "THINK", "思" * 300_000)], "status": "WIP"}}})
    decoder = SSEDecoder()
    out = decoder.feed(big[:1000]) + decoder.feed(big[1000:])
    assert len(out) == 1 and not decoder.overflowed


@pytest.mark.parametrize("split", [1, 7, 4096, 1 << 20])
def test_an_endless_block_ends_the_answer_with_a_clear_error(split: int) -> None:
    parser = StreamParser(max_block=256 * 1024)
    events = parser.feed(snapshot(fragment(2, "RESPONSE", "Hi")))
    assert events == [AnswerDelta("Hi")]
    endless = b'data: {"v":"' + b"a" * (2 * 1024 * 1024)  # no closing quote, no blank line
    for i in range(0, len(endless), split if split > 1 else 997):
        events += parser.feed(endless[i : i + (split if split > 1 else 997)])
    failures = errors(events)
    assert len(failures) == 1
    assert failures[0].kind is ErrorKind.PROTOCOL and "larger than 262144 bytes" in failures[0].message
    assert parser.finished and parser.aborted  # the upstream may still be writing: stop it
    assert parser._sse._size == 0
    assert parser.feed(b"\n\n" + data({"v": "more"})) == []  # nothing after the terminal
    assert parser.close() == []


# --------------------------------------------------------------------------- relayed text is forgotten


def long_answer(frames: int) -> list[bytes]:
    """An answer with every kind of text frame: bare, escaped, explicit path, inside a batch."""
    pieces = [snapshot(fragment(1, "THINK", "hm")), data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "."})]
    pieces.append(data({"p": "response/fragments", "o": "APPEND", "v": [fragment(2, "RESPONSE", "A")]}))
    pieces.append(data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "B"}))
    for i in range(frames):
        if i % 97 == 0:
            pieces.append(data({"v": 'quote " and \\ backslash'}))  # JSON-decoded, not the fast path
        elif i % 89 == 0:
            pieces.append(data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "explicit"}))
        elif i % 83 == 0:
            batch = [{"p": "content", "o": "APPEND", "v": "[reference:0]"}, {"p": "references", "o": "SET", "v": []}]
            pieces.append(data({"p": "response/fragments/-1", "o": "BATCH", "v": batch}))
            # after a batch the next text frame names its path and op again (§7.4)
            pieces.append(data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "after"}))
        else:
            pieces.append(b'data: {"v":"token%07d"}\n\n' % i)
    return pieces


def test_the_text_of_a_long_answer_is_not_retained() -> None:
    parser = StreamParser()
    emitted = 0
    for piece in long_answer(60_000):
        for event in parser.feed(piece):
            assert type(event) in (AnswerDelta, ReasoningDelta)
            emitted += len(event.text)
    assert emitted > 700_000
    assert kept_text(parser) == 0
    assert parser.retained < 2_000  # the snapshot's keys and the fragment dicts, nothing per frame
    # What a continuation needs is still there: how much of each fragment was sent.
    assert parser.state["response"]["fragments"][-1]["content"].length == emitted - 3
    assert parser.feed(data({"p": "response/status", "v": "FINISHED"})) == [Finish("stop")]


def test_memory_stays_flat_while_an_endless_answer_streams() -> None:
    pieces = long_answer(40_000)
    parser = StreamParser()
    for piece in pieces[:2_000]:
        parser.feed(piece)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for piece in pieces[2_000:]:
            parser.feed(piece)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # ~500 KB of text went through; a parser keeping it would have grown by at least that.
    assert grown < 64 * 1024, grown


def test_keep_text_keeps_everything_for_debugging() -> None:
    parser = StreamParser(keep_text=True)
    emitted = "".join(e.text for piece in long_answer(2_000) for e in parser.feed(piece) if type(e) is AnswerDelta)
    assert parser.snapshot()["response"]["fragments"][-1]["content"] == emitted


def test_a_continuation_of_a_forgetful_parser_emits_only_the_new_suffix() -> None:
    first = StreamParser()
    events = first.feed(snapshot(fragment(1, "THINK", "abc")) + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "def"}))
    events += first.feed(data({"v": "ghi"}) + data({"p": "response/status", "v": "INCOMPLETE"}))
    assert "".join(e.text for e in events if type(e) is ReasoningDelta) == "abcdefghi"
    second = StreamParser(resume_from=first)
    resent = second.feed(snapshot(fragment(1, "THINK", "abcdefghijk")) + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "l"}))
    assert resent == [ReasoningDelta("jk"), ReasoningDelta("l")]


# --------------------------------------------------------------------------- what else the state keeps is bounded


def test_state_that_keeps_growing_ends_the_answer() -> None:
    parser = StreamParser(max_retained=200_000)
    events = parser.feed(snapshot(fragment(2, "RESPONSE", "x")))
    result = {"url": "https://example.com/" + "p" * 200, "title": "t" * 200, "snippet": "s" * 600}
    for i in range(2_000):  # an upstream appending search results forever
        events += parser.feed(data({"p": "response/fragments", "o": "APPEND", "v": [{"id": 100 + i, "type": "TOOL_SEARCH", "results": [result]}]}))
        if parser.finished:
            break
    failures = errors(events)
    assert len(failures) == 1 and failures[0].kind is ErrorKind.PROTOCOL
    assert "outgrew 200000" in failures[0].message
    assert parser.aborted
    assert parser.retained < 200_000 + 2_000


def test_an_unknown_key_appended_forever_is_bounded_too() -> None:
    parser = StreamParser(max_retained=100_000)
    events = parser.feed(snapshot(fragment(2, "RESPONSE", "x")) + data({"p": "response/note", "o": "APPEND", "v": "n"}))
    for _ in range(20_000):
        events += parser.feed(data({"v": "0123456789"}))  # sticky APPEND to a non-text field
        if parser.finished:
            break
    assert [e.kind for e in errors(events)] == [ErrorKind.PROTOCOL]
