"""The Anthropic dialect's pure parts: request parsing, Claude model names, the encoders, errors.

The encoders are also checked through the official ``anthropic`` SDK without a
socket (an httpx mock transport hands it our bytes), so the event stream and the
message body are read by the same code that reads Anthropic's own.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import anthropic
import httpx2
import pytest

from ds2a.anthropic import encode
from ds2a.anthropic.errors import deepseek_error, pool_error, render_anthropic_error, stream_error_event
from ds2a.anthropic.models import ClaudeModels
from ds2a.anthropic.parse import MessagesRequest, parse_messages_request
from ds2a.api.errors import ApiError
from ds2a.api.models import ModelTable
from ds2a.config import AnthropicConfig, ConfigError, load_config
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool.errors import PoolBusy, PoolResting, PoolUnavailable
from ds2a.relay.answer import Outcome
from ds2a.relay.conversation import Reasoning, Text, ToolCall, ToolResult
from ds2a.server.errors import HTTPError

MODELS = ClaudeModels.from_config(AnthropicConfig(), ModelTable.default())


def parse(body: dict[str, Any], **kwargs: Any) -> MessagesRequest:
    return parse_messages_request(json.dumps(body).encode(), MODELS, **kwargs)


def refusal(body: dict[str, Any] | bytes) -> ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ApiError) as info:
        parse_messages_request(raw, MODELS)
    return info.value


def schema(**props: Any) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def claude_code_body() -> dict[str, Any]:
    """The shape Claude Code 2.1 sends (keys, blocks, tools), with text of our own."""
    tools = [
        {"name": f"Tool{i}", "description": f"tool number {i}", "input_schema": schema(path={"type": "string"})}
        for i in range(20)
    ]
    return {
        "model": "claude-opus-4-8",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>\nToday is a day.\n</system-reminder>\n\n"},
                    {"type": "text", "text": "Say hello", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "Agents available: none."},
        ],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be brief."},
        ],
        "tools": tools,
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
        "max_tokens": 64000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": True,
    }


# --- parsing -----------------------------------------------------------------------------


def test_a_claude_code_request_parses_with_its_unknown_fields() -> None:
    req = parse(claude_code_body())
    assert (req.model, req.spec.id, req.max_tokens, req.stream, req.show_thinking) == (
        "claude-opus-4-8",
        "deepseek-reasoner",
        64000,
        True,
        True,
    )
    conv = req.conversation
    assert [m.role for m in conv.messages] == ["system", "user", "system"]
    # The billing note is dropped; the instructions stay, in order.
    assert [p.text for p in conv.messages[0].parts] == ["You are an agent.", "Be brief."]  # type: ignore[union-attr]
    assert conv.messages[1].text.endswith("Say hello") and "<system-reminder>" in conv.messages[1].text
    assert len(conv.tools) == 20 and conv.tools[3].name == "Tool3"
    assert conv.tools[3].parameters["required"] == ["path"]
    assert conv.tool_choice.mode == "auto" and conv.parallel_tool_calls
    assert not conv.output.is_json


def test_a_tool_round_trip_history_maps_to_calls_and_results() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should look it up.", "signature": "c2ln"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "station"}, {"type": "text", "text": "down"}],
                        "is_error": True,
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ],
        "tools": [{"name": "weather", "description": "Weather now", "input_schema": schema(city={"type": "string"})}],
    }
    messages = parse(body).conversation.messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[1].parts == [
        Reasoning("I should look it up."),
        Text("Checking."),
        ToolCall("toolu_1", "weather", '{"city": "Paris"}'),
        ToolCall("toolu_2", "weather", '{"city": "Rome"}'),
    ]
    assert messages[2].parts == [
        ToolResult("toolu_1", "weather", "18 C"),
        ToolResult("toolu_2", "weather", "station\ndown", is_error=True),
    ]
    assert messages[3].parts == [Text("Summarise.")]


def test_a_user_turn_of_only_tool_results_is_one_tool_message() -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
        ],
    }
    messages = parse(body).conversation.messages
    assert [m.role for m in messages] == ["assistant", "tool"]
    assert messages[1].parts == [ToolResult("t", "f", "")]


@pytest.mark.parametrize(
    ("choice", "mode", "name", "parallel"),
    [
        ({"type": "auto"}, "auto", None, True),
        ({"type": "any"}, "required", None, True),
        ({"type": "tool", "name": "b"}, "tool", "b", True),
        ({"type": "none"}, "none", None, True),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", None, False),
    ],
)
def test_tool_choice_maps_to_the_conversation_model(
    choice: dict[str, Any], mode: str, name: str | None, parallel: bool
) -> None:
    tools = [{"name": n, "input_schema": {"type": "object"}} for n in ("a", "b")]
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    conv = parse({**body, "tools": tools, "tool_choice": choice}).conversation
    assert (conv.tool_choice.mode, conv.tool_choice.name, conv.parallel_tool_calls) == (mode, name, parallel)


def test_server_tools_are_left_out_and_cannot_be_forced() -> None:
    tools = [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "mcp_toolset", "mcp_server_name": "files"},
        {"type": "custom", "name": "lookup", "input_schema": {"type": "object"}},
    ]
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        "tools": tools,
    }
    assert [t.name for t in parse(body).conversation.tools] == ["lookup"]
    err = refusal({**body, "tool_choice": {"type": "tool", "name": "web_search"}})
    assert err.status == 400 and err.message.startswith("tool_choice.name: 'web_search' is a server tool")


def test_structured_output_and_stop_sequences() -> None:
    out = schema(answer={"type": "string"})
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        "output_config": {"format": {"type": "json_schema", "schema": out}},
        "stop_sequences": ["END", "STOP", "END"],
    }
    req = parse(body)
    assert req.conversation.output.kind == "json_schema" and req.conversation.output.schema == out
    assert req.stop == ["END", "STOP"]


def test_count_tokens_bodies_need_no_max_tokens() -> None:
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}], "stream": True}
    req = parse(body, count_only=True)
    assert req.max_tokens is None and not req.stream
    assert refusal(body).message == "max_tokens: Field required"


BASE: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def _with(path: str, value: Any) -> dict[str, Any]:
    """BASE with the dotted ``path`` set (or deleted, for the value ``...``)."""
    body = copy.deepcopy(BASE)
    keys = path.split(".")
    node: Any = body
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last: Any = int(keys[-1]) if isinstance(node, list) else keys[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return body


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}


@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        (_with("max_tokens", ...), "max_tokens: Field required"),
        (_with("max_tokens", "10"), "max_tokens: Input should be a valid integer"),
        (_with("max_tokens", 0), "max_tokens: Input should be greater than or equal to 1"),
        (_with("model", ...), "model: Field required"),
        (_with("messages", []), "messages: at least one message is required"),
        (_with("messages", {"role": "user"}), "messages: Input should be a valid list"),
        (_with("messages.0.role", "tool"), "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
        (_with("messages.0.content", 5), "messages.0.content: Input should be a valid string or a list"),
        (_with("messages.0.content", [IMAGE]), "messages.0.content.0: images ('image' blocks) are not supported"),
        (_with("messages.0.content", [{"type": "text"}]), "messages.0.content.0.text: Field required"),
        (_with("messages.0.content", [{"type": "video"}]), "messages.0.content.0.type: Input tag 'video'"),
        (
            _with("messages.0.content", [{"type": "tool_result", "tool_use_id": "t", "content": [DOCUMENT]}]),
            "messages.0.content.0.content.0: documents ('document' blocks) are not supported",
        ),
        (
            _with(
                "messages.0",
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]},
            ),
            "messages.0.content.0.input: Input should be a valid dictionary",
        ),
        (_with("system", 3), "system: Input should be a valid string or a list of text blocks"),
        (_with("system", [{"type": "image"}]), "system.0: images"),
        (_with("thinking", {"type": "on"}), "thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'"),
        (_with("thinking", {"type": "enabled"}), "thinking.budget_tokens: Field required"),
        (_with("stop_sequences", ["a", 1]), "stop_sequences.1: Input should be a valid string"),
        (_with("stop_sequences", [""]), "stop_sequences.0: stop sequences must not be empty"),
        (_with("temperature", 2), "temperature: Input should be between 0 and 1"),
        (_with("top_k", "5"), "top_k: Input should be a valid integer"),
        (_with("stream", "yes"), "stream: Input should be a valid boolean"),
        (_with("metadata", {"user_id": 5}), "metadata.user_id: Input should be a valid string"),
        (_with("tools", [{"name": "f"}]), "tools.0.input_schema: Field required"),
        (_with("tools", [{"name": "bad name", "input_schema": {}}]), "tools.0.name: String should match pattern"),
        (_with("tool_choice", {"type": "all"}), "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"),
        (_with("tool_choice", {"type": "any"}), "tool_choice: 'any' needs at least one custom tool"),
        (_with("tool_choice", {"type": "tool", "name": "f"}), "tool_choice.name: no tool named 'f'"),
        (_with("output_format", {"type": "xml"}), "output_format.type: Input should be 'json_schema'"),
        (
            _with("messages.0.content", "bad \ud800 text"),
            "Invalid string in 'messages.0.content': it contains a lone UTF-16 surrogate",
        ),
        (b"{not json", "The request body is not valid JSON"),
        (b"[1]", "The request body must be a JSON object"),
        (b"", "The request body is empty"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(body: dict[str, Any] | bytes, prefix: str) -> None:
    err = refusal(body)
    assert err.status == 400
    assert err.message.startswith(prefix), err.message
    envelope = json.loads(render_anthropic_error("/v1/messages", err))
    assert envelope == {"type": "error", "error": {"type": "invalid_request_error", "message": err.message}}


def test_an_unknown_model_is_not_found_after_the_body_is_checked() -> None:
    err = refusal({**BASE, "model": "gpt-4o"})
    assert err.status == 404 and err.message.startswith("model: 'gpt-4o' is not served")
    assert json.loads(render_anthropic_error("/v1/messages", err))["error"]["type"] == "not_found_error"
    assert refusal({**BASE, "model": "gpt-4o", "max_tokens": "x"}).status == 400


# --- model names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "thinking", "model", "shown"),
    [
        ("claude-opus-4-8", None, "deepseek-reasoner", False),  # thinks, but the client did not ask to see it
        ("claude-opus-4-1-20250805", {"type": "enabled", "budget_tokens": 2048}, "deepseek-reasoner", True),
        ("claude-opus-4-1", {"type": "disabled"}, "deepseek-chat", False),
        ("claude-sonnet-4-5-20250929", None, "deepseek-chat", False),
        ("claude-sonnet-4-5", {"type": "adaptive"}, "deepseek-reasoner", True),
        ("claude-haiku-4-5", None, "deepseek-chat", False),
        ("claude-3-7-sonnet-latest", None, "deepseek-chat", False),
        ("claude-fable-5", None, "deepseek-chat", False),  # any claude-* name
        ("deepseek-reasoner", None, "deepseek-reasoner", False),
        ("deepseek-v3", {"type": "enabled", "budget_tokens": 1024}, "deepseek-reasoner", True),
        ("deepseek-chat-search", {"type": "enabled", "budget_tokens": 1024}, "deepseek-reasoner-search", True),
    ],
)
def test_model_names_and_thinking_pick_the_model(
    name: str, thinking: dict[str, Any] | None, model: str, shown: bool
) -> None:
    body = {**BASE, "model": name, **({"thinking": thinking} if thinking else {})}
    req = parse(body)
    assert (req.model, req.spec.id, req.show_thinking) == (name, model, shown)


def test_config_entries_override_the_defaults_and_are_checked() -> None:
    cfg = load_config(
        None,
        env={"DS2A_ANTHROPIC_MODELS": '{"claude-*haiku*": "deepseek-reasoner"}'},
        overrides={"anthropic": {"models": {"claude-sonnet-4-5": "deepseek-chat-search"}}},
    )
    models = ClaudeModels.from_config(cfg.anthropic, ModelTable.from_config(cfg.api, cfg.deepseek))
    assert models.resolve("claude-haiku-4-5").id == "deepseek-chat"  # overrides replace env (one dict)
    assert models.resolve("claude-sonnet-4-5").id == "deepseek-chat-search"  # exact beats claude-*sonnet*
    assert models.resolve("claude-sonnet-4-5-20250929").id == "deepseek-chat"
    assert models.resolve("claude-opus-4-8").id == "deepseek-reasoner"  # defaults stay
    env_only = load_config(None, env={"DS2A_ANTHROPIC_MODELS": '{"claude-*haiku*": "deepseek-reasoner"}'})
    table = ModelTable.from_config(env_only.api, env_only.deepseek)
    assert ClaudeModels.from_config(env_only.anthropic, table).resolve("claude-haiku-4-5").id == "deepseek-reasoner"
    with pytest.raises(ConfigError, match=r"anthropic\.models\.claude-\*: 'gpt-4' is not a model of the table"):
        load_config(None, env={}, overrides={"anthropic": {"models": {"claude-*": "gpt-4"}}})


def test_defaults_follow_a_replaced_model_table() -> None:
    api = {"models": [{"id": "fast"}, {"id": "deep", "thinking": True}]}
    cfg = load_config(None, env={}, overrides={"api": api})
    models = ClaudeModels.from_config(cfg.anthropic, ModelTable.from_config(cfg.api, cfg.deepseek))
    assert models.resolve("claude-opus-4-8").id == "deep"
    assert models.resolve("claude-haiku-4-5").id == "fast"
    assert models.resolve("claude-haiku-4-5", True).id == "deep"


# --- encoding ------------------------------------------------------------------------------


class Writes:
    """A Writer that keeps every write."""

    paused = False

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        pass

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an SSE body, checking that each names its own type."""
    out = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        payload = json.loads(data_line.removeprefix("data: "))
        assert payload["type"] == name
        out.append((name, payload))
    return out


