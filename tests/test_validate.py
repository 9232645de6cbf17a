"""Request validation and the model table: every refusal with its status, param and code."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai_schema import validate as schema_validate

from ds2a.api.errors import ApiError
from ds2a.api.models import ModelSpec, ModelTable
from ds2a.api.validate import ChatRequest, parse_chat_request
from ds2a.config import ApiConfig, ConfigError, DeepSeekConfig
from ds2a.relay.conversation import Conversation, Message, Text, Tool, ToolCall, ToolResult

MODELS = ModelTable.default()
HI = [{"role": "user", "content": "Hi"}]


def parse(body: dict[str, Any] | bytes) -> ChatRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_chat_request(raw, MODELS)


def refuse(body: dict[str, Any] | bytes) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body)
    return info.value


def req(**fields: Any) -> dict[str, Any]:
    return {"model": "deepseek-chat", "messages": HI, **fields}


# --- model table -------------------------------------------------------------------------


def test_default_table_flags() -> None:
    table = ModelTable.default("default")
    expected = {
        "deepseek-chat": (False, False),
        "deepseek-reasoner": (True, False),
        "deepseek-chat-search": (False, True),
        "deepseek-reasoner-search": (True, True),
        "deepseek-v3": (False, False),
        "deepseek-r1": (True, False),
        "deepseek-v3-search": (False, True),
        "deepseek-r1-search": (True, True),
    }
    for name, (thinking, search) in expected.items():
        spec = table.resolve(name)
        assert (spec.thinking, spec.search, spec.model_type) == (thinking, search, "default"), name


def test_alias_resolves_to_the_canonical_spec() -> None:
    assert MODELS.resolve("deepseek-r1").id == "deepseek-reasoner"


def test_model_type_comes_from_config() -> None:
    table = ModelTable.from_config(ApiConfig(), DeepSeekConfig(model_type="expert"))
    assert table.resolve("deepseek-chat").model_type == "expert"


def test_unknown_model_is_404_listing_the_available_ones() -> None:
    with pytest.raises(ApiError) as info:
        MODELS.resolve("gpt-4o")
    err = info.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "'gpt-4o'" in err.message
    assert "deepseek-chat, deepseek-reasoner" in err.message and "deepseek-r1-search" in err.message


def test_list_body_lists_aliases() -> None:
    body = MODELS.list_body()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [
        "deepseek-chat",
        "deepseek-reasoner",
        "deepseek-chat-search",
        "deepseek-reasoner-search",
        "deepseek-v3",
        "deepseek-r1",
        "deepseek-v3-search",
        "deepseek-r1-search",
    ]
    assert {(m["object"], m["owned_by"], m["created"]) for m in body["data"]} == {("model", "deepseek", 1737331200)}


def test_model_bodies_match_openai_schema() -> None:
    schema_validate(MODELS.list_body(), "ListModelsResponse")
    schema_validate(MODELS.model_body("deepseek-r1"), "Model")


def test_model_body() -> None:
    body = MODELS.model_body("deepseek-v3")
    assert body == {"id": "deepseek-v3", "object": "model", "created": 1737331200, "owned_by": "deepseek"}
    with pytest.raises(ApiError) as info:
        MODELS.model_body("nope")
    assert info.value.status == 404


def test_config_table_replaces_the_default() -> None:
    api = ApiConfig(
        models=[
            {"id": "ds-think", "thinking": True, "search": False, "aliases": ["t"]},
            {"id": "ds-vision", "thinking": False, "search": True, "model_type": "vision", "owned_by": "me"},
        ]
    )
    table = ModelTable.from_config(api, DeepSeekConfig())
    assert table.names == ["ds-think", "ds-vision", "t"]
    assert table.resolve("t") == ModelSpec("ds-think", thinking=True, search=False, model_type="default")
    assert table.resolve("ds-vision") == ModelSpec("ds-vision", False, True, "vision", owned_by="me")
    with pytest.raises(ApiError):
        table.resolve("deepseek-chat")


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("deepseek-chat", "api.models[0]"),
        ({"thinking": True}, "api.models[0].id"),
        ({"id": "x", "thinking": "yes"}, "api.models[0].thinking"),
        ({"id": "x", "search": 1}, "api.models[0].search"),
        ({"id": "x", "model_type": ""}, "api.models[0].model_type"),
        ({"id": "x", "aliases": "y"}, "api.models[0].aliases"),
        ({"id": "x", "color": "red"}, "api.models[0].color"),
    ],
)
def test_bad_config_entries_name_the_field(entry: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelTable.from_config(ApiConfig(models=[entry]), DeepSeekConfig())
    assert str(info.value).startswith(field + ":")


@pytest.mark.parametrize(
    "models",
    [
        [{"id": "a"}, {"id": "a"}],
        [{"id": "a"}, {"id": "b", "aliases": ["a"]}],
        [{"id": "a", "aliases": ["x"]}, {"id": "b", "aliases": ["x"]}],
    ],
)
def test_duplicate_names_in_config(models: list[dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match="api.models"):
        ModelTable.from_config(ApiConfig(models=models), DeepSeekConfig())


# --- accepted requests ---------------------------------------------------------------------


def test_minimal_request_defaults() -> None:
    r = parse(req())
    assert r == ChatRequest(
        model="deepseek-chat",
        spec=ModelSpec("deepseek-chat", False, False, "default"),
        conversation=Conversation([Message("user", [Text("Hi")])]),
        stream=False,
        include_usage=False,
        max_tokens=None,
        stop=[],
    )


def test_alias_is_kept_as_sent() -> None:
    r = parse(req(model="deepseek-r1"))
    assert r.model == "deepseek-r1" and r.spec.id == "deepseek-reasoner" and r.spec.thinking


def test_stream_and_usage() -> None:
    r = parse(req(stream=True, stream_options={"include_usage": True}))
    assert (r.stream, r.include_usage) == (True, True)
    assert parse(req(stream=True, stream_options=None)).include_usage is False
    assert parse(req(stream=None)).stream is False


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 50}, 50),
        ({"max_tokens": 100, "max_completion_tokens": 50}, 50),
        ({"max_tokens": 30, "max_completion_tokens": 50}, 30),
        ({"max_tokens": None}, None),
    ],
)
def test_max_tokens_the_smaller_wins(fields: dict[str, Any], expected: int | None) -> None:
    assert parse(req(**fields)).max_tokens == expected


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("END", ["END"]),
        (["a", "b", "c", "d"], ["a", "b", "c", "d"]),
        (["x", "x"], ["x"]),
        (None, []),
        ([], []),
    ],
)
def test_stop_forms(stop: Any, expected: list[str]) -> None:
    assert parse(req(stop=stop)).stop == expected


def pairs(r: Any) -> list[tuple[str, str]]:
    """Each message's role and text (tool calls and results are checked as parts)."""
    return [(m.role, m.text) for m in r.conversation.messages]


