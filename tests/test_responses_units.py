"""The Responses dialect's pure parts: request parsing, the two sinks, the store.

Sinks are fed synthetic answer events (what the relay core calls) and every event
and object they produce is validated against OpenAI's schemas.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ds2a.api.errors import ApiError
from ds2a.api.models import ModelTable
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.relay.answer import Annotation, Outcome
from ds2a.relay.conversation import Reasoning, Text, ToolCall, ToolResult
from ds2a.responses.encode import CollectSink, ResponseEnvelope, StreamSink
from ds2a.responses.parse import ResponsesRequest, parse_responses_request
from ds2a.responses.store import MemoryStore, StoredResponse
from openai_schema import validate
from responses_events import check_event, check_events, check_response, parse_sse

MODELS = ModelTable.default()


def parse(**body: Any) -> ResponsesRequest:
    body.setdefault("model", "deepseek-chat")
    return parse_responses_request(json.dumps(body).encode(), MODELS)


def refused(status: int = 400, **body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(**body)
    assert info.value.status == status, info.value.message
    return info.value


# --- parsing: input -----------------------------------------------------------------


def test_string_input_is_one_user_message_after_the_instructions() -> None:
    req = parse(input="Hello", instructions="Be brief.")
    conv = req.conversation()
    assert [(m.role, m.text) for m in conv.messages] == [("system", "Be brief."), ("user", "Hello")]
    assert req.stream is False and req.store is True and req.max_output_tokens is None
    (item,) = req.input_items
    assert item["id"].startswith("msg_") and item["content"] == [{"type": "input_text", "text": "Hello"}]
    validate(item, "Item")


def test_items_become_messages_with_calls_results_and_reasoning() -> None:
    req = parse(
        input=[
            {"type": "message", "id": "msg_dev", "role": "developer",
             "content": [{"type": "input_text", "text": "Rules."}]},
            {"role": "system", "content": "More rules."},
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}],
             "encrypted_content": "opaque"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_x",
             "output": [{"type": "input_text", "text": "part one"}, {"type": "input_text", "text": "part two"}]},
        ]
    )
    messages = req.conversation().messages
    assert [m.role for m in messages] == ["system", "system", "user", "assistant", "tool", "tool"]
    assert messages[2].parts == [Text("a"), Text("b")]
    assert messages[3].parts == [
        Reasoning("thinking"), Text("Let me look."), ToolCall("call_1", "get_weather", '{"city":"Paris"}')
    ]
    assert messages[4].parts == [ToolResult("call_1", "get_weather", "sunny")]
    assert messages[5].parts == [ToolResult("call_x", None, "part one\npart two")]
    ids = [item["id"] for item in req.input_items]
    assert ids[0] == "msg_dev" and ids[3] == "rs_1" and len(set(ids)) == len(ids)
    assert "encrypted_content" not in req.input_items[3]
    for item in req.input_items:
        validate(item, "Item")


def test_a_codex_cli_request_is_accepted_whole() -> None:
    """The fields and tool types Codex CLI 0.171 sends (seen with the real CLI)."""
    req = parse(
        model="deepseek-chat", stream=True, store=False, include=["reasoning.encrypted_content"],
        reasoning={"summary": "auto"}, parallel_tool_calls=True, prompt_cache_key="0a1b", tool_choice="auto",
        client_metadata={"x-codex-installation-id": "x", "turn_id": "y"}, instructions="",
        tools=[
            {"type": "function", "name": "exec_command", "description": "Runs a command", "strict": False,
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
            {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents",
             "tools": [{"type": "function", "name": "close_agent", "parameters": {"type": "object"}}]},
            {"type": "web_search", "external_web_access": False},
            {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
        ],
        input=[
            {"type": "message", "id": "msg_1", "role": "developer",
             "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "id": "msg_2", "role": "user",
             "content": [{"type": "input_text", "text": "<environment_context>…</environment_context>"}]},
            {"type": "message", "id": "msg_3", "role": "user",
             "content": [{"type": "input_text", "text": "say hello"}]},
        ],
    )
    assert [t.name for t in req.tools] == ["exec_command"]  # namespace and custom left out
    assert req.spec.search is False  # web search without external web access is no search
    assert req.stream and not req.store and req.reasoning_summary
    assert [m.role for m in req.conversation().messages] == ["system", "user", "user"]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_image", "image_url": "https://example.com/a.png"}, "input[0].content[1]"),
        ({"type": "input_file", "file_id": "file_1"}, "input[0].content[1]"),
        ({"type": "input_audio", "input_audio": {}}, "input[0].content[1]"),
    ],
)
def test_images_files_and_audio_are_a_clear_400(part: dict[str, Any], param: str) -> None:
    err = refused(input=[{"role": "user", "content": [{"type": "input_text", "text": "look"}, part]}])
    assert err.param == param and err.code == "unsupported_content"
    assert "text only" in err.message


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"type": "message", "content": "x"}]}, "input[0].role", "missing_required_parameter"),
        ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content", "invalid_type"),
        ({"input": [{"role": "user", "content": [{"type": "video"}]}]}, "input[0].content[0].type", "invalid_value"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id", "missing_required_parameter"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output",
         "missing_required_parameter"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "unsupported_value"),
        ({"input": [{"type": "telepathy"}]}, "input[0].type", "invalid_value"),
        ({"input": ["hi"]}, "input[0]", "invalid_type"),
        ({"input": 42}, "input", "invalid_type"),
        ({"input": None}, "input", "missing_required_parameter"),
        ({"instructions": ["x"]}, "instructions", "invalid_type"),
        ({"max_output_tokens": 0}, "max_output_tokens", "integer_below_min_value"),
        ({"max_output_tokens": "9"}, "max_output_tokens", "invalid_type"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"metadata": {"k": 1}}, "metadata.k", "invalid_type"),
        ({"previous_response_id": ""}, "previous_response_id", "empty_string"),
        ({"background": True}, "background", "unsupported_value"),
        ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "missing_required_parameter"),
        ({"tools": [{"name": "f"}]}, "tools[0].type", "missing_required_parameter"),
        ({"tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
        ({"tools": [{"type": "function", "name": "f", "parameters": "x"}]}, "tools[0].parameters", "invalid_type"),
    ],
)
def test_bad_fields_are_a_400_naming_the_field(body: dict[str, Any], param: str, code: str) -> None:
    body.setdefault("input", "hi")
    body = {k: v for k, v in body.items() if v is not None}
    err = refused(**body)
    assert (err.param, err.code) == (param, code), err.message


def test_a_continuation_may_come_without_new_input() -> None:
    req = parse(previous_response_id="resp_1", instructions="Go on.")
    assert req.input_items == [] and req.previous_response_id == "resp_1"


def test_body_that_is_not_a_json_object_is_a_400() -> None:
    for raw in (b"", b"{", b"[1]", b'{"model": NaN}'):
        with pytest.raises(ApiError) as info:
            parse_responses_request(raw, MODELS)
        assert info.value.status == 400


def test_an_unknown_model_is_a_404_after_the_fields_are_checked() -> None:
    assert refused(404, model="gpt-9", input="hi").code == "model_not_found"
    assert refused(model="gpt-9", input=5).param == "input"


def test_unknown_and_ignored_fields_are_accepted() -> None:
    req = parse(
        input="hi", store=True, truncation="auto", service_tier="auto", user="u", safety_identifier="s",
        metadata={"k": "v"}, temperature=0.2, top_p=0.9, top_logprobs=2, max_tool_calls=3,
        stream_options={"include_obfuscation": False}, some_future_field={"x": 1},
    )
    assert req.echo["metadata"] == {"k": "v"} and req.echo["temperature"] == 0.2


# --- parsing: tools, tool choice, output format, reasoning --------------------------------


def test_function_tools_and_choices() -> None:
    tools = [{"type": "function", "name": "get_weather", "description": "Weather", "strict": True,
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
             {"type": "function", "name": "get_time"}]
    req = parse(input="hi", tools=tools)
    assert [t.name for t in req.tools] == ["get_weather", "get_time"]
    assert req.tools[0].strict and req.tools[1].parameters == {"type": "object", "properties": {}}
    assert req.tool_choice.mode == "auto"
    assert parse(input="hi", tools=tools, tool_choice="required").tool_choice.mode == "required"
    assert parse(input="hi", tools=tools, tool_choice="none").conversation().uses_tools is False
    forced = parse(input="hi", tools=tools, tool_choice={"type": "function", "name": "get_time"}).tool_choice
    assert (forced.mode, forced.name) == ("tool", "get_time")
    allowed = parse(input="hi", tools=tools, tool_choice={
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]})
    assert [t.name for t in allowed.tools] == ["get_time"] and allowed.tool_choice.mode == "required"


def test_web_search_switches_to_the_search_model() -> None:
    for tool in ({"type": "web_search"}, {"type": "web_search_preview"}, {"type": "web_search_2025_08_26"}):
        req = parse(input="news?", tools=[tool])
        assert req.spec.search and not req.spec.thinking and req.tools == []
    assert parse(model="deepseek-reasoner", input="x", tools=[{"type": "web_search"}]).spec.thinking
    forced = parse(input="news?", tools=[{"type": "web_search_preview"}], tool_choice={"type": "web_search_preview"})
    assert forced.spec.search and forced.tool_choice.mode == "auto"
    assert parse(input="news?", tools=[{"type": "web_search"}], tool_choice="required").spec.search


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"},
        {"type": "image_generation"},
        {"type": "mcp", "server_label": "x", "server_url": "https://example.com"},
        {"type": "local_shell"},
        {"type": "custom", "name": "apply_patch"},
        {"type": "namespace", "name": "ns", "tools": []},
        {"type": "a_tool_from_the_future"},
    ],
)
def test_tools_the_upstream_cannot_run_are_tolerated_but_never_forced(tool: dict[str, Any]) -> None:
    req = parse(input="hi", tools=[tool, {"type": "function", "name": "f"}])
    assert [t.name for t in req.tools] == ["f"] and not req.spec.search
    err = refused(input="hi", tools=[tool], tool_choice={"type": tool["type"], "name": "x"})
    assert err.param == "tool_choice" and err.code == "unsupported_value" and tool["type"] in err.message
    err = refused(input="hi", tools=[tool], tool_choice="required")
    assert err.param == "tool_choice"


def test_tool_choice_naming_an_unknown_function_is_a_400() -> None:
    err = refused(input="hi", tools=[{"type": "function", "name": "f"}], tool_choice={"type": "function", "name": "g"})
    assert err.param == "tool_choice.name"
    assert refused(input="hi", tool_choice="sometimes").param == "tool_choice"


def test_text_formats() -> None:
    assert parse(input="hi").output.kind == "text"
    assert parse(input="hi", text={"format": {"type": "json_object"}}).output.kind == "json_object"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    out = parse(input="hi", text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True},
                                  "verbosity": "low"}).output
    assert (out.kind, out.name, out.schema, out.strict) == ("json_schema", "thing", schema, True)


def test_reasoning_summary_decides_how_thoughts_go_out() -> None:
    assert parse(input="x", reasoning={"summary": "auto"}).reasoning_summary
    assert parse(input="x", reasoning={"generate_summary": "concise"}).reasoning_summary
    assert not parse(input="x", reasoning={"effort": "high"}).reasoning_summary
    assert not parse(input="x").reasoning_summary


def test_the_echo_makes_a_valid_response_object() -> None:
    req = parse(
        input="hi", instructions="Be brief.", metadata={"k": "v"}, max_output_tokens=50, temperature=0.5,
        reasoning={"effort": "low", "summary": "auto"}, parallel_tool_calls=False,
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}},
               {"type": "web_search_preview"}, {"type": "namespace", "name": "n", "tools": []}],
        tool_choice={"type": "function", "name": "f"},
        text={"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
    )
    body = ResponseEnvelope(req.model, req.echo).body("in_progress", [])
    check_response(body)
    assert body["tools"] == [
        {"type": "function", "name": "f", "description": None, "parameters": {"type": "object", "properties": {}},
         "strict": False},
        {"type": "web_search_preview"},
    ]
    assert body["tool_choice"] == {"type": "function", "name": "f"} and body["parallel_tool_calls"] is False
    assert body["instructions"] == "Be brief." and body["max_output_tokens"] == 50
    allowed = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]}
    for choice in ("none", "required", allowed):
        req = parse(input="hi", tools=[{"type": "function", "name": "f"}], tool_choice=choice)
        check_response(ResponseEnvelope(req.model, req.echo).body("in_progress", []))


# --- sinks ----------------------------------------------------------------------------------


class FakeResponder:
    paused = False

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        pass


def envelope(**echo: Any) -> ResponseEnvelope:
    req = parse(input="hi", **echo)
    return ResponseEnvelope("deepseek-chat", req.echo)


def run_stream(
    feed: Any, outcome: Outcome, *, summary: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any], FakeResponder]:
    responder = FakeResponder()
    sink = StreamSink(responder, envelope(), summary=summary)  # type: ignore[arg-type]
    sink.begin()
    feed(sink)
    body = sink.finish(outcome)
    sink.flush()
    events = check_events(parse_sse(b"".join(responder.writes)))
    assert events[-1]["response"] == body
    check_response(body)
    return events, body, responder


def run_collect(feed: Any, outcome: Outcome, *, summary: bool = False) -> dict[str, Any]:
    sink = CollectSink(envelope(), summary=summary)
    feed(sink)
    body = sink.finish(outcome)
    check_response(body)
    return body


def both(feed: Any, outcome: Outcome, **kw: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Streamed and collected alike: the same items, texts and status (ids differ)."""
    events, streamed, _ = run_stream(feed, outcome, **kw)
    collected = run_collect(feed, outcome, **kw)

    def shape(body: dict[str, Any]) -> Any:
        return [{k: v for k, v in item.items() if k != "id"} for item in body["output"]], body["status"]

    assert shape(streamed) == shape(collected)
    return events, streamed


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_a_text_answer_streams_the_official_sequence() -> None:
    def feed(sink: Any) -> None:
        sink.text("Hello")
        sink.flush()
        sink.text(", world")
        sink.flush()

    events, body = both(feed, Outcome(prompt_tokens=7, completion_tokens=3))
    assert kinds(events) == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert [e["delta"] for e in events if e["type"].endswith("text.delta")] == ["Hello", ", world"]
    (message,) = body["output"]
    assert message["content"][0]["text"] == "Hello, world" and message["status"] == "completed"
    assert body["status"] == "completed" and body["completed_at"] is not None
    assert body["usage"] == {
        "input_tokens": 7, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10,
    }