def test_a_text_answer_streams_exactly_as_anthropic_does() -> None:
    out = Writes()
    sink = encode.MessageStream(out, "msg_1", "claude-sonnet-4-5", show_thinking=False)
    sink.start(12)
    sink.text("Hel")
    sink.text('lo "é"')
    sink.flush()
    sink.finish(Outcome("stop", prompt_tokens=12, completion_tokens=2))
    assert out.data == (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,'
        b'"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}}\n\n'
        b'event: ping\ndata: {"type":"ping"}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo \\"\xc3\xa9\\""}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        b'"usage":{"input_tokens":12,"output_tokens":2}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert len(out.writes) == 3  # the opening, the one upstream read, the ending


def test_thinking_comes_first_with_a_signature_then_the_text() -> None:
    out = Writes()
    sink = encode.MessageStream(out, "msg_1", "claude-opus-4-8", show_thinking=True)
    sink.start(3)
    sink.reasoning("Let me ")
    sink.flush()
    sink.reasoning("think.")
    sink.text("Answer.")
    sink.flush()
    sink.finish(Outcome("stop", 3, 5))
    got = events(out.data)
    assert [name for name, _ in got] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert got[2][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert [e["delta"] for _, e in got[3:5]] == [
        {"type": "thinking_delta", "thinking": "Let me "},
        {"type": "thinking_delta", "thinking": "think."},
    ]
    assert got[5][1] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": encode.signature_of("Let me think.")},
    }
    assert got[7][1]["index"] == 1 and got[8][1]["delta"] == {"type": "text_delta", "text": "Answer."}
    assert encode.signature_of("Let me think.") != encode.signature_of("Let me think!")


def test_hidden_thinking_is_not_sent() -> None:
    out = Writes()
    sink = encode.MessageStream(out, "msg_1", "claude-opus-4-8", show_thinking=False)
    sink.start(1)
    sink.reasoning("secret")
    sink.flush()
    sink.text("Hi")
    sink.flush()
    sink.finish(Outcome("stop", 1, 2))
    assert b"secret" not in out.data and b"thinking" not in out.data
    assert len(out.writes) == 3  # a read of hidden thoughts writes nothing
    assert events(out.data)[2][1]["index"] == 0


def test_tool_calls_stream_as_tool_use_blocks_with_input_json_deltas() -> None:
    out = Writes()
    sink = encode.MessageStream(out, "msg_1", "claude-sonnet-4-5", show_thinking=False)
    sink.start(1)
    sink.text("Looking.")
    sink.tool_call_start(0, "call_abc", "weather")
    sink.tool_call_arguments(0, '{"city": ')
    sink.tool_call_arguments(0, '"Paris"}')
    sink.tool_call_end(0)
    sink.tool_call_start(1, "call_def", "time")
    sink.tool_call_arguments(1, "{}")
    sink.tool_call_end(1)
    sink.flush()
    sink.finish(Outcome("tool_calls", 1, 9, tool_calls=2))
    got = events(out.data)
    starts = [e for name, e in got if name == "content_block_start"]
    assert [s["content_block"] for s in starts] == [
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "toolu_abc", "name": "weather", "input": {}},
        {"type": "tool_use", "id": "toolu_def", "name": "time", "input": {}},
    ]
    deltas = [(e["index"], e["delta"]) for name, e in got if name == "content_block_delta"]
    assert deltas[1:] == [
        (1, {"type": "input_json_delta", "partial_json": '{"city": '}),
        (1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
        (2, {"type": "input_json_delta", "partial_json": "{}"}),
    ]
    assert [e["index"] for name, e in got if name == "content_block_stop"] == [0, 1, 2]
    assert got[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


@pytest.mark.parametrize(
    ("outcome", "reason", "sequence"),
    [
        (Outcome("stop"), "end_turn", None),
        (Outcome("stop", stop_sequence="END"), "stop_sequence", "END"),
        (Outcome("length"), "max_tokens", None),
        (Outcome("content_filter"), "refusal", None),
        (Outcome("tool_calls"), "tool_use", None),
    ],
)
def test_stop_reasons(outcome: Outcome, reason: str, sequence: str | None) -> None:
    assert encode.stop_reason(outcome) == (reason, sequence)
    body = json.loads(encode.MessageCollector(show_thinking=False).body("msg_1", "m", outcome))
    assert (body["stop_reason"], body["stop_sequence"]) == (reason, sequence)


def test_a_failure_mid_stream_ends_with_an_error_event() -> None:
    out = Writes()
    sink = encode.MessageStream(out, "msg_1", "m", show_thinking=False)
    sink.start(1)
    sink.text("partial")
    sink.fail(502, "DeepSeek: connection reset")
    got = events(out.data)
    assert got[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "DeepSeek: connection reset"}},
    )
    assert "message_stop" not in [name for name, _ in got]