def test_ignored_parameters_are_accepted() -> None:
    r = parse(
        req(
            temperature=0.2,
            top_p=1,
            frequency_penalty=0,
            presence_penalty=-1.5,
            seed=42,
            user="u-1",
            metadata={"a": "b"},
            logit_bias={"50256": -100},
            parallel_tool_calls=False,
            n=1,
            logprobs=False,
            top_logprobs=0,
            modalities=["text"],
            something_new={"from": "the future"},
        )
    )
    assert pairs(r) == [("user", "Hi")]
    assert r.conversation.parallel_tool_calls is False


def test_text_parts_join_with_newline() -> None:
    content = [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]
    assert pairs(parse(req(messages=[{"role": "user", "content": content}]))) == [("user", "line 1\nline 2")]


def test_roles_are_normalised() -> None:
    messages = [
        {"role": "developer", "content": "dev"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "u", "name": "alice"},
        {"role": "assistant", "content": "a"},
        {"role": "function", "name": "lookup", "content": "42"},
    ]
    r = parse(req(messages=messages))
    assert pairs(r)[:4] == [("developer", "dev"), ("system", "sys"), ("user", "u"), ("assistant", "a")]
    assert r.conversation.messages[4] == Message("tool", [ToolResult("", "lookup", "42")])


def test_tool_calls_and_results_become_parts() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "?"},
    ]
    r = parse(req(messages=messages, tools=[{"type": "function", "function": {"name": "get_weather"}}]))
    assert r.conversation.messages[1:] == [
        Message(
            "assistant",
            [Text(""), ToolCall("call_1", "get_weather", '{"city":"Paris"}'), ToolCall("call_2", "get_time", "{}")],
        ),
        Message("tool", [ToolResult("call_1", None, "18C")]),
        Message("tool", [ToolResult("call_2", None, "noon")]),
        Message("tool", [ToolResult("call_9", None, "?")]),
    ]
    assert [t.name for t in r.conversation.tools] == ["get_weather"]


