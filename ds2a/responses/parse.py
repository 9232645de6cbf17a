"""Validation of ``POST /v1/responses`` bodies into the conversation model.

The request is checked field by field; what the web chat cannot honour is refused
with a 400 naming the field (``param`` as a JSON path such as ``input[2].content[0]``):
images, files and audio, a ``tool_choice`` that forces a tool the gateway cannot run,
background mode, stored prompts and conversations. Everything else a client may send
(``store``, ``include``, ``prompt_cache_key``, ``client_metadata``, ``truncation``,
``service_tier``, …) is accepted: a known field is type-checked, an unknown one is
ignored, since clients add fields faster than gateways follow.

Input items come out twice: normalised into OpenAI's item shapes, each with an id
(what ``store`` keeps and ``input_items`` lists, and what a continued request replays),
and as conversation ``Message``s (``items_to_messages``, which works on normalised
items only, so stored history goes through the same path as new input).

Tools: ``function`` tools are offered to the model; ``web_search`` tools switch to the
search variant of the model (unless the client says ``external_web_access: false``);
every other type (file search, code interpreter, computer use, MCP, shell, custom,
Codex CLI's ``namespace`` …) is tolerated and left out of the prompt, because the
upstream cannot run it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ds2a.api.body import load_json_object
from ds2a.api.fields import ARRAY as _ARRAY
from ds2a.api.fields import INTEGER as _INTEGER
from ds2a.api.fields import NUMBER as _NUMBER
from ds2a.api.fields import OBJECT as _OBJECT
from ds2a.api.fields import STRING as _STRING
from ds2a.api.fields import fail as _fail
from ds2a.api.fields import missing as _missing
from ds2a.api.fields import optional as _optional
from ds2a.api.fields import require as _require
from ds2a.api.fields import wrong_type as _wrong_type
from ds2a.api.models import ModelSpec, ModelTable
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
from ds2a.responses.ids import new_id

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
UNSUPPORTED_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}
WEB_SEARCH_TOOLS = frozenset(
    {"web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"}
)
# Records of built-in tool runs a client may replay from an earlier response: kept in the
# stored input, left out of the prompt (the model cannot have produced them here).
BUILTIN_TOOL_ITEMS = frozenset(
    {
        "file_search_call", "web_search_call", "computer_call", "computer_call_output",
        "image_generation_call", "code_interpreter_call", "local_shell_call", "local_shell_call_output",
        "shell_call", "shell_call_output", "apply_patch_call", "apply_patch_call_output",
        "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "mcp_call",
        "tool_search_call", "tool_search_output", "additional_tools", "compaction",
    }
)
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "custom_tool_call",
              "custom_tool_call_output")
ID_PREFIXES = {
    "message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
    "custom_tool_call": "ctc", "custom_tool_call_output": "ctco",
}

# Known parameters that change nothing here, with the JSON types they may have (null always allowed).
_IGNORED: dict[str, tuple[tuple[type, ...], str]] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "user": _STRING,
    "safety_identifier": _STRING,
    "prompt_cache_key": _STRING,
    "prompt_cache_retention": _STRING,
    "service_tier": _STRING,
    "truncation": _STRING,
    "client_metadata": _OBJECT,
    "stream_options": _OBJECT,
    "include": _ARRAY,
    "max_tool_calls": _INTEGER,
    "top_logprobs": _INTEGER,
}
# Fields echoed in the response object as the client sent them.
_ECHOED = ("temperature", "top_p", "user", "safety_identifier", "prompt_cache_key", "service_tier",
           "truncation", "max_tool_calls", "top_logprobs")


@dataclass(slots=True)
class ResponsesRequest:
    model: str  # the name the client sent (an alias stays an alias)
    spec: ModelSpec  # search switched on by a web_search tool
    input_items: list[dict[str, Any]]  # this request's input, normalised, each with an id
    instructions: str | None = None
    tools: list[Tool] = field(default_factory=list)  # the function tools the model is offered
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    output: OutputFormat = field(default_factory=OutputFormat)
    max_output_tokens: int | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    reasoning_summary: bool = False  # thoughts as summary parts (a summary was asked for), else as reasoning text
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the response object repeats

    def conversation(self, history: Sequence[dict[str, Any]] = ()) -> Conversation:
        """The conversation: instructions, then stored history, then this request's input."""
        messages = [Message("system", [Text(self.instructions)])] if self.instructions else []
        messages += items_to_messages([*history, *self.input_items])
        return Conversation(messages, self.tools, self.tool_choice, self.parallel_tool_calls, self.output)