def test_a_keepalive_ping_is_its_own_write() -> None:
    out = Writes()
    sink = encode.MessageStream(out, "msg_1", "m", show_thinking=False)
    sink.start(1)
    writes = sink.writes
    sink.ping()
    assert out.writes[-1] == encode.PING and sink.writes == writes  # a ping is not progress


def test_the_collected_body_is_an_anthropic_message() -> None:
    sink = encode.MessageCollector(show_thinking=True)
    sink.reasoning("Hmm, ")
    sink.reasoning("yes.")
    sink.text("Sure: ")
    sink.text("done.")
    sink.tool_call_start(0, "call_x", "weather")
    sink.tool_call_arguments(0, '{"city": "Oslo"}')
    sink.tool_call_end(0)
    body = json.loads(sink.body("msg_7", "claude-opus-4-8", Outcome("tool_calls", 4, 6, tool_calls=1)))
    assert body == {
        "id": "msg_7",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-4-8",
        "content": [
            {"type": "thinking", "thinking": "Hmm, yes.", "signature": encode.signature_of("Hmm, yes.")},
            {"type": "text", "text": "Sure: done."},
            {"type": "tool_use", "id": "toolu_x", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 4,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 6,
        },
    }


def test_a_filtered_answer_is_replaced_by_the_upstream_refusal() -> None:
    sink = encode.MessageCollector(show_thinking=False)
    sink.text("something the filter withdrew")
    body = json.loads(sink.body("msg_1", "m", Outcome("content_filter", replacement="I can't help with that.")))
    assert body["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert body["stop_reason"] == "refusal"


def test_ids_have_anthropic_shapes() -> None:
    ids = {encode.new_id("msg_") for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 28 and i[4:].isalnum() for i in ids)
    assert encode.tool_use_id("call_0123") == "toolu_0123"


# --- the SDK reads what we write ---------------------------------------------------------


def sdk_over(status: int, body: bytes, content_type: str) -> anthropic.Anthropic:
    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    transport = httpx2.MockTransport(reply)
    return anthropic.Anthropic(
        api_key="k", base_url="http://gw", max_retries=0, http_client=httpx2.Client(transport=transport)
    )


def feed(sink: Any) -> None:
    sink.reasoning("Plan: call it.")
    sink.text("Calling ")
    sink.text("now.")
    sink.tool_call_start(0, "call_q", "lookup")
    sink.tool_call_arguments(0, '{"q": "ds2a", ')
    sink.tool_call_arguments(0, '"n": 2}')
    sink.tool_call_end(0)
    sink.flush()


def test_the_sdk_accumulates_the_stream_into_the_collected_message() -> None:
    outcome = Outcome("tool_calls", 7, 11, tool_calls=1)
    out = Writes()
    stream = encode.MessageStream(out, "msg_s", "claude-opus-4-8", show_thinking=True)
    stream.start(7)
    feed(stream)
    stream.finish(outcome)
    collector = encode.MessageCollector(show_thinking=True)
    feed(collector)
    params: Any = {"model": "claude-opus-4-8", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with sdk_over(200, out.data, "text/event-stream").messages.stream(**params) as sse:
        streamed = sse.get_final_message()
    collected = sdk_over(200, collector.body("msg_s", "claude-opus-4-8", outcome), "application/json").messages.create(
        **params
    )
    assert streamed.model_dump() == collected.model_dump()
    assert [b.type for b in collected.content] == ["thinking", "text", "tool_use"]
    assert collected.content[2].input == {"q": "ds2a", "n": 2}  # type: ignore[union-attr]
    assert collected.stop_reason == "tool_use" and collected.usage.output_tokens == 11


def test_the_sdk_raises_an_error_event_as_an_api_error() -> None:
    out = Writes()
    sink = encode.MessageStream(out, "msg_1", "m", show_thinking=False)
    sink.start(1)
    sink.text("par")
    sink.fail(529, "every account is busy")
    params: Any = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.APIStatusError) as info:
        with sdk_over(200, out.data, "text/event-stream").messages.stream(**params) as sse:
            sse.get_final_message()
    assert info.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "every account is busy"},
    }


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_statuses_map_to_anthropic_error_types(status: int, kind: str) -> None:
    body = json.loads(render_anthropic_error("/v1/messages", HTTPError(status, "words")))
    assert body == {"type": "error", "error": {"type": kind, "message": "words"}}
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk_over(status, json.dumps(body).encode(), "application/json").messages.create(
            model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == status and info.value.type == kind  # type: ignore[attr-defined]


def test_pool_refusals_map_to_overloaded_or_rate_limited() -> None:
    busy = pool_error(PoolBusy("every account is busy", code="pool_busy", retry_after=4.2))
    assert (busy.status, busy.headers) == (529, [("retry-after", "5")])
    assert pool_error(PoolResting("resting", code="pool_resting", retry_after=30)).status == 429
    assert pool_error(PoolUnavailable("no account", code="no_account")).status == 503


def test_upstream_failures_keep_the_gateway_wide_statuses() -> None:
    assert deepseek_error(DeepSeekError(ErrorKind.TIMEOUT, "silent")).status == 504
    assert deepseek_error(DeepSeekError(ErrorKind.PROTOCOL, "bad body")).status == 502
    assert deepseek_error(DeepSeekError(ErrorKind.INPUT_TOO_LONG, "too long")).status == 400
    auth = deepseek_error(DeepSeekError(ErrorKind.AUTH, "bad token"), direct=True)
    assert auth.status == 401
    assert json.loads(render_anthropic_error("", auth))["error"]["type"] == "authentication_error"
    event = stream_error_event(504, "DeepSeek: silent")
    assert (
        event
        == b'event: error\ndata: {"type":"error","error":{"type":"timeout_error","message":"DeepSeek: silent"}}\n\n'
    )
