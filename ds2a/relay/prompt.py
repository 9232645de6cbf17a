"""The one place a ``Conversation`` becomes the single prompt string the web chat accepts.

The web API takes one ``prompt`` per request (protocol doc §11.1), so the whole history is
rendered as text. Two templates:

``deepseek`` (default) reproduces the 2025 gateways' format byte for byte:
consecutive messages with the same role are merged with a blank line, then each
block is rendered in order and concatenated with nothing in between —
user/system/developer/tool as ``<｜User｜>`` + text, assistant as
``<｜Assistant｜>`` + text + ``<｜end▁of▁sentence｜>``. A first block that would
get the User marker is left bare (the doc's rule; an assistant first block keeps
its markers, since the rule is only stated for the User marker). Markdown images
``![alt](url)`` become links ``[alt](url)``: the web chat cannot see images, and a
link keeps the URL readable to the model.

``plain`` writes a transcript: ``System: …`` / ``User: …`` / ``Assistant: …`` /
``Tool: …``, one paragraph per message, joined by blank lines.

A conversation without tools and without a JSON output format is rendered exactly as
before tools existed (``build_prompt`` over ``(role, text)`` pairs; earlier tool traffic,
if a client sends some, as ``Tool call (name, id): {…}`` / ``Tool result (name, id):``
lines from ``render_tool_calls``/``render_tool_result``).

**The tool convention.** With tools, the first block (after the client's own system
text, which is kept whole however long) carries a *Tools* section: each tool as
``### name`` / ``Description: …`` / ``Parameters: {JSON Schema}`` (the layout DeepSeek's
own chat template uses), then how to call: a call is the marker ``<｜tool▁call｜>``, one
JSON object ``{"name": …, "arguments": {…}}`` and the marker ``<｜/tool▁call｜>``; several
calls are several such blocks back to back (when parallel calls are allowed); nothing is
written after the last call; calls never go in the thinking or in a code block. The
bars are full-width (U+FF5C) and the joiner is U+2581, so the markers look like
DeepSeek's special tokens yet are none of them, and ordinary Markdown, code or XML
never contains them. The tool-choice rule is the last rule (``auto``: call when it
helps; ``required``: call at least one tool; a named tool: call that tool; ``none``: do
not call), and a forced choice is repeated at the very end of the prompt.

Earlier calls are rendered in the assistant's turn in the same markup, with the call's
id: ``<｜tool▁call｜>{"id": …, "name": …, "arguments": {…}}<｜/tool▁call｜>``. A tool result
goes in the next user turn (to the model it is input it did not write) as
``<｜tool▁result｜>{"id": …, "name": …}`` + newline + the content + newline +
``<｜/tool▁result｜>``; an error result adds ``"error": true``, and an empty result reads
``(no output)``. No "Tool result:" heading line is used: peers found such headers made
the model write whole invented turns.

**JSON answers.** ``json_object`` / ``json_schema`` add an *Answer format* section (the
schema included, compact) and a reminder at the end of the prompt.

**Corrections.** ``tool_correction`` / ``json_correction`` build the instruction the relay
adds (``render_prompt(conv, correction=…)``) when it asks again after an answer it could
not use; it starts with ``CORRECTION_LEAD``.

Every sentence is fixed: the same conversation always gives the same prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ds2a.relay.conversation import Conversation, Message, OutputFormat, Text, Tool, ToolCall, ToolChoice, ToolResult
from ds2a.relay.tools.markup import CALL_CLOSE, CALL_OPEN, RESULT_CLOSE, RESULT_OPEN

USER = "<\uff5cUser\uff5c>"
ASSISTANT = "<\uff5cAssistant\uff5c>"
END_OF_SENTENCE = "<\uff5cend\u2581of\u2581sentence\uff5c>"

# Only the "!" before an image is dropped; the rest of the link is left untouched so a
# malformed image never swallows neighbouring text.
_IMAGE = re.compile(r"!(\[[^\]\n]*\]\()")

_PLAIN_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
_USER_ROLES = frozenset({"system", "developer", "user", "tool"})

# --- the sentences of the convention (the simulator reads them like a model would) -------

TOOLS_HEADING = "## Tools"
TOOLS_INTRO = "You can call the following tools."
HOW_HEADING = "## How to call a tool"
FORMAT_HEADING = "## Answer format"
EMPTY_RESULT = "(no output)"
CORRECTION_LEAD = "Your previous answer could not be used"

CHOICE_AUTO = "Call a tool when it helps you answer; otherwise answer in text."
CHOICE_REQUIRED = "In this answer you must call at least one tool."
CHOICE_TOOL = "In this answer you must call the tool `{name}`."
CHOICE_NONE = "In this answer do not call any tool: answer in text."
PARALLEL_YES = "You may call several tools at once: write one call block per call, one after another."
PARALLEL_NO = "Call at most one tool per answer."
JSON_OBJECT_RULE = "Answer with one JSON object and nothing else: no text before or after it, no code fences."
JSON_SCHEMA_RULE = "The JSON must be valid against this JSON Schema{label}: {schema}"
JSON_WITH_TOOLS = "When you answer in text rather than with tool calls, follow this format."
JSON_REMINDER = "Answer with the JSON only."


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- the templates (role, text) -------------------------------------------------------------


def build_prompt(messages: Sequence[tuple[str, str]], template: str = "deepseek") -> str:
    """The prompt for ``messages`` as (role, text) pairs, roles as normalised by validation."""
    if template == "deepseek":
        return _deepseek(messages)
    if template == "plain":
        return _plain(messages)
    raise ValueError(f"unknown prompt template {template!r}")


def _merge(messages: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    blocks: list[tuple[str, list[str]]] = []
    for role, text in messages:
        if blocks and blocks[-1][0] == role:
            blocks[-1][1].append(text)
        else:
            blocks.append((role, [text]))
    return [(role, "\n\n".join(texts)) for role, texts in blocks]


def _deepseek(messages: Sequence[tuple[str, str]]) -> str:
    out: list[str] = []
    for i, (role, text) in enumerate(_merge(messages)):
        text = _IMAGE.sub(r"\1", text)
        if role == "assistant":
            out.append(ASSISTANT + text + END_OF_SENTENCE)
        elif role in _USER_ROLES and i > 0:
            out.append(USER + text)
        else:
            out.append(text)
    return "".join(out)


def _plain(messages: Sequence[tuple[str, str]]) -> str:
    return "\n\n".join(f"{_PLAIN_LABELS.get(role, role.capitalize())}: {text}" for role, text in messages)


# --- tool traffic as plain lines (conversations without tools) --------------------------------


def _label(kind: str, name: str | None, call_id: str | None) -> str:
    parts = ", ".join(part for part in (name, call_id) if part)
    return f"{kind} ({parts}):" if parts else f"{kind}:"


def render_tool_calls(calls: Iterable[tuple[str, str, str]]) -> str:
    """An assistant's tool calls, (id, name, arguments) each, one line per call."""
    return "\n".join(f"{_label('Tool call', name, call_id)} {arguments}" for call_id, name, arguments in calls)