def test_one_write_per_flush() -> None:
    def feed(sink: Any) -> None:
        for word in ("one", " two", " three"):
            sink.text(word)
        sink.flush()
        sink.text(" four")
        sink.flush()
        sink.flush()  # nothing new: no write

    _, _, responder = run_stream(feed, Outcome())
    # begin, the first read (added + part + three deltas), the second read, the closing events, the terminal event
    assert len(responder.writes) == 5
    assert responder.writes[1].count(b"event: response.output_text.delta") == 3


@pytest.mark.parametrize("summary", [False, True])
def test_thoughts_become_a_reasoning_item_before_the_message(summary: bool) -> None:
    def feed(sink: Any) -> None:
        sink.reasoning("Let me think")
        sink.reasoning(" hard.")
        sink.flush()
        sink.text("42")
        sink.flush()

    events, body = both(feed, Outcome(completion_tokens=5, reasoning_tokens=2), summary=summary)
    reasoning, message = body["output"]
    if summary:
        assert reasoning["summary"] == [{"type": "summary_text", "text": "Let me think hard."}]
        assert "content" not in reasoning
        expected = ["response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
                    "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
                    "response.reasoning_summary_part.done"]
    else:
        assert reasoning["summary"] == []
        assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me think hard."}]
        expected = ["response.content_part.added", "response.reasoning_text.delta", "response.reasoning_text.delta",
                    "response.reasoning_text.done", "response.content_part.done"]
    assert kinds(events)[2:9] == ["response.output_item.added", *expected, "response.output_item.done"]
    assert message["content"][0]["text"] == "42"
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 2


