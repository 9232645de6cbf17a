"""StreamParser and SSEDecoder on hand-written frames, one rule per test (protocol doc §7, §8).

Expectations are written out by hand from the rules; none is computed by the
code under test.
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
    SearchResult,
    SearchResults,
    StreamError,
    Title,
    Usage,
)
from ds2a.deepseek.stream import SSEDecoder, StreamParser, Text

# --------------------------------------------------------------------------- helpers


def data(obj: Any) -> bytes:
    """One compact message block, as the upstream writes them."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def named(event: str, obj: Any) -> bytes:
    return f"event: {event}\n".encode() + data(obj)


def snapshot(*fragments: dict[str, Any], **fields: Any) -> bytes:
    response = {"message_id": 2, "parent_id": 1, "status": "WIP", "accumulated_token_usage": 0, "fragments": list(fragments)}
    response.update(fields)
    return data({"v": {"response": response}})


def think(fid: int, content: str) -> dict[str, Any]:
    return {"id": fid, "type": "THINK", "content": content, "elapsed_secs": None, "references": [], "stage_id": 1}


def answer(fid: int, content: str) -> dict[str, Any]:
    return {"id": fid, "type": "RESPONSE", "content": content, "references": [], "stage_id": 1}


READY = named("ready", {"request_message_id": 1, "response_message_id": 2, "model_type": "default"})
FINISHED = data({"p": "response/status", "o": "SET", "v": "FINISHED"})
CLOSE = named("close", {"click_behavior": "none", "auto_resume": False})


def parse(body: bytes, parser: StreamParser | None = None) -> list[Event]:
    parser = parser or StreamParser()
    return parser.feed(body) + parser.close()


def parse_bytewise(body: bytes) -> list[Event]:
    parser = StreamParser()
    events: list[Event] = []
    for i in range(len(body)):
        events += parser.feed(body[i : i + 1])
    return events + parser.close()


def reasoning(events: list[Event]) -> str:
    return "".join(e.text for e in events if type(e) is ReasoningDelta)


def answer_text(events: list[Event]) -> str:
    return "".join(e.text for e in events if type(e) is AnswerDelta)


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# --------------------------------------------------------------------------- layer 1: SSE


def sse_all(chunks: list[bytes]) -> list[tuple[str, str]]:
    decoder = SSEDecoder()
    out: list[tuple[str, str]] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.close()


def test_sse_event_names_and_default_message() -> None:
    body = b'event: ready\ndata: {"a":1}\n\ndata: {"v":"x"}\n\nevent: close\ndata: {}\n\n'
    assert sse_all([body]) == [("ready", '{"a":1}'), ("message", '{"v":"x"}'), ("close", "{}")]


def test_sse_crlf_lines_including_cr_and_lf_in_different_reads() -> None:
    body = b'event: ready\r\ndata: {"a":1}\r\n\r\ndata: {"v":"x"}\r\n\r\n'
    expected = [("ready", '{"a":1}'), ("message", '{"v":"x"}')]
    assert sse_all([body]) == expected
    assert sse_all([body[i : i + 1] for i in range(len(body))]) == expected
    cut = body.index(b"\r\n\r\n") + 1  # between CR and LF
    assert sse_all([body[:cut], body[cut:]]) == expected


def test_sse_multiple_data_lines_join_with_newline() -> None:
    assert sse_all([b"data: first\ndata: second\ndata:third\n\n"]) == [("message", "first\nsecond\nthird")]


def test_sse_only_one_leading_space_is_stripped_and_bare_data_is_empty_line() -> None:
    assert sse_all([b"data:  two spaces\n\n"]) == [("message", " two spaces")]
    assert sse_all([b"data\ndata: x\n\n"]) == [("message", "\nx")]


def test_sse_comments_and_unknown_fields_are_ignored() -> None:
    body = b": \n: keep-alive\n\nevent: ready\n: inside a block\nid: 7\nretry: 10\ndata: {}\n\n"
    assert sse_all([body]) == [("ready", "{}")]


def test_sse_block_without_data_dispatches_nothing_and_resets_event() -> None:
    assert sse_all([b"event: title\n\ndata: x\n\n"]) == [("message", "x")]


def test_sse_extra_blank_lines() -> None:
    assert sse_all([b"\n\n\ndata: a\n\n\n\ndata: b\n\n"]) == [("message", "a"), ("message", "b")]