def test_assistant_text_comes_before_its_tool_calls() -> None:
    messages = [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
        },
        {"role": "assistant", "content": None, "function_call": {"name": "g", "arguments": "{}"}},
    ]
    assert parse(req(messages=messages)).conversation.messages == [
        Message("assistant", [Text("Let me check."), ToolCall("c", "f", '{"x": 1}')]),
        Message("assistant", [Text(""), ToolCall("", "g", "{}")]),
    ]


def test_assistant_without_content_or_with_refusal() -> None:
    messages = [{"role": "assistant"}, {"role": "assistant", "content": None, "refusal": "I can't."}]
    assert pairs(parse(req(messages=messages))) == [("assistant", ""), ("assistant", "I can't.")]


def test_assistant_refusal_part() -> None:
    messages = [{"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}]
    assert pairs(parse(req(messages=messages))) == [("assistant", "No.")]


@pytest.mark.parametrize(
    "choice", ["auto", "none", None, {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}]
)
def test_tools_accepted_when_not_forced(choice: Any) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    r = parse(req(tools=tools, tool_choice=choice))
    assert pairs(r) == [("user", "Hi")]
    assert r.conversation.tools == [Tool("f", "", {})]
    assert not r.conversation.tool_choice.forces_call


def test_utf8_and_utf16_bodies() -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "你好"}]}
    assert pairs(parse(json.dumps(body, ensure_ascii=False).encode())) == [("user", "你好")]
    assert pairs(parse(json.dumps(body).encode("utf-16"))) == [("user", "你好")]


# --- refusals -------------------------------------------------------------------------------------


def _msgs(*messages: Any) -> dict[str, Any]:
    return req(messages=list(messages))