def test_tool_calls_become_function_call_items() -> None:
    def feed(sink: Any) -> None:
        sink.text("Checking.")
        sink.tool_call_start(0, "call_a", "get_weather")
        sink.tool_call_arguments(0, '{"city":')
        sink.tool_call_arguments(0, '"Paris"}')
        sink.tool_call_end(0)
        sink.tool_call_start(1, "call_b", "get_time")
        sink.tool_call_arguments(1, "{}")
        sink.tool_call_end(1)
        sink.flush()

    events, body = both(feed, Outcome(finish_reason="tool_calls", tool_calls=2))
    message, first, second = body["output"]
    assert message["type"] == "message" and message["content"][0]["text"] == "Checking."
    assert {k: first[k] for k in ("type", "call_id", "name", "arguments", "status")} == {
        "type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": '{"city":"Paris"}',
        "status": "completed"}
    assert second["call_id"] == "call_b" and second["arguments"] == "{}"
    assert body["status"] == "completed"
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ['{"city":', '"Paris"}', "{}"]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"]) for e in done] == [("get_weather", '{"city":"Paris"}'), ("get_time", "{}")]


def test_a_length_cut_is_incomplete() -> None:
    events, body = both(lambda s: s.text("The answer is long"), Outcome(finish_reason="length"))
    assert kinds(events)[-1] == "response.incomplete"
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["completed_at"] is None