def test_sse_utf8_split_inside_a_character() -> None:
    body = 'data: {"v":"你好😊"}\n\n'.encode()
    cut = body.index("好".encode()) + 1
    assert sse_all([body[:cut], body[cut:]]) == [("message", '{"v":"你好😊"}')]
    assert sse_all([body[i : i + 1] for i in range(len(body))]) == [("message", '{"v":"你好😊"}')]


def test_sse_blank_line_split_across_reads() -> None:
    assert sse_all([b"data: a\n", b"\ndata: b\n", b"\n"]) == [("message", "a"), ("message", "b")]


def test_sse_leading_bom_is_dropped() -> None:
    assert sse_all([b"\xef\xbb", b"\xbfdata: a\n\n"]) == [("message", "a")]


def test_sse_last_block_without_blank_line_is_dispatched_at_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: [DONE]") == [("message", "a")]
    assert decoder.close() == [("message", "[DONE]")]


# --------------------------------------------------------------------------- G3 patch grammar


def test_ready_event() -> None:
    parser = StreamParser()
    assert parser.feed(READY) == [Ready(1, 2, "default")]
    assert (parser.request_message_id, parser.response_message_id) == (1, 2)
    assert parser.feed(named("ready", {"request_message_id": 3, "response_message_id": 4})) == [Ready(3, 4, "default")]


def test_first_frame_sets_the_whole_state() -> None:
    parser = StreamParser(keep_text=True)
    parser.feed(snapshot(think(2, "我们"), thinking_enabled=True))
    assert parser.snapshot() == {
        "response": {
            "message_id": 2,
            "parent_id": 1,
            "status": "WIP",
            "accumulated_token_usage": 0,
            "fragments": [{"id": 2, "type": "THINK", "content": "我们", "elapsed_secs": None, "references": [], "stage_id": 1}],
            "thinking_enabled": True,
        }
    }


def test_sticky_path_and_op() -> None:
    parser = StreamParser(keep_text=True)
    events = parser.feed(
        snapshot(think(2, "a"))
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "b"})
        + data({"v": "c"})  # p and o both sticky: APPEND to the content
        + data({"p": "response/fragments/-1/elapsed_secs", "o": "SET", "v": 1.5})
        + data({"p": "response/has_pending_fragment", "v": "x"})  # o sticky: SET
        + data({"v": "y"})  # still SET, on the same path
    )
    assert events == [ReasoningDelta("a"), ReasoningDelta("b"), ReasoningDelta("c")]
    response = parser.snapshot()["response"]
    assert response["fragments"][0]["content"] == "abc"
    assert response["fragments"][0]["elapsed_secs"] == 1.5
    assert response["has_pending_fragment"] == "y"


def test_default_op_is_set_before_any_explicit_op() -> None:
    parser = StreamParser()
    parser.feed(snapshot(answer(3, "x"), note="a") + data({"p": "response/note", "v": "b"}) + data({"v": "c"}))
    assert parser.snapshot()["response"]["note"] == "c"


def test_append_after_explicit_op_keeps_appending_strings_and_lists() -> None:
    parser = StreamParser()
    parser.feed(
        snapshot(answer(3, ""), tags=["a"])
        + data({"p": "response/tags", "o": "APPEND", "v": ["b"]})
        + data({"v": ["c", "d"]})
    )
    assert parser.snapshot()["response"]["tags"] == ["a", "b", "c", "d"]


def test_batch_paths_are_relative_and_its_stickiness_starts_from_set() -> None:
    parser = StreamParser(keep_text=True)
    events = parser.feed(
        snapshot(answer(3, "A"), label="old")
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "B"})  # outer op now APPEND
        + data(
            {
                "p": "response",
                "o": "BATCH",
                "v": [
                    {"p": "label", "v": "new"},  # SET: a batch starts from SET, not the outer APPEND
                    {"p": "fragments/-1", "o": "BATCH", "v": [{"p": "content", "o": "APPEND", "v": "C"}, {"v": "D"}]},
                    {"p": "accumulated_token_usage", "o": "SET", "v": 7},
                    {"p": "quasi_status", "v": "FINISHED"},  # sticky SET inside this list
                ],
            }
        )
    )
    assert events == [AnswerDelta("A"), AnswerDelta("B"), AnswerDelta("C"), AnswerDelta("D"), Usage(7)]
    response = parser.snapshot()["response"]
    assert response["label"] == "new"
    assert response["fragments"][0]["content"] == "ABCD"
    assert response["quasi_status"] == "FINISHED"
    assert not parser.finished  # quasi_status is not the terminal status


