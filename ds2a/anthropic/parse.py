"""Validation of ``POST /v1/messages`` (and ``/count_tokens``) bodies into the conversation model.

Every field the gateway reads is checked, and a bad one is refused with a 400
``invalid_request_error`` whose message starts with the field's path in Anthropic's
notation (``messages.2.content.0.type: …``). Fields the web chat cannot honour but
that change nothing about the answer's meaning are type-checked and ignored
(``temperature``, ``top_p``, ``top_k``, ``metadata``, ``cache_control`` on any
block, ``service_tier``); unknown fields are accepted, since Claude Code and the
SDKs add new ones (``context_management``, ``output_config``…) faster than gateways
follow. What would be silently wrong is refused: images and documents (the web chat
takes text only), and a ``tool_choice`` that forces a server tool.

Mapping into ``ds2a.relay.conversation``:

- ``system`` (a string or text blocks) -> one ``system`` message, and so do ``system``
  turns inside ``messages`` (Claude Code sends them, beta ``mid-conversation-system``);
- a user turn's ``tool_result`` blocks -> a ``tool`` message of ``ToolResult`` parts,
  placed before the user message carrying the turn's text;
- an assistant turn's ``text`` / ``tool_use`` / ``thinking`` blocks -> ``Text`` /
  ``ToolCall`` / ``Reasoning`` parts; ``redacted_thinking`` (opaque) is dropped;
- custom ``tools`` -> ``Tool``; server tools (``web_search_…``, ``bash_…``,
  ``text_editor_…``: the client expects Anthropic to run them) are left out;
- ``tool_choice`` ``auto`` / ``any`` / ``tool`` / ``none`` -> ``ToolChoice`` auto /
  required / tool / none; ``disable_parallel_tool_use`` -> ``parallel_tool_calls``;
- ``output_format`` or ``output_config.format`` of type ``json_schema`` -> ``OutputFormat``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ds2a.api.body import load_json_object
from ds2a.anthropic.errors import invalid_request
from ds2a.anthropic.models import ClaudeModels
from ds2a.api.models import ModelSpec
from ds2a.relay.conversation import (
    Conversation,
    Message,
    OutputFormat,
    Part,
    Reasoning,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)

BILLING_NOTE = "x-anthropic-billing-header:"
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
UNSUPPORTED_BLOCKS = {
    "image": "images",
    "document": "documents",
    "search_result": "search results",
    "container_upload": "container uploads",
    "server_tool_use": "server tool calls",
    "web_search_tool_result": "web search results",
    "web_fetch_tool_result": "web fetch results",
    "code_execution_tool_result": "code execution results",
    "mcp_tool_use": "MCP connector calls",
    "mcp_tool_result": "MCP connector results",
}
# "system" turns inside messages: Claude Code sends them (beta mid-conversation-system-2026-04-07).
ROLES = ("user", "assistant", "system")
THINKING_TYPES = ("enabled", "adaptive", "disabled")
TOOL_CHOICES = ("auto", "any", "tool", "none")


@dataclass(slots=True)
class MessagesRequest:
    model: str  # the name the client sent: echoed in the answer
    spec: ModelSpec
    conversation: Conversation
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    show_thinking: bool = False  # the request enabled thinking and the model thinks


def parse_messages_request(body: bytes, models: ClaudeModels, *, count_only: bool = False) -> MessagesRequest:
    """The validated request, or ApiError(400/404); ``count_only`` for ``count_tokens`` bodies."""
    data = load_object(body)
    model = _require(data, "model", str, "a valid string")
    max_tokens = None if count_only else _max_tokens(data)
    thinking = _thinking(data)
    conversation = Conversation(
        messages=_system(data) + _messages(data),
        output=_output_format(data),
    )
    _tools(data, conversation)
    stop = _stop_sequences(data)
    stream = False if count_only else bool(_optional(data, "stream", bool, "a valid boolean"))
    _check_ignored(data)
    # Last, so a malformed request is told what is wrong with it before it is told the model is unknown.
    spec = models.resolve(model, thinking)
    return MessagesRequest(
        model=model,
        spec=spec,
        conversation=conversation,
        max_tokens=max_tokens,
        stop=stop,
        stream=stream,
        show_thinking=bool(thinking) and spec.thinking,
    )


# --- helpers ---------------------------------------------------------------------------


def _fail(path: str, problem: str) -> NoReturn:
    raise invalid_request(f"{path}: {problem}" if path else problem)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _is(value: Any, typ: type | tuple[type, ...]) -> bool:
    # JSON booleans are Python ints; only a field declared boolean accepts them.
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def _wrong_type(path: str, expected: str, value: Any) -> NoReturn:
    _fail(path, f"Input should be {expected}, got {_kind(value)}")


def _require(data: dict[str, Any], key: str, typ: type | tuple[type, ...], expected: str, path: str = "") -> Any:
    where = f"{path}.{key}" if path else key
    if key not in data:
        _fail(where, "Field required")
    value = data[key]
    if not _is(value, typ):
        _wrong_type(where, expected, value)
    return value


def _optional(data: dict[str, Any], key: str, typ: type | tuple[type, ...], expected: str, path: str = "") -> Any:
    value = data.get(key)
    if value is not None and not _is(value, typ):
        _wrong_type(f"{path}.{key}" if path else key, expected, value)
    return value


def load_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; bad JSON, a non-object or invalid Unicode is a 400
    (param paths in Anthropic's dotted spelling)."""
    return load_json_object(body, indexes="dots")