def test_a_content_filter_puts_the_refusal_in_place_of_the_answer() -> None:
    outcome = Outcome(finish_reason="content_filter", replacement="Sorry, I cannot help with that.")
    _, body = both(lambda s: s.text("Something the upstream withdrew"), outcome)
    assert body["incomplete_details"] == {"reason": "content_filter"}
    assert body["output"][0]["content"][0]["text"] == "Sorry, I cannot help with that."


def test_an_upstream_failure_mid_answer_is_response_failed() -> None:
    outcome = Outcome(error=DeepSeekError(ErrorKind.TIMEOUT, "the upstream went silent"))
    events, body = both(lambda s: s.text("Half an ans"), outcome)
    assert kinds(events)[-1] == "response.failed"
    assert body["status"] == "failed" and body["error"]["code"] == "server_error"
    assert "went silent" in body["error"]["message"]
    assert body["output"][0]["status"] == "incomplete"
    limited = run_collect(lambda s: None, Outcome(error=DeepSeekError(ErrorKind.RATE_LIMITED, "slow down")))
    assert limited["error"]["code"] == "rate_limit_exceeded" and limited["output"] == []


def test_an_empty_answer_is_an_empty_message() -> None:
    events, body = both(lambda s: None, Outcome())
    assert body["output"][0]["content"][0]["text"] == ""
    assert "response.output_item.added" in kinds(events)
    _, body = both(lambda s: s.reasoning("only thoughts"), Outcome())
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    _, body = both(
        lambda s: (s.tool_call_start(0, "call_1", "f"), s.tool_call_end(0)), Outcome(finish_reason="tool_calls")
    )
    assert [item["type"] for item in body["output"]] == ["function_call"]