CASES: list[tuple[str, dict[str, Any] | bytes, int, str | None, str, str]] = [
    # (id, body, status, param, code, words the message must contain)
    ("empty body", b"", 400, None, "invalid_json", "empty"),
    ("whitespace body", b" \n", 400, None, "invalid_json", "empty"),
    ("malformed json", b'{"model": "deepseek-chat",', 400, None, "invalid_json", "not valid JSON"),
    ("bad utf-8", b'{"model": "\xff"}', 400, None, "invalid_json", "not valid JSON"),
    ("NaN", b'{"model": "deepseek-chat", "temperature": NaN, "messages": []}', 400, None, "invalid_json", "NaN"),
    ("deep nesting", b"[" * 100000 + b"]" * 100000, 400, None, "invalid_json", "not valid JSON"),
    ("array body", b"[1, 2]", 400, None, "invalid_type", "JSON object"),
    ("string body", b'"hi"', 400, None, "invalid_type", "JSON object"),
    ("no model", {"messages": HI}, 400, "model", "missing_required_parameter", "'model'"),
    ("null model", {"model": None, "messages": HI}, 400, "model", "missing_required_parameter", "'model'"),
    ("model not string", {"model": 3, "messages": HI}, 400, "model", "invalid_type", "an integer"),
    ("unknown model", {"model": "gpt-4o", "messages": HI}, 404, "model", "model_not_found", "gpt-4o"),
    ("empty model", {"model": "", "messages": HI}, 404, "model", "model_not_found", "deepseek-chat"),
    ("no messages", {"model": "deepseek-chat"}, 400, "messages", "missing_required_parameter", "'messages'"),
    ("messages not list", req(messages={"role": "user"}), 400, "messages", "invalid_type", "an array"),
    ("messages empty", req(messages=[]), 400, "messages", "empty_array", "empty array"),
    ("message not object", _msgs("hi"), 400, "messages[0]", "invalid_type", "an object"),
    ("no role", _msgs({"content": "x"}), 400, "messages[0].role", "missing_required_parameter", "role"),
    ("role not string", _msgs({"role": 1, "content": "x"}), 400, "messages[0].role", "invalid_type", "a string"),
    ("bad role", _msgs({"role": "robot", "content": "x"}), 400, "messages[0].role", "invalid_value", "'robot'"),
    ("user no content", _msgs({"role": "user"}), 400, "messages[0].content", "missing_required_parameter", "content"),
    (
        "user null content",
        _msgs({"role": "user", "content": None}),
        400,
        "messages[0].content",
        "missing_required_parameter",
        "content",
    ),
    (
        "tool no content",
        _msgs({"role": "tool", "tool_call_id": "c"}),
        400,
        "messages[0].content",
        "missing_required_parameter",
        "content",
    ),
    ("content number", _msgs({"role": "user", "content": 5}), 400, "messages[0].content", "invalid_type", "an integer"),
    (
        "content object",
        _msgs({"role": "system", "content": {"text": "x"}}),
        400,
        "messages[0].content",
        "invalid_type",
        "an object",
    ),
    (
        "part not object",
        _msgs({"role": "user", "content": ["x"]}),
        400,
        "messages[0].content[0]",
        "invalid_type",
        "an object",
    ),
    (
        "text part without text",
        _msgs({"role": "user", "content": [{"type": "text"}]}),
        400,
        "messages[0].content[0].text",
        "invalid_type",
        "null",
    ),
    (
        "unknown part",
        _msgs({"role": "user", "content": [{"type": "video"}]}),
        400,
        "messages[0].content[0].type",
        "invalid_value",
        "'video'",
    ),
    (
        "part without type",
        _msgs({"role": "user", "content": [{"text": "x"}]}),
        400,
        "messages[0].content[0].type",
        "invalid_type",
        "null",
    ),
    (
        "image",
        _msgs(
            HI[0],
            {
                "role": "user",
                "content": [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": "data:"}}],
            },
        ),
        400,
        "messages[1].content[1]",
        "unsupported_content",
        "images are not supported by this gateway",
    ),
    (
        "audio",
        _msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
        400,
        "messages[0].content[0]",
        "unsupported_content",
        "audio are not supported",
    ),
    (
        "file",
        _msgs({"role": "user", "content": [{"type": "file", "file": {}}]}),
        400,
        "messages[0].content[0]",
        "unsupported_content",
        "files are not supported",
    ),
    (
        "tool_calls not list",
        _msgs({"role": "assistant", "tool_calls": {}}),
        400,
        "messages[0].tool_calls",
        "invalid_type",
        "an array",
    ),
    (
        "tool call not object",
        _msgs({"role": "assistant", "tool_calls": [1]}),
        400,
        "messages[0].tool_calls[0]",
        "invalid_type",
        "an object",
    ),
    (
        "tool call without function",
        _msgs({"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}),
        400,
        "messages[0].tool_calls[0].function",
        "invalid_type",
        "null",
    ),
    (
        "tool call name number",
        _msgs({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": 1}}]}),
        400,
        "messages[0].tool_calls[0].function.name",
        "invalid_type",
        "an integer",
    ),
    (
        "tool_call_id number",
        _msgs({"role": "tool", "tool_call_id": 7, "content": "x"}),
        400,
        "messages[0].tool_call_id",
        "invalid_type",
        "an integer",
    ),
    (
        "refusal number",
        _msgs({"role": "assistant", "refusal": 1}),
        400,
        "messages[0].refusal",
        "invalid_type",
        "an integer",
    ),
    ("n=2", req(n=2), 400, "n", "unsupported_value", "only n=1"),
    ("n=0", req(n=0), 400, "n", "integer_below_min_value", ">= 1"),
    ("n string", req(n="1"), 400, "n", "invalid_type", "a string"),
    ("stream string", req(stream="true"), 400, "stream", "invalid_type", "a boolean"),
    ("stream_options list", req(stream=True, stream_options=[]), 400, "stream_options", "invalid_type", "an array"),
    (
        "include_usage string",
        req(stream=True, stream_options={"include_usage": "yes"}),
        400,
        "stream_options.include_usage",
        "invalid_type",
        "a string",
    ),
    ("max_tokens zero", req(max_tokens=0), 400, "max_tokens", "integer_below_min_value", ">= 1"),
    (
        "max_completion_tokens negative",
        req(max_completion_tokens=-5),
        400,
        "max_completion_tokens",
        "integer_below_min_value",
        "-5",
    ),
    ("max_tokens float", req(max_tokens=10.5), 400, "max_tokens", "invalid_type", "a number"),
    ("max_tokens bool", req(max_tokens=True), 400, "max_tokens", "invalid_type", "a boolean"),
    ("stop number", req(stop=5), 400, "stop", "invalid_type", "an integer"),
    ("stop too many", req(stop=["a", "b", "c", "d", "e"]), 400, "stop", "array_above_max_length", "maximum length 4"),
    ("stop item number", req(stop=["a", 1]), 400, "stop[1]", "invalid_type", "an integer"),
    ("stop item empty", req(stop=["a", ""]), 400, "stop[1]", "invalid_value", "empty"),
    ("stop empty string", req(stop=""), 400, "stop", "invalid_value", "empty"),
    ("logprobs", req(logprobs=True), 400, "logprobs", "unsupported_value", "not supported"),
    ("top_logprobs", req(top_logprobs=3), 400, "top_logprobs", "unsupported_parameter", "not supported"),
    ("tools not list", req(tools={}), 400, "tools", "invalid_type", "an object"),
    ("tool not object", req(tools=["f"]), 400, "tools[0]", "invalid_type", "a string"),
    ("tool_choice required without tools", req(tool_choice="required"), 400, "tool_choice", "invalid_value", "no 'tools'"),
    (
        "tool_choice names an unknown tool",
        req(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={"type": "function", "function": {"name": "g"}}),
        400,
        "tool_choice",
        "invalid_value",
        "no function named 'g'",
    ),
    (
        "tool_choice allowed required without tools",
        req(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}),
        400,
        "tool_choice",
        "invalid_value",
        "no 'tools'",
    ),
    ("tool custom type", req(tools=[{"type": "custom", "custom": {"name": "f"}}]), 400, "tools[0].type", "invalid_value", "function tools only"),
    ("tool bad name", req(tools=[{"type": "function", "function": {"name": "a b"}}]), 400, "tools[0].function.name", "invalid_value", "does not match"),
    ("tool without function", req(tools=[{"type": "function"}]), 400, "tools[0].function", "missing_required_parameter", "tools[0].function"),
    ("tool parameters not object", req(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]), 400, "tools[0].function.parameters", "invalid_type", "an array"),
    ("response_format bogus", req(response_format={"type": "bogus"}), 400, "response_format.type", "invalid_value", "'bogus'"),
    ("response_format schema missing", req(response_format={"type": "json_schema"}), 400, "response_format.json_schema", "missing_required_parameter", "json_schema"),
    ("tool_choice bogus", req(tool_choice="sometimes"), 400, "tool_choice", "invalid_value", "'sometimes'"),
    ("tool_choice number", req(tool_choice=1), 400, "tool_choice", "invalid_type", "an integer"),
    (
        "function_call names an unknown function",
        req(function_call={"name": "f"}),
        400,
        "function_call",
        "invalid_value",
        "no 'tools'",
    ),
    (
        "temperature string",
        req(temperature="hot"),
        400,
        "temperature",
        "invalid_type",
        "expected a number, but got a string",
    ),
    ("top_p bool", req(top_p=True), 400, "top_p", "invalid_type", "expected a number, but got a boolean"),
    ("seed float", req(seed=1.5), 400, "seed", "invalid_type", "expected an integer, but got a number"),
    ("store string", req(store="yes"), 400, "store", "invalid_type", "expected a boolean"),
    ("user number", req(user=5), 400, "user", "invalid_type", "an integer"),
    ("metadata list", req(metadata=[]), 400, "metadata", "invalid_type", "an array"),
    ("response_format string", req(response_format="json"), 400, "response_format", "invalid_type", "a string"),
    ("audio modality", req(modalities=["text", "audio"]), 400, "modalities", "unsupported_value", "'text'"),
]


@pytest.mark.parametrize(
    ("body", "status", "param", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refusals(body: dict[str, Any] | bytes, status: int, param: str | None, code: str, words: str) -> None:
    err = refuse(body)
    assert (err.status, err.param, err.code) == (status, param, code)
    assert words in err.message
    assert err.type == "invalid_request_error"


def test_refusal_bodies_match_openai_schema() -> None:
    for case in CASES:
        schema_validate(refuse(case[1]).to_dict(), "ErrorResponse")


def test_malformed_json_message_gives_the_position() -> None:
    err = refuse(b'{"model": "deepseek-chat",\n  "messages": [}')
    assert "line 2" in err.message


def test_bad_request_beats_unknown_model() -> None:
    err = refuse({"model": "gpt-4o", "messages": []})
    assert (err.status, err.param) == (400, "messages")


def test_first_bad_message_is_reported() -> None:
    err = refuse(_msgs(HI[0], {"role": "user", "content": 1}, {"role": "bad", "content": "x"}))
    assert err.param == "messages[1].content"


# --- tools, tool choice, output format ---------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}


def test_tools_become_tool_specs() -> None:
    r = parse(req(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))
    conv = r.conversation
    assert conv.tools == [Tool("get_weather", "Weather in a city", WEATHER["function"]["parameters"], True)]
    assert (conv.tool_choice.mode, conv.tool_choice.forces_call) == ("required", True)
    assert conv.parallel_tool_calls is False and not r.legacy_functions


def test_named_tool_choice() -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    conv = parse(req(tools=[WEATHER], tool_choice=choice)).conversation
    assert (conv.tool_choice.mode, conv.tool_choice.name) == ("tool", "get_weather")


def test_allowed_tools_narrow_the_offer() -> None:
    other = {"type": "function", "function": {"name": "other"}}
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [WEATHER]}}
    conv = parse(req(tools=[WEATHER, other], tool_choice=choice)).conversation
    assert [t.name for t in conv.tools] == ["get_weather"] and conv.tool_choice.mode == "required"


def test_legacy_functions_and_function_call() -> None:
    r = parse(req(functions=[WEATHER["function"]], function_call={"name": "get_weather"}))
    assert r.legacy_functions and r.conversation.parallel_tool_calls is False
    assert (r.conversation.tool_choice.mode, r.conversation.tool_choice.name) == ("tool", "get_weather")
    assert parse(req(functions=[WEATHER["function"]], function_call="none")).conversation.tool_choice.mode == "none"


def test_response_formats() -> None:
    assert parse(req(response_format={"type": "text"})).conversation.output.kind == "text"
    assert parse(req(response_format={"type": "json_object"})).conversation.output.kind == "json_object"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    out = parse(
        req(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}})
    ).conversation.output
    assert (out.kind, out.schema, out.name, out.strict) == ("json_schema", schema, "n", True)