def test_sticky_op_inside_a_batch_does_not_leak_out() -> None:
    parser = StreamParser()
    parser.feed(
        snapshot(answer(3, "A"), label="x")
        + data({"p": "response", "o": "BATCH", "v": [{"p": "fragments/-1/content", "o": "APPEND", "v": "B"}]})
        + data({"p": "response/label", "o": "SET", "v": "y"})
        + data({"v": "z"})
    )
    assert parser.snapshot()["response"]["label"] == "z"


def test_bare_list_after_batch_is_another_batch_on_the_same_path() -> None:
    parser = StreamParser(keep_text=True)
    parser.feed(
        snapshot(answer(3, "X"))
        + data({"p": "response/fragments/-1", "o": "BATCH", "v": [{"p": "content", "o": "APPEND", "v": "1"}, {"p": "extra", "v": "a"}]})
        + data({"v": [{"p": "content", "o": "APPEND", "v": "2"}, {"p": "extra", "v": "b"}]})
    )
    fragment = parser.snapshot()["response"]["fragments"][0]
    assert fragment["content"] == "X12"
    assert fragment["extra"] == "ab"  # within each list the op stayed APPEND (sticky after "content")


def test_negative_and_positive_indexes() -> None:
    parser = StreamParser(keep_text=True)
    parser.feed(
        snapshot(
            think(1, "t"),
            {"id": 2, "type": "TOOL_SEARCH", "status": "WIP", "content": None, "results": []},
            answer(3, "r"),
        )
        + data({"p": "response/fragments/-2/status", "v": "FINISHED"})
        + data({"p": "response/fragments/0/content", "o": "APPEND", "v": "0"})
        + data({"p": "response/fragments/-3/content", "v": "1"})
        + data({"p": "response/fragments/2/content", "v": "2"})
        + data({"p": "response/fragments/-9/content", "v": "lost"})  # out of range: ignored
        + data({"p": "response/fragments/7/content", "v": "lost"})
    )
    fragments = parser.snapshot()["response"]["fragments"]
    assert [f.get("status") for f in fragments] == [None, "FINISHED", None]
    assert [f["content"] for f in fragments] == ["t01", None, "r2"]
    assert parser.ignored_ops == 2
    assert not parser.finished


def test_appending_fragments_and_text_goes_to_the_last_one() -> None:
    events = parse(
        snapshot(think(2, "Hm"))
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "m."})
        + data({"p": "response/fragments", "o": "APPEND", "v": [answer(3, "Hi")]})
        + data({"p": "response/fragments/-1/content", "v": " there"})
        + data({"v": "!"})
        + FINISHED
    )
    assert events == [
        ReasoningDelta("Hm"),
        ReasoningDelta("m."),
        AnswerDelta("Hi"),
        AnswerDelta(" there"),
        AnswerDelta("!"),
        Finish("stop"),
    ]


def test_tool_tip_and_template_fragments_never_produce_text() -> None:
    events = parse(
        snapshot(answer(3, "ok"))
        + data(
            {
                "p": "response/fragments",
                "o": "APPEND",
                "v": [
                    {"id": 4, "type": "TIP", "content": "本回答由 AI 生成", "style": "WARNING"},
                    {"id": 5, "type": "TOOL_SEARCH", "content": None, "results": []},
                    {"id": 6, "type": "SOMETHING_NEW", "content": "unknown"},
                ],
            }
        )
        + data({"p": "response/fragments/0/content", "v": " fine"})  # sticky APPEND, RESPONSE again
        + data({"p": "response/fragments/-3/content", "v": "!"})  # the TIP
        + FINISHED
    )
    assert events == [AnswerDelta("ok"), AnswerDelta(" fine"), Finish("stop")]


def test_whitespace_and_escapes_are_kept_exactly() -> None:
    body = (
        snapshot(answer(3, ""))
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "|"})
        + data({"v": "    "})
        + data({"v": " |\n"})
        + data({"v": "\n\n"})
        + data({"v": 'say "hi"\\'})
        + b'data: {"v":"\\u4f60\\t"}\n\n'
        + 'data: {"v": "好"}\n\n'.encode()  # spaced JSON, as in the 2025-11 capture
        + data({"v": ""})
        + FINISHED
    )
    events = parse(body)
    assert answer_text(events) == '|     |\n\n\nsay "hi"\\你\t好'
    assert [e.text for e in events if type(e) is AnswerDelta] == ["|", "    ", " |\n", "\n\n", 'say "hi"\\', "你\t", "好"]