def render_tool_result(name: str | None, call_id: str | None, content: str) -> str:
    """A tool message's text, headed by the tool it answers so the model can pair them."""
    return f"{_label('Tool result', name, call_id)}\n{content}"


def _legacy_text(message: Message, names: dict[str, str]) -> str:
    if message.role == "assistant":
        text = message.text
        calls = render_tool_calls((p.id, p.name, p.arguments) for p in message.parts if type(p) is ToolCall)
        if calls:
            return f"{text}\n{calls}" if text else calls
        return text
    pieces: list[str] = []
    for part in message.parts:
        if type(part) is Text:
            pieces.append(part.text)
        elif type(part) is ToolResult:
            pieces.append(render_tool_result(part.name or names.get(part.call_id), part.call_id or None, part.content))
    separator = "\n\n" if any(type(p) is ToolResult for p in message.parts) else "\n"
    return separator.join(pieces)


# --- the tool convention ----------------------------------------------------------------------


def render_call(call: ToolCall) -> str:
    """An earlier call, in the markup the model is asked to write (plus the call's id)."""
    head: dict[str, Any] = {"id": call.id} if call.id else {}
    return CALL_OPEN + _dump({**head, "name": call.name, "arguments": _arguments_value(call.arguments)}) + CALL_CLOSE