# --- parameters ------------------------------------------------------------------------


def _max_tokens(data: dict[str, Any]) -> int:
    value = _require(data, "max_tokens", int, "a valid integer")
    if value < 1:
        _fail("max_tokens", f"Input should be greater than or equal to 1, got {value}")
    return value


def _thinking(data: dict[str, Any]) -> bool | None:
    """True: thinking asked for (``enabled``/``adaptive``), False: ``disabled``, None: not said."""
    thinking = _optional(data, "thinking", dict, "a valid dictionary")
    if thinking is None:
        return None
    kind = _require(thinking, "type", str, "a valid string", "thinking")
    if kind not in THINKING_TYPES:
        _fail("thinking.type", f"Input should be 'enabled', 'adaptive' or 'disabled', got {kind!r}")
    if kind == "enabled":
        budget = _require(thinking, "budget_tokens", int, "a valid integer", "thinking")
        if budget < 1:
            _fail("thinking.budget_tokens", f"Input should be greater than or equal to 1, got {budget}")
    return kind != "disabled"


def _stop_sequences(data: dict[str, Any]) -> list[str]:
    stops = _optional(data, "stop_sequences", list, "a valid list")
    if not stops:
        return []
    for i, stop in enumerate(stops):
        if not isinstance(stop, str):
            _wrong_type(f"stop_sequences.{i}", "a valid string", stop)
        if not stop:
            _fail(f"stop_sequences.{i}", "stop sequences must not be empty")
    return list(dict.fromkeys(stops))  # duplicates would only cost matching time


def _range(
    data: dict[str, Any], key: str, typ: type | tuple[type, ...], expected: str, low: float, high: float | None
) -> None:
    value = _optional(data, key, typ, expected)
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"greater than or equal to {low}"
        _fail(key, f"Input should be {bound}, got {value}")


def _check_ignored(data: dict[str, Any]) -> None:
    # Sampling knobs the web chat does not have: checked as Anthropic would, then ignored.
    _range(data, "temperature", float, "a valid number", 0, 1)
    _range(data, "top_p", float, "a valid number", 0, 1)
    _range(data, "top_k", int, "a valid integer", 0, None)
    _optional(data, "service_tier", str, "a valid string")
    metadata = _optional(data, "metadata", dict, "a valid dictionary")
    if metadata:
        _optional(metadata, "user_id", str, "a valid string", "metadata")