def test_status_finished_is_never_text() -> None:
    events = parse(
        snapshot(answer(3, "A"))
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "B"})
        + data({"p": "response/fragments/-1/status", "o": "SET", "v": "FINISHED"})
        + data({"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 9}, {"p": "quasi_status", "v": "FINISHED"}]})
        + FINISHED
    )
    assert answer_text(events) == "AB"
    assert events[-2:] == [Usage(9), Finish("stop")]


def test_finish_comes_after_the_whole_frame() -> None:
    # The 2025-11 shape: status first, usage second, in one batch.
    frame = data({"p": "response", "o": "BATCH", "v": [{"p": "status", "v": "FINISHED"}, {"p": "accumulated_token_usage", "v": 115}]})
    parser = StreamParser()
    parser.feed(snapshot(answer(1, "你好")))
    assert parser.feed(frame) == [Usage(115), Finish("stop")]
    assert parser.finished and parser.token_usage == 115


def test_incomplete_status() -> None:
    events = parse(
        snapshot(think(2, "long"))
        + data({"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 2413}, {"p": "quasi_status", "v": "INCOMPLETE"}]})
        + data({"p": "response/fragments/-1/elapsed_secs", "o": "SET", "v": 692.7})
        + data({"p": "response/status", "v": "INCOMPLETE"})
        + named("finish", {})
        + CLOSE
    )
    assert events == [ReasoningDelta("long"), Usage(2413), Finish("incomplete")]


def test_content_filter_replaces_fragments_and_finishes_with_the_template() -> None:
    template = "你好，这个问题我暂时无法回答，让我们换个话题再聊聊吧。"
    parser = StreamParser()
    first = parser.feed(
        snapshot(answer(36, "历史"))
        + data({"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 1269}, {"p": "quasi_status", "v": "FINISHED"}]})
    )
    last = parser.feed(
        data(
            {
                "v": [
                    {"p": "ban_regenerate", "v": True},
                    {"p": "status", "v": "CONTENT_FILTER"},
                    {"p": "fragments", "v": [{"id": 38, "type": "TEMPLATE_RESPONSE", "content": template}]},
                    {"p": "quasi_status", "v": "CONTENT_FILTER"},
                ]
            }
        )
        + CLOSE
    )
    assert first == [AnswerDelta("历史"), Usage(1269)]
    assert last == [Finish("content_filter", template)]
    assert parser.snapshot()["response"]["fragments"] == [{"id": 38, "type": "TEMPLATE_RESPONSE", "content": template}]
    assert parser.close() == []


def test_usage_follows_accumulated_token_usage() -> None:
    events = parse(
        snapshot(answer(3, ""))
        + data({"p": "response/accumulated_token_usage", "v": 5})
        + data({"v": 5})  # unchanged: no event
        + data({"v": 12})
        + FINISHED
    )
    assert [e for e in events if type(e) is Usage] == [Usage(5), Usage(12)]


def test_nothing_but_title_after_a_terminal() -> None:
    parser = StreamParser(keep_text=True)
    parser.feed(snapshot(answer(3, "A")) + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "B"}))
    assert parser.feed(FINISHED) == [Finish("stop")]
    after = parser.feed(
        data({"v": "C"})
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "D"})
        + named("finish", {})
        + named("update_session", {"updated_at": 1.0})
        + named("title", {"content": "标题"})
        + CLOSE
        + b"data: [DONE]\n\n"
    )
    assert after == [Title("标题")]
    assert parser.close() == []
    assert parser.snapshot()["response"]["fragments"][0]["content"] == "AB"


# --------------------------------------------------------------------------- citations and search (G3)


def tool_open(fid: int, url: str, title: str) -> dict[str, Any]:
    return {"id": fid, "type": "TOOL_OPEN", "status": "WIP", "result": {"url": url, "title": title, "snippet": "s", "cite_index": None, "site_name": "site"}}


def tool_search(fid: int, *results: tuple[str, str]) -> dict[str, Any]:
    return {
        "id": fid,
        "type": "TOOL_SEARCH",
        "status": "WIP",
        "content": None,
        "queries": [{"query": "q"}],
        "results": [{"url": u, "title": t, "snippet": "", "cite_index": None, "site_name": None} for u, t in results],
    }


def search_fragments() -> bytes:
    return snapshot(
        think(2, "想"),
        tool_search(7, ("https://a.example/1", "A1"), ("https://a.example/2", "A2")),
        tool_open(17, "https://b.example/", "B"),
    )


def test_reference_markers_become_citations_right_after_the_marker_text() -> None:
    parser = StreamParser()
    parser.feed(search_fragments())
    events = parser.feed(
        data({"p": "response/fragments", "o": "APPEND", "v": [answer(27, "广州")]})
        + data({"p": "response/fragments/-1/content", "v": "今天"})  # sticky APPEND
        + data({"p": "response/fragments/-1", "o": "BATCH", "v": [{"p": "content", "o": "APPEND", "v": "[reference:0]"}, {"p": "references", "o": "SET", "v": [{"id": 17, "type": "TOOL_OPEN"}]}]})
        + data({"v": [{"p": "content", "o": "APPEND", "v": "[reference:1]"}, {"p": "references", "v": [{"id": 7, "type": "TOOL_SEARCH"}]}]})
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "。"})
        + data({"p": "response/fragments/-1", "o": "BATCH", "v": [{"p": "content", "o": "APPEND", "v": "[reference:2]"}, {"p": "references", "v": [{"id": 99, "type": "TOOL_OPEN"}]}]})
    )
    assert events == [
        AnswerDelta("广州"),
        AnswerDelta("今天"),
        AnswerDelta("[reference:0]"),
        Citation("reference", 0, "https://b.example/", "B"),
        AnswerDelta("[reference:1]"),
        Citation("reference", 1, "https://a.example/1", "A1"),  # a search: its first result
        AnswerDelta("。"),
        AnswerDelta("[reference:2]"),
        Citation("reference", 2, None, None),  # unknown fragment: still one Citation per marker
    ]
    assert parser.snapshot()["response"]["fragments"][-1]["references"] == [
        {"id": 17, "type": "TOOL_OPEN"},
        {"id": 7, "type": "TOOL_SEARCH"},
        {"id": 99, "type": "TOOL_OPEN"},
    ]