def parse_responses_request(body: bytes, models: ModelTable) -> ResponsesRequest:
    """The validated request, or ApiError(400/404) naming the offending field."""
    data = _load(body)
    model = _require(data, "model", str, "a string")
    items = _input(data)
    instructions = _optional(data, "instructions", (str,), "a string")
    tools, search, echo_tools = _tools(data)
    choice, tools, search, echo_choice = _tool_choice(data, tools, search)
    output, echo_text = _text(data)
    summary, echo_reasoning = _reasoning(data)
    max_output_tokens = _max_output_tokens(data)
    stream = bool(_optional(data, "stream", (bool,), "a boolean"))
    store = _optional(data, "store", (bool,), "a boolean")
    parallel = _optional(data, "parallel_tool_calls", (bool,), "a boolean")
    previous = _previous_response_id(data)
    metadata = _metadata(data)
    _check_unsupported(data)
    _check_ignored(data)
    # Last, so a malformed request is told what is wrong with it before it is told the model is unknown.
    spec = models.resolve(model)
    if search and not spec.search:
        spec = dataclasses.replace(spec, search=True)
    echo = {key: data.get(key) for key in _ECHOED}
    echo.update(
        tools=echo_tools, tool_choice=echo_choice, text=echo_text, reasoning=echo_reasoning, metadata=metadata,
        parallel_tool_calls=parallel is not False, instructions=instructions, max_output_tokens=max_output_tokens,
        previous_response_id=previous, store=store is not False,
    )
    return ResponsesRequest(
        model=model, spec=spec, input_items=items, instructions=instructions, tools=tools, tool_choice=choice,
        parallel_tool_calls=parallel is not False, output=output, max_output_tokens=max_output_tokens,
        stream=stream, store=store is not False, previous_response_id=previous, reasoning_summary=summary,
        echo=echo,
    )


# --- helpers -------------------------------------------------------------------------


def _load(body: bytes) -> dict[str, Any]:
    return load_json_object(body)


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _wrong_type(path, "an object", value)
    return value


# --- input items -----------------------------------------------------------------------


def _input(data: dict[str, Any]) -> list[dict[str, Any]]:
    raw = data.get("input")
    if raw is None:
        if data.get("previous_response_id") is None:
            _missing("input")
        return []  # a continued response may answer the stored conversation as it is
    if isinstance(raw, str):
        return [_message_item("user", [{"type": "input_text", "text": raw}])]
    if not isinstance(raw, list):
        _wrong_type("input", "a string or an array of input items", raw)
    return [_item(f"input[{i}]", item) for i, item in enumerate(raw)]


def _item(path: str, raw: Any) -> dict[str, Any]:
    item = _object(raw, path)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"  # the short form: {"role": ..., "content": ...}
    if kind is None:
        _missing(f"{path}.type")
    if not isinstance(kind, str):
        _wrong_type(f"{path}.type", "a string", kind)
    item_id = _optional(item, "id", (str,), "a string", f"{path}.id")
    if kind == "message":
        normalised = _message(path, item)
    elif kind == "function_call":
        normalised = _function_call(path, item)
    elif kind == "function_call_output":
        normalised = _function_call_output(path, item)
    elif kind == "reasoning":
        normalised = _reasoning_item(path, item)
    elif kind == "custom_tool_call":
        normalised = _custom_tool_call(path, item)
    elif kind == "custom_tool_call_output":
        normalised = _custom_tool_call_output(path, item)
    elif kind in BUILTIN_TOOL_ITEMS:
        normalised = dict(item)
    elif kind == "item_reference":
        _fail(
            f"Unsupported value for '{path}.type': 'item_reference' items are not supported by this gateway; "
            "send the item itself, or continue with 'previous_response_id'.",
            f"{path}.type",
            "unsupported_value",
        )
    else:
        _fail(
            f"Invalid value for '{path}.type': {kind!r}. Supported values are: "
            + ", ".join(f"'{t}'" for t in ITEM_TYPES)
            + ".",
            f"{path}.type",
            "invalid_value",
        )
    normalised["id"] = item_id or new_id(ID_PREFIXES.get(kind, "item"))
    return normalised