def _arguments_value(arguments: str) -> Any:
    # A client's arguments are shown as the object they hold; text that is not JSON stays a string.
    if not arguments.strip():
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def render_result(result: ToolResult) -> str:
    """A tool result as the model reads it: header object, content, closing marker."""
    head: dict[str, Any] = {}
    if result.call_id:
        head["id"] = result.call_id
    if result.name:
        head["name"] = result.name
    if result.is_error:
        head["error"] = True
    content = result.content if result.content.strip() else EMPTY_RESULT
    return f"{RESULT_OPEN}{_dump(head)}\n{content}\n{RESULT_CLOSE}"


def _message_text(message: Message, names: dict[str, str]) -> str:
    pieces: list[str] = []
    for part in message.parts:
        kind = type(part)
        if kind is Text:
            pieces.append(part.text)  # type: ignore[union-attr]
        elif kind is ToolCall:
            pieces.append(render_call(part))  # type: ignore[arg-type]
        elif kind is ToolResult:
            result: ToolResult = part  # type: ignore[assignment]
            if result.name is None and result.call_id in names:
                result = ToolResult(result.call_id, names[result.call_id], result.content, result.is_error)
            pieces.append(render_result(result))
        # Reasoning parts stay out of the prompt.
    return "\n".join(pieces)


def render_tool(tool: Tool) -> str:
    lines = [f"### {tool.name}"]
    if tool.description.strip():
        lines.append(f"Description: {tool.description.strip()}")
    lines.append(f"Parameters: {_dump(tool.parameters or {'type': 'object', 'properties': {}})}")
    return "\n".join(lines)


def choice_rule(choice: ToolChoice) -> str:
    if choice.mode == "required":
        return CHOICE_REQUIRED
    if choice.mode == "tool":
        return CHOICE_TOOL.format(name=choice.name)
    if choice.mode == "none":
        return CHOICE_NONE
    return CHOICE_AUTO


def tools_section(conv: Conversation) -> str:
    listing = "\n\n".join(render_tool(tool) for tool in conv.tools)
    rules = [
        f"To call a tool, write the marker {CALL_OPEN}, then one JSON object with the tool's \"name\" and its "
        f"\"arguments\" (an object valid against the tool's Parameters schema), then the marker {CALL_CLOSE}, "
        f"like this:\n{CALL_OPEN}{{\"name\": \"TOOL_NAME\", \"arguments\": {{\"ARGUMENT\": \"VALUE\"}}}}{CALL_CLOSE}",
        "- Write strict JSON: double quotes, quotes and line breaks inside strings escaped (\\\" and \\n), "
        "no trailing commas, no comments.",
        "- Write calls in your answer, never in your thinking and never inside a code block: "
        "a call in a code block is only text.",
        "- " + (PARALLEL_YES if conv.parallel_tool_calls else PARALLEL_NO),
        "- After your last call, stop: write nothing more. The results come back in the next message, each "
        f"between {RESULT_OPEN} and {RESULT_CLOSE}, with the id and name of the call it answers. "
        "Never write a tool result yourself.",
        "- When you have the results, use them: answer the user, or call another tool if you need more.",
        "- " + choice_rule(conv.tool_choice),
    ]
    return f"{TOOLS_HEADING}\n\n{TOOLS_INTRO}\n\n{listing}\n\n{HOW_HEADING}\n\n" + "\n".join(rules)