def test_search_reference_prefers_the_result_with_matching_cite_index() -> None:
    search = tool_search(7, ("https://a.example/1", "A1"), ("https://a.example/2", "A2"))
    search["results"][1]["cite_index"] = 0
    parser = StreamParser()
    parser.feed(snapshot(search, answer(8, "")))
    events = parser.feed(
        data({"p": "response/fragments/-1", "o": "BATCH", "v": [{"p": "content", "o": "APPEND", "v": "[reference:0]"}, {"p": "references", "o": "SET", "v": [{"id": 7, "type": "TOOL_SEARCH"}]}]})
    )
    assert events == [AnswerDelta("[reference:0]"), Citation("reference", 0, "https://a.example/2", "A2")]


def test_search_results_from_tool_fragments_are_reported_once() -> None:
    parser = StreamParser()
    events = parser.feed(
        snapshot(think(2, "t"))
        + data({"p": "response", "o": "BATCH", "v": [{"p": "fragments", "o": "APPEND", "v": [tool_search(3), tool_search(4)]}]})
        + data({"p": "response/fragments/-2/results", "o": "SET", "v": [{"url": "https://x.example/", "title": "X", "snippet": "sx", "cite_index": None, "site_name": "XS"}]})
        + data({"p": "response/fragments/-2/status", "v": "FINISHED"})
        + data({"p": "response/fragments", "o": "APPEND", "v": [tool_open(5, "https://y.example/", "Y")]})
        + data({"p": "response/fragments/-1/status", "o": "SET", "v": "FINISHED"})
    )
    assert events == [
        ReasoningDelta("t"),
        SearchResults([SearchResult("https://x.example/", "X", "sx", "XS", None)]),
        SearchResults([SearchResult("https://y.example/", "Y", "s", "site", None)]),
    ]


# --------------------------------------------------------------------------- G2


def g2_snapshot() -> bytes:
    return data({"v": {"response": {"message_id": 4, "parent_id": 3, "content": "", "thinking_content": None, "status": "WIP", "search_status": None, "search_results": None}}})


