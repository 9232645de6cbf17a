"""Flatten an OpenAI conversation into the single prompt the web chat accepts.

The web API takes one ``prompt`` string per request (protocol doc §11.1), so the
whole history is rendered as text. Two templates:

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

Tool traffic has no place in either template, so it is rendered as text before it
gets here (``render_tool_calls``, ``render_tool_result``, used by request
validation): an assistant's calls are appended to its text, and a tool result is a
``tool`` message whose text starts with ``Tool result (name, id):``. In the
deepseek template a tool result is a User block, because to the model it is input
it did not write; the special-token spellings are ordinary text to the web
service either way (§11.1 [I]).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

USER = "<\uff5cUser\uff5c>"
ASSISTANT = "<\uff5cAssistant\uff5c>"
END_OF_SENTENCE = "<\uff5cend\u2581of\u2581sentence\uff5c>"

# Only the "!" before an image is dropped; the rest of the link is left untouched so a
# malformed image never swallows neighbouring text.
_IMAGE = re.compile(r"!(\[[^\]\n]*\]\()")

_PLAIN_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
_USER_ROLES = frozenset({"system", "developer", "user", "tool"})


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


def _label(kind: str, name: str | None, call_id: str | None) -> str:
    parts = ", ".join(part for part in (name, call_id) if part)
    return f"{kind} ({parts}):" if parts else f"{kind}:"


def render_tool_calls(calls: Iterable[tuple[str, str, str]]) -> str:
    """An assistant's tool calls, (id, name, arguments) each, one line per call."""
    return "\n".join(f"{_label('Tool call', name, call_id)} {arguments}" for call_id, name, arguments in calls)


def render_tool_result(name: str | None, call_id: str | None, content: str) -> str:
    """A tool message's text, headed by the tool it answers so the model can pair them."""
    return f"{_label('Tool result', name, call_id)}\n{content}"
