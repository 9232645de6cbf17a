"""Validation of ``POST /v1/chat/completions`` bodies.

The gateway accepts what OpenAI's API accepts as far as the web chat can honour it,
and refuses with a 400 naming the field (``param`` as a JSON path such as
``messages[2].content[0]``) what it cannot: images, audio and files, ``n`` > 1,
log probabilities. Sampling parameters (temperature, penalties, seed, …) are
type-checked and then ignored, since the web chat has no such knobs; unknown
fields are ignored as OpenAI's SDKs add new ones faster than gateways follow.

The request comes out as the relay's ``Conversation``: messages of typed parts
(text, the assistant's tool calls, tool results; legacy ``function`` messages are
tool results too), the function tools offered (``tools`` and the legacy
``functions``), the tool choice and the output format (``response_format``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ds2a.api.body import load_json_object
from ds2a.api.fields import BOOLEAN as _BOOLEAN
from ds2a.api.fields import NUMBER as _NUMBER
from ds2a.api.fields import OBJECT as _OBJECT
from ds2a.api.fields import STRING as _STRING
from ds2a.api.fields import fail as _fail
from ds2a.api.fields import optional as _optional
from ds2a.api.fields import require as _require
from ds2a.api.fields import wrong_type as _wrong_type
from ds2a.api.models import ModelSpec, ModelTable
from ds2a.relay.conversation import (
    Conversation,
    Message,
    OutputFormat,
    Part,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)

MAX_STOPS = 4
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
UNSUPPORTED_PARTS = {"image_url": "images", "input_audio": "audio", "file": "files"}

# Ignored parameters, with the JSON types they may have (null is always allowed).
_IGNORED: dict[str, tuple[tuple[type, ...], str]] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "frequency_penalty": _NUMBER,
    "presence_penalty": _NUMBER,
    "seed": ((int,), "an integer"),
    "user": _STRING,
    "safety_identifier": _STRING,
    "prompt_cache_key": _STRING,
    "service_tier": _STRING,
    "reasoning_effort": _STRING,
    "verbosity": _STRING,
    "metadata": _OBJECT,
    "logit_bias": _OBJECT,
    "web_search_options": _OBJECT,
    "prediction": _OBJECT,
    "store": _BOOLEAN,
}


@dataclass(slots=True)
class ChatRequest:
    model: str  # the name the client sent (an alias stays an alias)
    spec: ModelSpec
    conversation: Conversation
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None  # the smaller of max_tokens and max_completion_tokens
    stop: list[str] = field(default_factory=list)
    legacy_functions: bool = False  # offered as ``functions``: answer with ``function_call``


def parse_chat_request(body: bytes, models: ModelTable) -> ChatRequest:
    """The validated request, or ApiError(400/404) naming the offending field."""
    data = _load(body)
    model = _require(data, "model", str, "a string")
    messages = _messages(data)
    tools = _tools(data)
    choice = _tool_choice(data, tools)
    output = _response_format(data)
    parallel = _optional(data, "parallel_tool_calls", (bool,), "a boolean")
    stream = bool(_optional(data, "stream", (bool,), "a boolean"))
    include_usage = _include_usage(data)
    max_tokens = _max_tokens(data)
    stop = _stops(data)
    _check_n(data)
    _check_logprobs(data)
    _check_ignored(data)
    # Last, so a malformed request is told what is wrong with it before it is told the model is unknown.
    spec = models.resolve(model)
    legacy = data.get("tools") is None and data.get("functions") is not None
    conversation = Conversation(messages, tools, choice, parallel is not False and not legacy, output)
    return ChatRequest(model, spec, conversation, stream, include_usage, max_tokens, stop, legacy)


# --- helpers -------------------------------------------------------------------------


def _load(body: bytes) -> dict[str, Any]:
    return load_json_object(body)


# --- messages --------------------------------------------------------------------------


def _messages(data: dict[str, Any]) -> list[Message]:
    raw = _require(data, "messages", list, "an array")
    if not raw:
        _fail("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages", "empty_array")
    return [_message(f"messages[{i}]", m) for i, m in enumerate(raw)]


def _message(path: str, msg: Any) -> Message:
    if not isinstance(msg, dict):
        _wrong_type(path, "an object", msg)
    role = msg.get("role")
    if role is None:
        _fail(f"Missing required parameter: '{path}.role'.", f"{path}.role", "missing_required_parameter")
    if not isinstance(role, str):
        _wrong_type(f"{path}.role", "a string", role)
    if role not in ROLES:
        _fail(
            f"Invalid value for '{path}.role': {role!r}. Supported values are: "
            "'system', 'developer', 'user', 'assistant' and 'tool'.",
            f"{path}.role",
            "invalid_value",
        )
    if role == "assistant":
        return Message("assistant", _assistant_parts(path, msg))
    text = _content(path, msg, required=True)
    if role == "tool":
        call_id = _text_field(msg, "tool_call_id", f"{path}.tool_call_id")
        return Message("tool", [ToolResult(call_id, None, text)])
    if role == "function":  # the legacy form of a tool result: named, no id
        return Message("tool", [ToolResult("", _text_field(msg, "name", f"{path}.name") or None, text)])
    return Message(role, [Text(text)])  # type: ignore[arg-type]


def _content(path: str, msg: dict[str, Any], *, required: bool) -> str:
    content = msg.get("content")
    where = f"{path}.content"
    if content is None:
        if required:
            _fail(f"Missing required parameter: '{where}'.", where, "missing_required_parameter")
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_part_text(f"{where}[{j}]", part) for j, part in enumerate(content))
    _wrong_type(where, "a string or an array of content parts", content)


def _part_text(path: str, part: Any) -> str:
    if not isinstance(part, dict):
        _wrong_type(path, "an object", part)
    kind = part.get("type")
    if not isinstance(kind, str):
        _wrong_type(f"{path}.type", "a string", kind)
    if kind in ("text", "refusal"):
        text = part.get(kind)
        if not isinstance(text, str):
            _wrong_type(f"{path}.{kind}", "a string", text)
        return text
    if kind in UNSUPPORTED_PARTS:
        _fail(
            f"Invalid content part '{path}': {UNSUPPORTED_PARTS[kind]} are not supported by this gateway "
            "(the DeepSeek web chat it relays to accepts text only). Send text parts only.",
            path,
            "unsupported_content",
        )
    _fail(f"Invalid value for '{path}.type': {kind!r}. Supported values are: 'text'.", f"{path}.type", "invalid_value")


def _assistant_parts(path: str, msg: dict[str, Any]) -> list[Part]:
    # Content may be null when the assistant only called tools or refused.
    text = _content(path, msg, required=False)
    refusal = _optional(msg, "refusal", (str,), "a string", f"{path}.refusal")
    if not text and refusal:
        text = refusal
    parts: list[Part] = [Text(text)]
    parts.extend(_tool_calls(path, msg))
    return parts


def _tool_calls(path: str, msg: dict[str, Any]) -> list[ToolCall]:
    calls: list[ToolCall] = []
    raw = _optional(msg, "tool_calls", (list,), "an array", f"{path}.tool_calls") or []
    for k, call in enumerate(raw):
        where = f"{path}.tool_calls[{k}]"
        if not isinstance(call, dict):
            _wrong_type(where, "an object", call)
        call_id = _text_field(call, "id", f"{where}.id")
        kind = "custom" if call.get("type") == "custom" else "function"
        body = call.get(kind)
        if not isinstance(body, dict):
            _wrong_type(f"{where}.{kind}", "an object", body)
        name = _text_field(body, "name", f"{where}.{kind}.name")
        args = body.get("arguments", body.get("input")) or ""
        # Some clients send parsed arguments; the model only needs to read them.
        calls.append(ToolCall(call_id, name, args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
    legacy = _optional(msg, "function_call", (dict,), "an object", f"{path}.function_call")
    if legacy:
        name = _text_field(legacy, "name", f"{path}.function_call.name")
        calls.append(ToolCall("", name, _text_field(legacy, "arguments", f"{path}.function_call.arguments")))
    return calls


def _text_field(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        _wrong_type(path, "a string", value)
    return value


# --- parameters ------------------------------------------------------------------------


def _include_usage(data: dict[str, Any]) -> bool:
    options = _optional(data, "stream_options", (dict,), "an object")
    if not options:
        return False
    value = _optional(options, "include_usage", (bool,), "a boolean", "stream_options.include_usage")
    return bool(value)


def _max_tokens(data: dict[str, Any]) -> int | None:
    limits = []
    for key in ("max_tokens", "max_completion_tokens"):
        value = _optional(data, key, (int,), "an integer")
        if value is None:
            continue
        if value < 1:
            _fail(
                f"Invalid '{key}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
                key,
                "integer_below_min_value",
            )
        limits.append(value)
    return min(limits) if limits else None


def _stops(data: dict[str, Any]) -> list[str]:
    stop = data.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list):
        _wrong_type("stop", "a string or an array of strings", stop)
    if len(stops) > MAX_STOPS:
        _fail(
            f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOPS}, "
            f"but got an array with length {len(stops)} instead.",
            "stop",
            "array_above_max_length",
        )
    for k, s in enumerate(stops):
        where = "stop" if isinstance(stop, str) else f"stop[{k}]"
        if not isinstance(s, str):
            _wrong_type(where, "a string", s)
        if not s:
            _fail(f"Invalid '{where}': stop sequences must not be empty.", where, "invalid_value")
    return list(dict.fromkeys(stops))  # duplicates would only cost matching time


def _check_n(data: dict[str, Any]) -> None:
    n = _optional(data, "n", (int,), "an integer")
    if n is None or n == 1:
        return
    if n < 1:
        _fail(
            f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} instead.",
            "n",
            "integer_below_min_value",
        )
    _fail(
        f"Unsupported value: 'n' is {n}, but this gateway supports only n=1 (one choice per request).",
        "n",
        "unsupported_value",
    )


def _check_logprobs(data: dict[str, Any]) -> None:
    if _optional(data, "logprobs", (bool,), "a boolean"):
        _fail(
            "Unsupported value: 'logprobs' is not supported by this gateway (the web chat does not expose them).",
            "logprobs",
            "unsupported_value",
        )
    top = _optional(data, "top_logprobs", (int,), "an integer")
    if top:
        _fail(
            "Unsupported parameter: 'top_logprobs' is not supported by this gateway.",
            "top_logprobs",
            "unsupported_parameter",
        )


# --- tools and output format ------------------------------------------------------------

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _tools(data: dict[str, Any]) -> list[Tool]:
    """``tools`` (function tools) and the legacy ``functions``, as one list."""
    tools: list[Tool] = []
    for k, tool in enumerate(_optional(data, "tools", (list,), "an array") or []):
        where = f"tools[{k}]"
        if not isinstance(tool, dict):
            _wrong_type(where, "an object", tool)
        kind = tool.get("type", "function")
        if kind != "function":
            _fail(
                f"Invalid value for '{where}.type': {kind!r}. This gateway supports function tools only.",
                f"{where}.type",
                "invalid_value",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            if function is None:
                _fail(f"Missing required parameter: '{where}.function'.", f"{where}.function", "missing_required_parameter")
            _wrong_type(f"{where}.function", "an object", function)
        tools.append(_function(f"{where}.function", function))
    for k, function in enumerate(_optional(data, "functions", (list,), "an array") or []):
        if not isinstance(function, dict):
            _wrong_type(f"functions[{k}]", "an object", function)
        tools.append(_function(f"functions[{k}]", function))
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            _fail(f"Invalid 'tools': the function name {tool.name!r} is used twice.", "tools", "invalid_value")
        seen.add(tool.name)
    return tools


def _function(path: str, function: dict[str, Any]) -> Tool:
    name = function.get("name")
    if name is None:
        _fail(f"Missing required parameter: '{path}.name'.", f"{path}.name", "missing_required_parameter")
    if not isinstance(name, str):
        _wrong_type(f"{path}.name", "a string", name)
    if not _TOOL_NAME.fullmatch(name):
        _fail(
            f"Invalid '{path}.name': {name!r} does not match '^[a-zA-Z0-9_-]{{1,64}}$'.",
            f"{path}.name",
            "invalid_value",
        )
    description = _optional(function, "description", (str,), "a string", f"{path}.description") or ""
    parameters = _optional(function, "parameters", (dict,), "an object", f"{path}.parameters")
    strict = _optional(function, "strict", (bool,), "a boolean", f"{path}.strict")
    tool = Tool(name, description, strict=bool(strict))
    if parameters is not None:
        tool.parameters = parameters
    return tool


def _tool_choice(data: dict[str, Any], tools: list[Tool]) -> ToolChoice:
    choice = _optional(data, "tool_choice", (str, dict), "a string or an object")
    legacy = _optional(data, "function_call", (str, dict), "a string or an object")
    if choice is None and legacy is not None:
        return _legacy_choice(legacy, tools)
    if choice is None:
        return ToolChoice()
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            _fail(
                f"Invalid value for 'tool_choice': {choice!r}. Supported values are: 'none', 'auto' and 'required'.",
                "tool_choice",
                "invalid_value",
            )
        result = ToolChoice(choice)  # type: ignore[arg-type]
    elif choice.get("type") == "allowed_tools":
        result = _allowed_tools(choice, tools)
    else:
        kind = choice.get("type")
        if kind != "function":
            _fail(
                f"Invalid value for 'tool_choice.type': {kind!r}. Supported values are: 'function' and 'allowed_tools'.",
                "tool_choice.type",
                "invalid_value",
            )
        function = choice.get("function")
        if not isinstance(function, dict):
            _wrong_type("tool_choice.function", "an object", function)
        name = function.get("name")
        if not isinstance(name, str):
            _wrong_type("tool_choice.function.name", "a string", name)
        result = ToolChoice("tool", name)
    _check_choice_names(result, tools, "tool_choice")
    return result


def _legacy_choice(legacy: str | dict[str, Any], tools: list[Tool]) -> ToolChoice:
    if isinstance(legacy, str):
        if legacy not in ("none", "auto"):
            _fail(
                f"Invalid value for 'function_call': {legacy!r}. Supported values are: 'none' and 'auto'.",
                "function_call",
                "invalid_value",
            )
        return ToolChoice(legacy)  # type: ignore[arg-type]
    name = legacy.get("name")
    if not isinstance(name, str):
        _wrong_type("function_call.name", "a string", name)
    result = ToolChoice("tool", name)
    _check_choice_names(result, tools, "function_call")
    return result


def _allowed_tools(choice: dict[str, Any], tools: list[Tool]) -> ToolChoice:
    allowed = choice.get("allowed_tools")
    if not isinstance(allowed, dict):
        _wrong_type("tool_choice.allowed_tools", "an object", allowed)
    mode = allowed.get("mode", "auto")
    if mode not in ("auto", "required"):
        _fail(
            f"Invalid value for 'tool_choice.allowed_tools.mode': {mode!r}. Supported values are: 'auto' and 'required'.",
            "tool_choice.allowed_tools.mode",
            "invalid_value",
        )
    names: list[str] = []
    for k, entry in enumerate(allowed.get("tools") or []):
        function = entry.get("function") if isinstance(entry, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            _wrong_type(f"tool_choice.allowed_tools.tools[{k}].function.name", "a string", name)
        names.append(name)
    offered = {t.name for t in tools}
    for k, name in enumerate(names):
        if name not in offered:
            _unknown_tool(name, f"tool_choice.allowed_tools.tools[{k}]")
    # Only the allowed tools are shown to the model: the others do not exist for this turn.
    if names:
        tools[:] = [t for t in tools if t.name in names]
    return ToolChoice(mode)


def _check_choice_names(choice: ToolChoice, tools: list[Tool], param: str) -> None:
    if choice.forces_call and not tools:
        _fail(
            f"Invalid value for '{param}': a tool call is required, but no 'tools' are specified.",
            param,
            "invalid_value",
        )
    if choice.mode == "tool" and choice.name not in {t.name for t in tools}:
        _unknown_tool(choice.name or "", param)


def _unknown_tool(name: str, param: str) -> NoReturn:
    _fail(f"Invalid value for '{param}': no function named {name!r} is in 'tools'.", param, "invalid_value")


def _response_format(data: dict[str, Any]) -> OutputFormat:
    fmt = _optional(data, "response_format", (dict,), "an object")
    if fmt is None:
        return OutputFormat()
    kind = fmt.get("type")
    if kind == "text":
        return OutputFormat()
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            if spec is None:
                _fail(
                    "Missing required parameter: 'response_format.json_schema'.",
                    "response_format.json_schema",
                    "missing_required_parameter",
                )
            _wrong_type("response_format.json_schema", "an object", spec)
        name = spec.get("name")
        if not isinstance(name, str):
            _wrong_type("response_format.json_schema.name", "a string", name)
        schema = _optional(spec, "schema", (dict,), "an object", "response_format.json_schema.schema")
        strict = _optional(spec, "strict", (bool,), "a boolean", "response_format.json_schema.strict")
        return OutputFormat("json_schema", schema or {}, name, bool(strict))
    if not isinstance(kind, str):
        _wrong_type("response_format.type", "a string", kind)
    _fail(
        f"Invalid value for 'response_format.type': {kind!r}. Supported values are: 'text', 'json_object' "
        "and 'json_schema'.",
        "response_format.type",
        "invalid_value",
    )


def _check_ignored(data: dict[str, Any]) -> None:
    for key, (types, expected) in _IGNORED.items():
        _optional(data, key, types, expected)
    modalities = _optional(data, "modalities", (list,), "an array")
    if modalities and any(m != "text" for m in modalities):
        _fail(
            "Unsupported value: 'modalities' may only contain 'text' on this gateway.",
            "modalities",
            "unsupported_value",
        )