def _output_format(data: dict[str, Any]) -> OutputFormat:
    """Structured outputs: ``output_format`` (beta) or ``output_config.format``."""
    config = _optional(data, "output_config", dict, "a valid dictionary")
    path, fmt = "output_format", _optional(data, "output_format", dict, "a valid dictionary")
    if fmt is None and config:
        path, fmt = "output_config.format", _optional(config, "format", dict, "a valid dictionary", "output_config")
    if fmt is None:
        return OutputFormat()
    kind = _require(fmt, "type", str, "a valid string", path)
    if kind != "json_schema":
        _fail(f"{path}.type", f"Input should be 'json_schema', got {kind!r}")
    schema = _require(fmt, "schema", dict, "a valid dictionary", path)
    name = _optional(fmt, "name", str, "a valid string", path)
    return OutputFormat("json_schema", schema=schema, name=name, strict=True)  # Anthropic's are always strict


# --- system and messages -----------------------------------------------------------------


def _system(data: dict[str, Any]) -> list[Message]:
    system = data.get("system")
    if system is None:
        return []
    if isinstance(system, str):
        return [Message("system", [Text(system)])] if system else []
    if not isinstance(system, list):
        _wrong_type("system", "a valid string or a list of text blocks", system)
    # Claude Code's first system block is a billing note for Anthropic, not an instruction.
    parts = [p for p in _text_parts("system", system) if not (type(p) is Text and p.text.startswith(BILLING_NOTE))]
    return [Message("system", parts)] if parts else []


def _messages(data: dict[str, Any]) -> list[Message]:
    raw = _require(data, "messages", list, "a valid list")
    if not raw:
        _fail("messages", "at least one message is required")
    calls: dict[str, str] = {}  # tool_use id -> tool name, to label the results
    out: list[Message] = []
    for i, msg in enumerate(raw):
        out.extend(_message(f"messages.{i}", msg, calls))
    return out


def _message(path: str, msg: Any, calls: dict[str, str]) -> list[Message]:
    if not isinstance(msg, dict):
        _wrong_type(path, "a valid dictionary", msg)
    role = _require(msg, "role", str, "a valid string", path)
    if role not in ROLES:
        _fail(f"{path}.role", f"Input should be 'user', 'assistant' or 'system', got {role!r}")
    content = _require(msg, "content", (str, list), "a valid string or a list of content blocks", path)
    if isinstance(content, str):
        return [Message(role, [Text(content)])]
    if role == "assistant":
        return [Message("assistant", _assistant_parts(f"{path}.content", content, calls))]
    if role == "system":
        return [Message("system", _text_parts(f"{path}.content", content))]
    return _user_messages(f"{path}.content", content, calls)


def _text_parts(path: str, content: list[Any]) -> list[Part]:
    parts: list[Part] = []
    for j, block in enumerate(content):
        where = f"{path}.{j}"
        kind = _block_type(where, block)
        if kind != "text":
            _unexpected(where, kind, "'text'")
        parts.append(_text(where, block))
    return parts


def _block_type(path: str, block: Any) -> str:
    if not isinstance(block, dict):
        _wrong_type(path, "a valid dictionary", block)
    kind = _require(block, "type", str, "a valid string", path)
    if kind in UNSUPPORTED_BLOCKS:
        _fail(
            path,
            f"{UNSUPPORTED_BLOCKS[kind]} ('{kind}' blocks) are not supported by this gateway "
            "(the DeepSeek web chat it relays to accepts text only). Send text instead.",
        )
    return kind


def _unexpected(path: str, kind: str, allowed: str) -> NoReturn:
    _fail(f"{path}.type", f"Input tag {kind!r} is not one of the block types expected here: {allowed}")


def _text(path: str, block: dict[str, Any]) -> Text:
    return Text(_require(block, "text", str, "a valid string", path))


def _user_messages(path: str, content: list[Any], calls: dict[str, str]) -> list[Message]:
    results: list[Part] = []
    texts: list[Part] = []
    for j, block in enumerate(content):
        where = f"{path}.{j}"
        kind = _block_type(where, block)
        if kind == "text":
            texts.append(_text(where, block))
        elif kind == "tool_result":
            results.append(_tool_result(where, block, calls))
        else:
            _unexpected(where, kind, "'text', 'tool_result'")
    out = []
    if results:
        out.append(Message("tool", results))
    if texts or not results:
        out.append(Message("user", texts))
    return out