def _message_item(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": new_id("msg"), "type": "message", "role": role, "content": content, "status": "completed"}


def _message(path: str, item: dict[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    if role is None:
        _missing(f"{path}.role")
    if not isinstance(role, str):
        _wrong_type(f"{path}.role", "a string", role)
    if role not in MESSAGE_ROLES:
        _fail(
            f"Invalid value for '{path}.role': {role!r}. Supported values are: 'user', 'assistant', 'system' "
            "and 'developer'.",
            f"{path}.role",
            "invalid_value",
        )
    content = item.get("content")
    where = f"{path}.content"
    if content is None:
        _missing(where)
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        texts = [_part_text(f"{where}[{j}]", part) for j, part in enumerate(content)]
    else:
        _wrong_type(where, "a string or an array of content parts", content)
    if role == "assistant":
        # The shape OpenAI's own output messages have, so a replayed history lists alike.
        parts = [{"type": "output_text", "text": t, "annotations": [], "logprobs": []} for t in texts]
    else:
        parts = [{"type": "input_text", "text": t} for t in texts]
    return {"type": "message", "role": role, "content": parts, "status": "completed"}


def _part_text(path: str, raw: Any) -> str:
    part = _object(raw, path)
    kind = part.get("type")
    if kind is None:
        _missing(f"{path}.type")
    if not isinstance(kind, str):
        _wrong_type(f"{path}.type", "a string", kind)
    if kind in TEXT_PARTS:
        return _require(part, "text", str, "a string", f"{path}.text")
    if kind == "refusal":
        return _require(part, "refusal", str, "a string", f"{path}.refusal")
    if kind in UNSUPPORTED_PARTS:
        _fail(
            f"Invalid content part '{path}': {UNSUPPORTED_PARTS[kind]} are not supported by this gateway "
            "(the DeepSeek web chat it relays to accepts text only). Send text parts only.",
            path,
            "unsupported_content",
        )
    _fail(
        f"Invalid value for '{path}.type': {kind!r}. Supported values are: 'input_text' and 'output_text'.",
        f"{path}.type",
        "invalid_value",
    )


def _arguments(item: dict[str, Any], key: str, path: str) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)  # some clients send parsed arguments
    _wrong_type(path, "a string", value)


def _function_call(path: str, item: dict[str, Any]) -> dict[str, Any]:
    call_id = _require(item, "call_id", str, "a string", f"{path}.call_id")
    name = _require(item, "name", str, "a string", f"{path}.name")
    arguments = _arguments(item, "arguments", f"{path}.arguments")
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"}


def _output_text(path: str, item: dict[str, Any]) -> str:
    output = item.get("output")
    if output is None:
        _missing(f"{path}.output")
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "\n".join(_part_text(f"{path}.output[{j}]", part) for j, part in enumerate(output))
    _wrong_type(f"{path}.output", "a string or an array of content parts", output)


def _function_call_output(path: str, item: dict[str, Any]) -> dict[str, Any]:
    call_id = _require(item, "call_id", str, "a string", f"{path}.call_id")
    output = _output_text(path, item)
    return {"type": "function_call_output", "call_id": call_id, "output": output, "status": "completed"}


def _custom_tool_call(path: str, item: dict[str, Any]) -> dict[str, Any]:
    call_id = _require(item, "call_id", str, "a string", f"{path}.call_id")
    name = _require(item, "name", str, "a string", f"{path}.name")
    text = _optional(item, "input", (str,), "a string", f"{path}.input") or ""
    return {"type": "custom_tool_call", "call_id": call_id, "name": name, "input": text}


def _custom_tool_call_output(path: str, item: dict[str, Any]) -> dict[str, Any]:
    call_id = _require(item, "call_id", str, "a string", f"{path}.call_id")
    return {"type": "custom_tool_call_output", "call_id": call_id, "output": _output_text(path, item)}


def _reasoning_item(path: str, item: dict[str, Any]) -> dict[str, Any]:
    normalised: dict[str, Any] = {"type": "reasoning"}
    for key, part_type in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = _optional(item, key, (list,), "an array", f"{path}.{key}")
        if parts is None and key == "content":
            continue
        texts = [_part_text(f"{path}.{key}[{j}]", part) for j, part in enumerate(parts or [])]
        normalised[key] = [{"type": part_type, "text": t} for t in texts]
    # encrypted_content is OpenAI's own sealed state: nothing here can read it, so it is not kept.
    return normalised


def items_to_messages(items: Sequence[dict[str, Any]]) -> list[Message]:
    """Normalised items as conversation messages.

    Consecutive assistant-side items (reasoning, assistant text, calls) form one
    assistant message, as they are one turn of the model; each call output is a
    ``tool`` message naming the call it answers.
    """
    messages: list[Message] = []
    call_names: dict[str, str] = {}

    def assistant_parts() -> list[Part]:
        if messages and messages[-1].role == "assistant":
            return messages[-1].parts
        messages.append(Message("assistant"))
        return messages[-1].parts

    for item in items:
        kind = item["type"]
        if kind == "message":
            texts = [Text(p.get("text", p.get("refusal", ""))) for p in item["content"]]
            role = item["role"]
            if role == "assistant":
                assistant_parts().extend(texts)
            else:
                messages.append(Message("system" if role == "developer" else role, list(texts)))
        elif kind in ("function_call", "custom_tool_call"):
            arguments = item["arguments"] if kind == "function_call" else item["input"]
            call_names[item["call_id"]] = item["name"]
            assistant_parts().append(ToolCall(item["call_id"], item["name"], arguments))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item["call_id"]
            messages.append(Message("tool", [ToolResult(call_id, call_names.get(call_id), item["output"])]))
        elif kind == "reasoning":
            text = "\n".join(p["text"] for p in item.get("content") or item.get("summary") or [])
            if text:
                assistant_parts().append(Reasoning(text))
    return messages


# --- tools -----------------------------------------------------------------------------


def _tools(data: dict[str, Any]) -> tuple[list[Tool], bool, list[dict[str, Any]]]:
    """The function tools, whether a web search tool asks for search, and the tools echoed back."""
    raw = _optional(data, "tools", (list,), "an array") or []
    tools: list[Tool] = []
    echo: list[dict[str, Any]] = []
    search = False
    for k, entry in enumerate(raw):
        path = f"tools[{k}]"
        tool = _object(entry, path)
        kind = _require(tool, "type", str, "a string", f"{path}.type")
        if kind == "function":
            parsed = _function_tool(path, tool)
            tools.append(parsed)
            echo.append(
                {"type": "function", "name": parsed.name, "description": parsed.description or None,
                 "parameters": parsed.parameters, "strict": parsed.strict}
            )
        elif kind in WEB_SEARCH_TOOLS:
            # Codex CLI offers web_search with external_web_access false on every request: no live
            # web, so no search model (which would cite pages and answer slower).
            live = _optional(tool, "external_web_access", (bool,), "a boolean", f"{path}.external_web_access")
            if live is not False:
                search = True
                echo.append({"type": kind})
        # Any other type names a tool the upstream cannot run: tolerated, left out of the prompt.
    return tools, search, echo


def _function_tool(path: str, tool: dict[str, Any]) -> Tool:
    name = _require(tool, "name", str, "a string", f"{path}.name")
    if not name:
        _fail(f"Invalid '{path}.name': empty string.", f"{path}.name", "empty_string")
    description = _optional(tool, "description", (str,), "a string", f"{path}.description") or ""
    parameters = _optional(tool, "parameters", (dict,), "an object", f"{path}.parameters")
    strict = _optional(tool, "strict", (bool,), "a boolean", f"{path}.strict")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    return Tool(name, description, parameters, bool(strict))


def _cannot_force(kind: str) -> NoReturn:
    _fail(
        f"Unsupported value: 'tool_choice' forces the '{kind}' tool, which this gateway cannot run "
        "(the DeepSeek web chat runs only function tools and web search). Use 'auto', 'none', "
        "'required' or a function tool.",
        "tool_choice",
        "unsupported_value",
    )


def _tool_choice(
    data: dict[str, Any], tools: list[Tool], search: bool
) -> tuple[ToolChoice, list[Tool], bool, Any]:
    """The tool choice, the tools left to offer under it, search, and the choice echoed back."""
    choice = _optional(data, "tool_choice", (str, dict), "a string or an object")
    if choice is None or choice == "auto":
        return ToolChoice("auto"), tools, search, "auto"
    if choice == "none":
        return ToolChoice("none"), tools, search, "none"
    if choice == "required":
        if tools:
            return ToolChoice("required"), tools, search, "required"
        if search:
            return ToolChoice("auto"), tools, search, "required"  # the search model always searches
        _fail(
            "Invalid value for 'tool_choice': 'required' forces a tool call, but no tool this gateway can run "
            "was offered (only function tools and web search run here).",
            "tool_choice",
            "invalid_value",
        )
    if isinstance(choice, str):
        _fail(
            f"Invalid value for 'tool_choice': {choice!r}. Supported values are: 'none', 'auto' and 'required'.",
            "tool_choice",
            "invalid_value",
        )
    kind = _require(choice, "type", str, "a string", "tool_choice.type")
    if kind == "function":
        name = _require(choice, "name", str, "a string", "tool_choice.name")
        if name not in {t.name for t in tools}:
            _fail(
                f"Invalid value for 'tool_choice.name': {name!r} is not one of the function tools in 'tools'.",
                "tool_choice.name",
                "invalid_value",
            )
        return ToolChoice("tool", name), tools, search, {"type": "function", "name": name}
    if kind == "allowed_tools":
        return _allowed_tools(choice, tools, search)
    if kind in WEB_SEARCH_TOOLS:
        return ToolChoice("auto"), tools, True, {"type": kind}
    _cannot_force(kind)


def _allowed_tools(choice: dict[str, Any], tools: list[Tool], search: bool) -> tuple[ToolChoice, list[Tool], bool, Any]:
    mode = _require(choice, "mode", str, "a string", "tool_choice.mode")
    if mode not in ("auto", "required"):
        _fail(
            f"Invalid value for 'tool_choice.mode': {mode!r}. Supported values are: 'auto' and 'required'.",
            "tool_choice.mode",
            "invalid_value",
        )
    listed = _require(choice, "tools", list, "an array", "tool_choice.tools")
    names: set[str] = set()
    allow_search = False
    for k, entry in enumerate(listed):
        ref = _object(entry, f"tool_choice.tools[{k}]")
        kind = ref.get("type")
        if kind == "function":
            names.add(_require(ref, "name", str, "a string", f"tool_choice.tools[{k}].name"))
        elif kind in WEB_SEARCH_TOOLS:
            allow_search = True
    allowed = [t for t in tools if t.name in names]
    search = search and allow_search
    if mode == "required" and not allowed and not search:
        _fail(
            "Invalid value for 'tool_choice': 'allowed_tools' in 'required' mode forces a tool call, but none of "
            "the allowed tools can run on this gateway (only function tools and web search run here).",
            "tool_choice",
            "invalid_value",
        )
    tool_mode = "required" if mode == "required" and allowed else "auto"
    echo = {"type": "allowed_tools", "mode": mode, "tools": listed}
    return ToolChoice(tool_mode), allowed, search, echo


# --- other parameters ------------------------------------------------------------------


def _text(data: dict[str, Any]) -> tuple[OutputFormat, dict[str, Any]]:
    text = _optional(data, "text", (dict,), "an object") or {}
    verbosity = _optional(text, "verbosity", (str,), "a string", "text.verbosity")
    fmt = _optional(text, "format", (dict,), "an object", "text.format")
    echo: dict[str, Any] = {"format": {"type": "text"}}
    if verbosity is not None:
        echo["verbosity"] = verbosity
    if fmt is None:
        return OutputFormat(), echo
    kind = _require(fmt, "type", str, "a string", "text.format.type")
    if kind == "text":
        return OutputFormat(), echo
    if kind == "json_object":
        echo["format"] = {"type": "json_object"}
        return OutputFormat("json_object"), echo
    if kind != "json_schema":
        _fail(
            f"Invalid value for 'text.format.type': {kind!r}. Supported values are: 'text', 'json_object' "
            "and 'json_schema'.",
            "text.format.type",
            "invalid_value",
        )
    name = _require(fmt, "name", str, "a string", "text.format.name")
    schema = _require(fmt, "schema", dict, "an object", "text.format.schema")
    strict = _optional(fmt, "strict", (bool,), "a boolean", "text.format.strict")
    description = _optional(fmt, "description", (str,), "a string", "text.format.description")
    echo["format"] = {"type": "json_schema", "name": name, "schema": schema, "strict": bool(strict)}
    if description is not None:
        echo["format"]["description"] = description
    return OutputFormat("json_schema", schema, name, bool(strict)), echo


def _reasoning(data: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Whether thoughts go out as a summary, and the reasoning settings echoed back.

    The web chat shows its whole chain of thought and has no summariser; a client that
    asks for a summary (Codex CLI does, to show what the model is thinking) gets the
    thoughts as summary text, any other gets them as reasoning text.
    """
    reasoning = _optional(data, "reasoning", (dict,), "an object") or {}
    effort = _optional(reasoning, "effort", (str,), "a string", "reasoning.effort")
    summary = _optional(reasoning, "summary", (str,), "a string", "reasoning.summary")
    legacy = _optional(reasoning, "generate_summary", (str,), "a string", "reasoning.generate_summary")
    summary = summary or legacy
    return summary not in (None, "none"), {"effort": effort, "summary": summary}


def _max_output_tokens(data: dict[str, Any]) -> int | None:
    value = _optional(data, "max_output_tokens", (int,), "an integer")
    if value is not None and value < 1:
        _fail(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, but got {value} "
            "instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    return value


def _previous_response_id(data: dict[str, Any]) -> str | None:
    value = _optional(data, "previous_response_id", (str,), "a string")
    if value == "":
        _fail("Invalid 'previous_response_id': empty string.", "previous_response_id", "empty_string")
    return value


def _metadata(data: dict[str, Any]) -> dict[str, str] | None:
    metadata = _optional(data, "metadata", (dict,), "an object")
    for key, value in (metadata or {}).items():
        if not isinstance(value, str):
            _wrong_type(f"metadata.{key}", "a string", value)
    return metadata


def _check_unsupported(data: dict[str, Any]) -> None:
    if _optional(data, "background", (bool,), "a boolean"):
        _fail(
            "Unsupported value: 'background' responses are not supported by this gateway; stream the response "
            "instead.",
            "background",
            "unsupported_value",
        )
    for key, what in (("conversation", "conversations"), ("prompt", "stored prompts")):
        if data.get(key) is not None:
            _fail(
                f"Unsupported parameter: '{key}': {what} are not supported by this gateway"
                + ("; continue with 'previous_response_id' instead." if key == "conversation" else "."),
                key,
                "unsupported_parameter",
            )


def _check_ignored(data: dict[str, Any]) -> None:
    for key, (types, expected) in _IGNORED.items():
        _optional(data, key, types, expected)