def test_g2_paths_text_search_and_citations() -> None:
    parser = StreamParser()
    events = parse(
        g2_snapshot()
        + data({"p": "response/search_status", "v": "SEARCHING"})
        + data(
            {
                "p": "response/search_results",
                "v": [
                    {"url": "https://one.example/", "title": "One", "snippet": "1", "cite_index": None, "site_name": "S1"},
                    {"url": "https://two.example/", "title": "Two", "snippet": "2", "cite_index": None, "site_name": "S2"},
                ],
            }
        )
        + data({"p": "response/search_results", "o": "BATCH", "v": [{"p": "1/cite_index", "v": 1}, {"p": "0/cite_index", "v": 2}]})
        + data({"p": "response/search_status", "o": "SET", "v": "FINISHED"})
        + data({"p": "response/thinking_content", "o": "APPEND", "v": "Let me"})
        + data({"v": " think."})
        + data({"p": "response/content", "o": "APPEND", "v": "Sunny"})
        + data({"v": "[citation:1]"})
        + data({"v": " today."})
        + data({"p": "response/status", "v": "FINISHED"})  # sticky APPEND: the state says "WIPFINISHED"
        + CLOSE,
        parser,
    )
    # The state machine stays exact; the terminal is read from the value written.
    assert parser.snapshot()["response"]["status"] == "WIPFINISHED"
    assert events == [
        SearchResults(
            [
                SearchResult("https://one.example/", "One", "1", "S1", None),
                SearchResult("https://two.example/", "Two", "2", "S2", None),
            ]
        ),
        # in the order the batch set them
        Citation("citation", 1, "https://two.example/", "Two"),
        Citation("citation", 2, "https://one.example/", "One"),
        ReasoningDelta("Let me"),
        ReasoningDelta(" think."),
        AnswerDelta("Sunny"),
        AnswerDelta("[citation:1]"),
        AnswerDelta(" today."),
        Finish("stop"),
    ]