def _tool_result(path: str, block: dict[str, Any], calls: dict[str, str]) -> ToolResult:
    call_id = _require(block, "tool_use_id", str, "a valid string", path)
    is_error = bool(_optional(block, "is_error", bool, "a valid boolean", path))
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces = []
        for k, inner in enumerate(content):
            where = f"{path}.content.{k}"
            kind = _block_type(where, inner)
            if kind != "text":
                _unexpected(where, kind, "'text'")
            pieces.append(_text(where, inner).text)
        text = "\n".join(pieces)
    else:
        _wrong_type(f"{path}.content", "a valid string or a list of content blocks", content)
    return ToolResult(call_id, calls.get(call_id), text, is_error)


def _assistant_parts(path: str, content: list[Any], calls: dict[str, str]) -> list[Part]:
    parts: list[Part] = []
    for j, block in enumerate(content):
        where = f"{path}.{j}"
        kind = _block_type(where, block)
        if kind == "text":
            parts.append(_text(where, block))
        elif kind == "tool_use":
            call_id = _require(block, "id", str, "a valid string", where)
            name = _require(block, "name", str, "a valid string", where)
            arguments = _require(block, "input", dict, "a valid dictionary", where)
            calls[call_id] = name
            parts.append(ToolCall(call_id, name, json.dumps(arguments, ensure_ascii=False)))
        elif kind == "thinking":
            parts.append(Reasoning(_require(block, "thinking", str, "a valid string", where)))
        elif kind == "redacted_thinking":
            _optional(block, "data", str, "a valid string", where)  # opaque: nothing to show the model
        else:
            _unexpected(where, kind, "'text', 'tool_use', 'thinking', 'redacted_thinking'")
    return parts


# --- tools -----------------------------------------------------------------------------


def _tools(data: dict[str, Any], conversation: Conversation) -> None:
    raw = _optional(data, "tools", list, "a valid list") or []
    server_tools: set[str] = set()
    for i, tool in enumerate(raw):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            _wrong_type(where, "a valid dictionary", tool)
        kind = _optional(tool, "type", str, "a valid string", where)
        if kind not in (None, "custom"):
            # A tool Anthropic itself runs (web search, bash, editor, MCP toolsets…): nobody here can.
            server_tools.add(str(tool.get("name") or kind))
            continue
        name = _require(tool, "name", str, "a valid string", where)
        if not TOOL_NAME.match(name):
            _fail(f"{where}.name", f"String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$', got {name!r}")
        schema = _require(tool, "input_schema", dict, "a valid dictionary", where)
        description = _optional(tool, "description", str, "a valid string", where) or ""
        strict = bool(_optional(tool, "strict", bool, "a valid boolean", where))
        conversation.tools.append(Tool(name, description, schema, strict))
    _tool_choice(data, conversation, server_tools)


def _tool_choice(data: dict[str, Any], conversation: Conversation, server_tools: set[str]) -> None:
    choice = _optional(data, "tool_choice", dict, "a valid dictionary")
    if choice is None:
        return
    kind = _require(choice, "type", str, "a valid string", "tool_choice")
    if kind not in TOOL_CHOICES:
        _fail("tool_choice.type", f"Input should be 'auto', 'any', 'tool' or 'none', got {kind!r}")
    if _optional(choice, "disable_parallel_tool_use", bool, "a valid boolean", "tool_choice"):
        conversation.parallel_tool_calls = False
    offered = {tool.name for tool in conversation.tools}
    if kind == "any":
        if not offered:
            _fail("tool_choice", "'any' needs at least one custom tool in 'tools'" + _server_note(server_tools))
        conversation.tool_choice = ToolChoice("required")
    elif kind == "tool":
        name = _require(choice, "name", str, "a valid string", "tool_choice")
        if name in server_tools:
            _fail("tool_choice.name", f"{name!r} is a server tool, which this gateway cannot run")
        if name not in offered:
            _fail("tool_choice.name", f"no tool named {name!r} in 'tools'")
        conversation.tool_choice = ToolChoice("tool", name)
    elif kind == "none":
        conversation.tool_choice = ToolChoice("none")


def _server_note(server_tools: set[str]) -> str:
    if not server_tools:
        return ""
    return f" (server tools, which this gateway cannot run, are left out: {', '.join(sorted(server_tools))})"