def format_section(output: OutputFormat, with_tools: bool) -> str:
    lines = [FORMAT_HEADING, ""]
    if with_tools:
        lines.append(JSON_WITH_TOOLS)
    lines.append(JSON_OBJECT_RULE if output.kind == "json_object" or not output.schema else _schema_rule_lead(output))
    if output.kind == "json_schema" and output.schema:
        label = f" (\"{output.name}\")" if output.name else ""
        lines.append(JSON_SCHEMA_RULE.format(label=label, schema=_dump(output.schema)))
    return "\n".join(lines)


def _schema_rule_lead(output: OutputFormat) -> str:
    # A schema may ask for an array or a string at the top; the object rule would contradict it.
    top = output.schema.get("type") if output.schema else None
    if top in (None, "object"):
        return JSON_OBJECT_RULE
    return "Answer with one JSON value and nothing else: no text before or after it, no code fences."


def _reminder(conv: Conversation) -> str:
    lines: list[str] = []
    if conv.tools and conv.tool_choice.forces_call:
        lines.append(choice_rule(conv.tool_choice))
    if conv.output.is_json and not (conv.tools and conv.tool_choice.forces_call):
        lines.append(JSON_REMINDER)
    return " ".join(lines)


def tool_correction(conv: Conversation, problems: Sequence[str]) -> str:
    """The instruction for a second try after an answer without a usable call."""
    reasons = "; ".join(problems) if problems else "it did not call a tool"
    sentences = [f"{CORRECTION_LEAD}: {reasons}."]
    if conv.tool_choice.forces_call:
        sentences.append(choice_rule(conv.tool_choice))
    sentences.append(
        f"Write each call exactly as described: {CALL_OPEN}, one JSON object with \"name\" and \"arguments\" "
        f"valid against the tool's Parameters schema, then {CALL_CLOSE}."
    )
    return " ".join(sentences)


def json_correction(conv: Conversation, problem: str) -> str:
    """The instruction for a second try after an answer that was not the JSON asked for."""
    return f"{CORRECTION_LEAD}: {problem}. Answer again with the JSON only, valid against the schema above."


# --- the entry point -----------------------------------------------------------------------------


def render_prompt(conv: Conversation, template: str = "deepseek", *, correction: str | None = None) -> str:
    """The prompt for ``conv`` (see the module docstring); ``correction`` ends it when asking again."""
    if template not in ("deepseek", "plain"):
        raise ValueError(f"unknown prompt template {template!r}")
    names = {p.id: p.name for m in conv.messages for p in m.parts if type(p) is ToolCall and p.id}
    if not conv.tools and not conv.output.is_json and correction is None:
        return build_prompt([(m.role, _legacy_text(m, names)) for m in conv.messages], template)
    # Tool results are input the model did not write (User blocks); developer text is system text.
    roles = {"tool": "user", "developer": "system"}
    pairs = [(roles.get(m.role, m.role), _message_text(m, names)) for m in conv.messages]
    sections = []
    if conv.tools:
        sections.append(tools_section(conv))
    if conv.output.is_json:
        sections.append(format_section(conv.output, bool(conv.tools)))
    if sections:
        _add_preamble(pairs, "\n\n".join(sections))
    ending = " ".join(t for t in (_reminder(conv), correction) if t)
    if ending:
        _add_ending(pairs, ending)
    return build_prompt(pairs, template)


def _add_preamble(pairs: list[tuple[str, str]], preamble: str) -> None:
    """After the client's leading system text (kept whole), or as the first block."""
    lead = 0
    while lead < len(pairs) and pairs[lead][0] == "system":
        lead += 1
    if lead:
        pairs[lead - 1] = ("system", f"{pairs[lead - 1][1]}\n\n{preamble}")
    else:
        pairs.insert(0, ("system", preamble))


def _add_ending(pairs: list[tuple[str, str]], ending: str) -> None:
    if pairs and pairs[-1][0] == "user":
        pairs[-1] = ("user", f"{pairs[-1][1]}\n\n{ending}")
    else:
        pairs.append(("user", ending))