def test_citations_are_url_citation_annotations() -> None:
    text = "Paris is in France [1]. Rome too [2]."
    annotations = [Annotation("https://a.example/paris", "Paris", 19, 22),
                   Annotation("https://b.example/rome", "Rome", 33, 36)]

    def feed(sink: Any) -> None:
        sink.text(text[:10])
        sink.text(text[10:])

    events, body = both(feed, Outcome(annotations=annotations))
    part = body["output"][0]["content"][0]
    assert part["annotations"] == [
        {"type": "url_citation", "url": "https://a.example/paris", "title": "Paris", "start_index": 19,
         "end_index": 22},
        {"type": "url_citation", "url": "https://b.example/rome", "title": "Rome", "start_index": 33,
         "end_index": 36},
    ]
    assert text[19:22] == "[1]"
    added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [e["annotation_index"] for e in added] == [0, 1]


def test_fail_ends_the_stream_as_failed() -> None:
    responder = FakeResponder()
    sink = StreamSink(responder, envelope())  # type: ignore[arg-type]
    sink.begin()
    sink.text("partial")
    sink.flush()
    body = sink.fail("the gateway is shutting down")
    events = check_events(parse_sse(b"".join(responder.writes)))
    assert events[-1]["type"] == "response.failed" and body["error"]["message"] == "the gateway is shutting down"


def test_unicode_and_control_characters_survive_the_templates() -> None:
    text = 'He said "hi"\n\t— 你好 \\ \u2028 😀'

    def feed(sink: Any) -> None:
        sink.reasoning(text)
        sink.text(text)
        sink.tool_call_start(0, "call_1", "f")
        sink.tool_call_arguments(0, json.dumps({"q": text}))
        sink.tool_call_end(0)

    events, body = both(feed, Outcome(finish_reason="tool_calls"))
    deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
    assert deltas == [text, text, json.dumps({"q": text})]
    for event in events:
        check_event(event)


# --- store ------------------------------------------------------------------------------------


def record(response_id: str, size: int = 10, output: list[dict[str, Any]] | None = None) -> StoredResponse:
    response = envelope().body("completed", output or [], usage=None)
    response["id"] = response_id
    return StoredResponse(response, [{"id": f"msg_{response_id}", "type": "message"}], [], "owner", size)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_store_is_bounded_in_count_age_and_bytes() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = MemoryStore(max_count=3, max_age=60, max_bytes=100, clock=clock)
        for n in range(4):
            await store.put(record(f"r{n}"))
        assert [await store.get(f"r{n}") is not None for n in range(4)] == [False, True, True, True]
        clock.now += 61
        assert await store.get("r3") is None and len(store) == 2  # expired on read
        await store.put(record("big", size=95))
        await store.put(record("small", size=10))
        assert await store.get("big") is None and await store.get("small") is not None  # bytes bound
        await store.put(record("huge", size=101))
        assert await store.get("huge") is None and store.bytes <= 100
        assert await store.delete("small") and not await store.delete("small")
        assert store.bytes == 0

    asyncio.run(scenario())


def test_a_record_round_trips_and_continues_its_conversation() -> None:
    out = [{"id": "msg_out", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "4", "annotations": [], "logprobs": []}]}]
    rec = record("r1", output=out)
    rec.history = [{"id": "msg_old", "type": "message", "role": "user", "content": []}]
    again = StoredResponse.from_json(rec.to_json())
    assert again == rec
    assert [i["id"] for i in again.conversation()] == ["msg_old", "msg_r1", "msg_out"]
    assert [i["id"] for i in again.context()] == ["msg_old", "msg_r1"]
