"""StreamParser on the stream shapes DeepSeek added from August to October 2026 (protocol doc §16.4).

Hand-written frames in the captured grammar (§7.4); the expectations are written out
by hand from the protocol doc.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ds2a.deepseek.errors import ErrorKind
from ds2a.deepseek.events import (
    AnswerDelta,
    Citation,
    Event,
    Finish,
    Ready,
    ReasoningDelta,
    SearchResults,
    StreamError,
    Usage,
)
from ds2a.deepseek.stream import StreamParser


def data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def named(event: str, obj: Any) -> bytes:
    return f"event: {event}\n".encode() + data(obj)


def snapshot(*fragments: dict[str, Any]) -> bytes:
    response = {"message_id": 2, "parent_id": 1, "status": "WIP", "accumulated_token_usage": 0, "fragments": list(fragments)}
    return data({"v": {"response": response}})


def answer(fid: int, content: str) -> dict[str, Any]:
    return {"id": fid, "type": "RESPONSE", "content": content, "references": [], "stage_id": 1}


READY = named("ready", {"request_message_id": 1, "response_message_id": 2, "model_type": "default"})
CLOSE = named("close", {"click_behavior": "none", "auto_resume": False})


def parse(body: bytes) -> list[Event]:
    parser = StreamParser()
    return parser.feed(body) + parser.close()


def ending(status: str, usage: int = 0) -> bytes:
    """The captured end: a BATCH with quasi_status, then response/status (§7.8)."""
    return data(
        {"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": usage}, {"p": "quasi_status", "v": status}]}
    ) + data({"p": "response/status", "o": "SET", "v": status})


# --------------------------------------------------------------------------- new terminal statuses


@pytest.mark.parametrize(
    ("status", "kind", "finish_reason"),
    [("CONTEXT_LENGTH_EXCEEDED", ErrorKind.INPUT_TOO_LONG, "context_length_exceeded"), ("TIMEOUT", ErrorKind.TIMEOUT, "timeout")],
)
def test_error_status_before_any_text_is_an_error(status: str, kind: ErrorKind, finish_reason: str) -> None:
    events = parse(READY + snapshot() + ending(status) + CLOSE)
    assert events[0] == Ready(1, 2, "default")
    assert len(events) == 2
    error = events[1]
    assert type(error) is StreamError and error.kind is kind and error.finish_reason == finish_reason
    assert status in error.message


@pytest.mark.parametrize("status", ["CONTEXT_LENGTH_EXCEEDED", "TIMEOUT"])
def test_error_status_after_text_is_an_error_never_a_finish(status: str) -> None:
    events = parse(READY + snapshot(answer(3, "Hel")) + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "lo"}) + ending(status, 5) + CLOSE)
    assert events[1:3] == [AnswerDelta("Hel"), AnswerDelta("lo")]
    assert not any(type(e) is Finish for e in events)
    assert [type(e) for e in events[3:]] == [Usage, StreamError]


@pytest.mark.parametrize("status", ["CONTEXT_LENGTH_EXCEEDED", "TIMEOUT"])
def test_the_quasi_status_alone_already_ends_the_answer(status: str) -> None:
    parser = StreamParser()
    events = parser.feed(snapshot(answer(3, "x")) + data({"p": "response", "o": "BATCH", "v": [{"p": "quasi_status", "v": status}]}))
    assert parser.finished and type(events[-1]) is StreamError
    assert parser.feed(data({"p": "response/status", "o": "SET", "v": status})) == []  # said once


def test_finished_quasi_status_alone_is_not_yet_the_end() -> None:
    parser = StreamParser()
    parser.feed(snapshot(answer(3, "x")) + data({"p": "response", "o": "BATCH", "v": [{"p": "quasi_status", "v": "FINISHED"}]}))
    assert not parser.finished


# --------------------------------------------------------------------------- toast, 40301


def test_toast_error_ends_the_stream_with_its_message() -> None:
    toast = {"type": "error", "content": "The current client version does not support this mode. Please upgrade."}
    events = parse(READY + named("toast", toast))
    assert events[1] == StreamError(ErrorKind.UPSTREAM, toast["content"], None, False)


def test_toast_with_a_known_reason_is_classified() -> None:
    events = parse(READY + named("toast", {"type": "error", "content": "Messages too frequent. Try again later."}))
    assert type(events[1]) is StreamError and events[1].kind is ErrorKind.RATE_LIMITED


@pytest.mark.parametrize("payload", [{"type": "info", "content": "Searching…"}, {"type": "success"}, "not json"])
def test_other_toasts_are_ui_chrome(payload: Any) -> None:
    body = named("toast", payload) if not isinstance(payload, str) else b"event: toast\ndata: not json\n\n"
    events = parse(READY + body + snapshot(answer(3, "ok")) + ending("FINISHED"))
    assert events[1:] == [AnswerDelta("ok"), Finish("stop")]


def test_in_stream_invalid_pow_response_is_a_pow_error() -> None:
    events = parse(data({"code": 40301, "msg": "INVALID_POW_RESPONSE"}))
    assert events == [StreamError(ErrorKind.POW, "INVALID_POW_RESPONSE", None, False)]


def test_in_stream_invalid_pow_after_ready_too() -> None:
    events = parse(READY + data({"code": 40301, "msg": "INVALID_POW_RESPONSE", "data": None}) + CLOSE)
    assert type(events[1]) is StreamError and events[1].kind is ErrorKind.POW


# --------------------------------------------------------------------------- new fragment types


def search_fragment(fid: int, kind: str, urls: list[str]) -> dict[str, Any]:
    results = [{"url": u, "title": f"T{i}", "snippet": "s", "cite_index": i + 1, "site_name": "site"} for i, u in enumerate(urls)]
    return {"id": fid, "type": kind, "status": "FINISHED", "content": None, "queries": [{"query": "q"}], "results": results}


def test_new_fragment_types_never_leak_into_text() -> None:
    body = (
        READY
        + snapshot({"id": 1, "type": "THINK", "content": "think", "references": []})
        + data({"p": "response/fragments", "o": "APPEND", "v": [{"id": 2, "type": "SEARCH", "status": "WIP", "content": "searching for q"}]})
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": " and more search prose"})
        + data({"v": " still search prose"})
        + data({"p": "response/fragments", "o": "APPEND", "v": [{"id": 3, "type": "TOOL_FIND", "status": "WIP", "content": "finding"}]})
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": " find prose"})
        + data({"p": "response/fragments", "o": "APPEND", "v": [{"id": 4, "type": "FILE", "content": "file text", "file": {"name": "a.pdf"}}]})
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": " more file text"})
        + data({"p": "response/fragments", "o": "APPEND", "v": [{"id": 5, "type": "READ_LINK", "status": "WIP", "content": "reading"}]})
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": " link prose"})
        + data({"p": "response/fragments", "o": "APPEND", "v": [answer(6, "The")]})
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": " answer."})
        + ending("FINISHED")
    )
    events = parse(body)
    assert "".join(e.text for e in events if type(e) is ReasoningDelta) == "think"
    assert "".join(e.text for e in events if type(e) is AnswerDelta) == "The answer."
    assert events[-1] == Finish("stop")


def test_search_like_fragments_feed_citations() -> None:
    body = (
        snapshot(answer(9, ""))
        + data({"p": "response/fragments", "o": "APPEND", "v": [search_fragment(2, "SEARCH", ["https://a.example/", "https://b.example/"])]})
        + data({"p": "response/fragments", "o": "APPEND", "v": [search_fragment(3, "TOOL_FIND", ["https://c.example/"])]})
        + data({"p": "response/fragments", "o": "APPEND", "v": [{"id": 4, "type": "READ_LINK", "status": "WIP", "result": {"url": "https://d.example/", "title": "D"}}]})
        + data({"p": "response/fragments", "o": "APPEND", "v": [answer(6, "Sun")]})
        + data({"p": "response/fragments/-1", "o": "BATCH", "v": [{"p": "content", "o": "APPEND", "v": "[reference:0]"}, {"p": "references", "o": "SET", "v": [{"id": 4, "type": "READ_LINK"}]}]})
        + data({"v": [{"p": "content", "o": "APPEND", "v": "[reference:1]"}, {"p": "references", "v": [{"id": 2, "type": "SEARCH"}]}]})
        + data({"v": [{"p": "content", "o": "APPEND", "v": "[reference:2]"}, {"p": "references", "v": [{"id": 3, "type": "TOOL_FIND"}]}]})
        + ending("FINISHED")
    )
    events = parse(body)
    found = [r.url for e in events if type(e) is SearchResults for r in e.results]
    assert found == ["https://a.example/", "https://b.example/", "https://c.example/", "https://d.example/"]
    assert [e for e in events if type(e) is Citation] == [
        Citation("reference", 0, "https://d.example/", "D"),
        Citation("reference", 1, "https://a.example/", "T0"),  # the result with cite_index 1
        Citation("reference", 2, "https://c.example/", "T0"),  # no cite_index 2: the top hit
    ]
    assert "".join(e.text for e in events if type(e) is AnswerDelta) == "Sun[reference:0][reference:1][reference:2]"


def test_a_file_fragment_without_urls_reports_nothing() -> None:
    body = snapshot(answer(9, "a")) + data({"p": "response/fragments", "o": "APPEND", "v": [{"id": 4, "type": "FILE", "result": {"file_name": "x.pdf"}}]}) + ending("FINISHED")
    events = parse(body)
    assert not any(type(e) is SearchResults for e in events)
    assert events[-1] == Finish("stop")


# --------------------------------------------------------------------------- a stop someone chose


def test_a_user_stop_ends_incomplete_and_not_resumable() -> None:
    tip = {"id": 4, "type": "TIP", "content": "本回答由 AI 生成，内容仅供参考，请仔细甄别。", "style": "WARNING", "hide_on_wip": True}
    body = (
        READY
        + snapshot(answer(3, "Stopped he"))
        + data({"p": "response/fragments", "o": "APPEND", "v": [tip]})
        + ending("INCOMPLETE", 7)
        + CLOSE
    )
    events = parse(body)
    assert events[-1] == Finish("incomplete", None, resumable=False)
    assert "".join(e.text for e in events if type(e) is AnswerDelta) == "Stopped he"


def test_a_server_cut_stays_resumable() -> None:
    events = parse(READY + snapshot(answer(3, "Cut he")) + ending("INCOMPLETE", 7) + CLOSE)
    assert events[-1] == Finish("incomplete") and events[-1].resumable


# --- robustness of the per-fragment bookkeeping -------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"p": "response", "v": "not an object"},
        {"p": "response", "v": ["a", "list"]},
        {"p": "response/fragments", "v": "not a list"},
        {"p": "response/fragments/0", "v": "not a fragment"},
        {"p": "response/fragments/9/content", "o": "APPEND", "v": "nowhere"},
    ],
)
def test_odd_shapes_never_raise_and_text_still_flows(frame: dict[str, Any]) -> None:
    parser = StreamParser()
    events = parser.feed(snapshot(answer(3, "a")) + data(frame) + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "b"}))
    assert events[0] == AnswerDelta("a")
    assert all(type(e) in (AnswerDelta, StreamError) for e in events)