def test_g2_finish_inside_a_batch() -> None:
    events = parse(
        g2_snapshot()
        + data({"p": "response/content", "o": "APPEND", "v": "ok"})
        + data({"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 3}, {"p": "status", "v": "FINISHED"}]})
    )
    assert events == [AnswerDelta("ok"), Usage(3), Finish("stop")]


# --------------------------------------------------------------------------- G1


def g1(content: str, kind: str = "text", **extra: Any) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": content, "type": kind}}
    choice.update(extra.pop("choice", {}))
    frame = {"choices": [choice], "model": "", "chunk_token_usage": 1, "created": 1743127731, "message_id": 5, "parent_id": 4}
    frame.update(extra)
    return data(frame)


def test_g1_choices_delta() -> None:
    body = (
        g1("", "text", chunk_token_usage=0, prompt_token_usage=24)
        + g1("Okay", "thinking")
        + g1(".", "thinking")
        + g1("Hello", "text")
        + g1("!", "text")
        + g1("", "text", chunk_token_usage=0, choice={"finish_reason": "stop"})
        + b"data: [DONE]\n\n"
    )
    assert parse(body) == [
        Ready(4, 5, None),
        ReasoningDelta("Okay"),
        ReasoningDelta("."),
        AnswerDelta("Hello"),
        AnswerDelta("!"),
        Usage(4),
        Finish("stop"),
    ]


def test_g1_search_results_and_citations_before_the_text() -> None:
    results = [
        {"url": "https://r1.example/", "title": "R1", "snippet": "a", "published_at": None, "site_name": "n1", "site_icon": "", "cite_index": 1},
        {"url": "https://r2.example/", "title": "R2", "snippet": "b", "published_at": None, "site_name": "n2", "site_icon": ""},
    ]
    frame = data({"choices": [{"index": 0, "delta": {"type": "search_result", "search_results": results}}], "message_id": 5, "parent_id": 4})
    index = data({"choices": [{"index": 0, "delta": {"type": "search_index", "search_indexes": [{"cite_index": 2, "url": "https://r2.example/"}]}}]})
    events = parse(frame + index + g1("See [citation:1]") + g1("", choice={"finish_reason": "stop"}))
    assert events == [
        Ready(4, 5, None),
        SearchResults([SearchResult("https://r1.example/", "R1", "a", "n1", 1), SearchResult("https://r2.example/", "R2", "b", "n2", None)]),
        Citation("citation", 1, "https://r1.example/", "R1"),
        Citation("citation", 2, "https://r2.example/", "R2"),
        AnswerDelta("See [citation:1]"),
        Usage(2),
        Finish("stop"),
    ]


def test_g1_backend_busy_is_an_error() -> None:
    events = parse(g1("Hi") + g1("", choice={"finish_reason": "backend_busy"}))
    assert events[-1] == StreamError(ErrorKind.UNAVAILABLE, "upstream backend busy", "backend_busy")


def test_done_alone_is_a_normal_end() -> None:
    assert parse(g1("Hi") + b"data: [DONE]\n\n")[-1] == Finish("stop")
    assert parse(b"data: [DONE]\n\n") == [Finish("stop")]


# --------------------------------------------------------------------------- errors and missing terminals


def test_eof_without_terminal_is_a_protocol_error() -> None:
    parser = StreamParser()
    assert parser.feed(READY + snapshot(answer(3, "half"))) == [Ready(1, 2, "default"), AnswerDelta("half")]
    assert not parser.finished
    (error,) = parser.close()
    assert type(error) is StreamError and error.kind is ErrorKind.PROTOCOL
    assert parser.finished and parser.terminal is error
    assert parser.close() == []


def test_empty_body_is_a_protocol_error() -> None:
    (error,) = StreamParser().close()
    assert type(error) is StreamError and error.kind is ErrorKind.PROTOCOL


def test_close_without_status_is_an_error() -> None:
    events = parse(READY + snapshot(answer(3, "half")) + CLOSE)
    assert events[:2] == [Ready(1, 2, "default"), AnswerDelta("half")]
    assert events[2:] == [StreamError(ErrorKind.UNAVAILABLE, "upstream closed the stream without a final status")]


def test_finish_event_alone_is_not_a_terminal() -> None:
    events = parse(snapshot(answer(3, "x")) + named("finish", {}))
    assert type(events[-1]) is StreamError and events[-1].kind is ErrorKind.PROTOCOL


@pytest.mark.parametrize(
    ("hint", "kind"),
    [
        ({"type": "error", "content": "Messages too frequent. Try again later.", "clear_response": True, "finish_reason": "rate_limit_reached"}, ErrorKind.RATE_LIMITED),
        ({"type": "error", "content": "Content is too long. Please shorten it and try again.", "clear_response": True, "finish_reason": "input_exceeds_limit"}, ErrorKind.INPUT_TOO_LONG),
        ({"type": "error", "content": "too long", "clear_response": False, "finish_reason": "context_length_exceeded"}, ErrorKind.INPUT_TOO_LONG),
        ({"type": "error", "content": "Server is temporarily unavailable.", "finish_reason": "generation_err"}, ErrorKind.UNAVAILABLE),
    ],
)
def test_hint_errors(hint: dict[str, Any], kind: ErrorKind) -> None:
    events = parse(READY + named("update_session", {"updated_at": 1.0}) + named("hint", hint) + CLOSE)
    assert events == [Ready(1, 2, "default"), StreamError(kind, hint["content"], hint["finish_reason"], bool(hint.get("clear_response")))]


def test_non_error_hint_is_ignored() -> None:
    events = parse(snapshot(answer(3, "x")) + named("hint", {"type": "notice", "content": "fyi"}) + FINISHED)
    assert events == [AnswerDelta("x"), Finish("stop")]


def test_bare_busy_error_frame() -> None:
    frame = data({"type": "error", "content": "A message is being generated, please try again later.", "finish_reason": None})
    events = parse(READY + frame + CLOSE)
    assert events == [
        Ready(1, 2, "default"),
        StreamError(ErrorKind.BUSY, "A message is being generated, please try again later.", None, False),
    ]


def test_invalid_json_frame_is_a_protocol_error() -> None:
    events = parse(snapshot(answer(3, "x")) + b'data: {"v":"broken\n\n' + FINISHED)
    assert events[0] == AnswerDelta("x")
    assert type(events[1]) is StreamError and events[1].kind is ErrorKind.PROTOCOL
    assert len(events) == 2


# --------------------------------------------------------------------------- transport shapes


def full_stream() -> bytes:
    return (
        READY
        + b": \n\n"
        + named("update_session", {"updated_at": 1.5})
        + snapshot(think(2, "我们"))
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "想😊"})
        + data({"v": "\n"})
        + data({"p": "response/fragments/-1/elapsed_secs", "o": "SET", "v": 0.7})
        + data({"p": "response/fragments", "o": "APPEND", "v": [answer(3, "你好")]})
        + data({"p": "response/fragments/-1/content", "v": "，世界"})
        + data({"v": " "})
        + data({"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 12}, {"p": "quasi_status", "v": "FINISHED"}]})
        + FINISHED
        + named("title", {"content": "问候"})
        + CLOSE
    )


FULL_EVENTS = [
    Ready(1, 2, "default"),
    ReasoningDelta("我们"),
    ReasoningDelta("想😊"),
    ReasoningDelta("\n"),
    AnswerDelta("你好"),
    AnswerDelta("，世界"),
    AnswerDelta(" "),
    Usage(12),
    Finish("stop"),
    Title("问候"),
]


def test_full_stream() -> None:
    parser = StreamParser()
    assert parse(full_stream(), parser) == FULL_EVENTS
    assert parser.token_usage == 12 and parser.title == "问候" and parser.model_type == "default"


def test_full_stream_one_byte_at_a_time() -> None:
    assert parse_bytewise(full_stream()) == FULL_EVENTS


def test_full_stream_with_crlf() -> None:
    assert parse(full_stream().replace(b"\n", b"\r\n")) == FULL_EVENTS
    assert parse_bytewise(full_stream().replace(b"\n", b"\r\n")) == FULL_EVENTS


def test_multi_line_data_block_is_one_json_document() -> None:
    body = snapshot(answer(3, "a")) + b'data: {"p":"response/fragments/-1/content",\ndata: "o":"APPEND","v":"b"}\n\n' + FINISHED
    assert parse(body) == [AnswerDelta("a"), AnswerDelta("b"), Finish("stop")]


def test_comments_between_and_inside_blocks() -> None:
    body = snapshot(answer(3, "a")) + b": \n\n: ping\ndata: {\"p\":\"response/fragments/-1/content\",\"o\":\"APPEND\",\"v\":\"b\"}\n: x\n\n" + FINISHED
    assert parse(body) == [AnswerDelta("a"), AnswerDelta("b"), Finish("stop")]


# --------------------------------------------------------------------------- continuation (§8)


def test_resume_emits_only_text_beyond_what_was_sent() -> None:
    first = StreamParser()
    first_events = parse(
        READY
        + snapshot(think(2, "abc"))
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "de"})
        + data({"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 40}, {"p": "quasi_status", "v": "INCOMPLETE"}]})
        + data({"p": "response/status", "o": "SET", "v": "INCOMPLETE"})
        + CLOSE,
        first,
    )
    assert reasoning(first_events) == "abcde"
    assert first_events[-1] == Finish("incomplete")

    second = StreamParser(resume_from=first)
    second_events = parse(
        READY
        + snapshot(think(2, "abcdefg"), accumulated_token_usage=40)  # two characters the first stream never sent
        + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "h"})
        + data({"p": "response/fragments", "o": "APPEND", "v": [answer(3, "X")]})
        + data({"p": "response/fragments/-1/content", "v": "Y"})
        + data({"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 55}, {"p": "quasi_status", "v": "FINISHED"}]})
        + FINISHED
        + CLOSE,
        second,
    )
    assert second_events == [
        Ready(1, 2, "default"),
        ReasoningDelta("fg"),
        ReasoningDelta("h"),
        AnswerDelta("X"),
        AnswerDelta("Y"),
        Usage(55),
        Finish("stop"),
    ]


def test_resume_does_not_repeat_citations_or_search_results() -> None:
    ref_batch = {"p": "response/fragments/-1", "o": "BATCH", "v": [{"p": "content", "o": "APPEND", "v": "[reference:0]"}, {"p": "references", "o": "SET", "v": [{"id": 17, "type": "TOOL_OPEN"}]}]}
    first = StreamParser()
    parse(search_fragments() + data({"p": "response/fragments", "o": "APPEND", "v": [answer(27, "A")]}) + data(ref_batch) + data({"p": "response/status", "o": "SET", "v": "INCOMPLETE"}), first)

    resent = answer(27, "A[reference:0]")
    resent["references"] = [{"id": 17, "type": "TOOL_OPEN"}]
    parts = json.loads(search_fragments()[6:])["v"]["response"]["fragments"]
    second = StreamParser(resume_from=first)
    events = parse(snapshot(*parts, resent) + data({"p": "response/fragments/-1/content", "o": "APPEND", "v": "B"}) + FINISHED, second)
    assert events == [AnswerDelta("B"), Finish("stop")]


def test_without_resume_the_snapshot_is_emitted_whole() -> None:
    events = parse(snapshot(think(2, "abcdefg")) + FINISHED)
    assert events == [ReasoningDelta("abcdefg"), Finish("stop")]


# --------------------------------------------------------------------------- Text


def test_text_appends_tail_and_str_across_compaction() -> None:
    text = Text("ab")
    for i in range(1200):
        text.append(str(i % 10))
    expected = "ab" + "".join(str(i % 10) for i in range(1200))
    assert len(text) == 1202
    assert text.tail(1202) == ""
    assert text.tail(1199) == expected[1199:]
    assert text.tail(700) == expected[700:]
    assert text.tail(0) == expected
    assert str(text) == expected
    text.append("Z")
    assert text.tail(1201) == "9Z"
    assert str(text) == expected + "Z"
