"""The conversation model: what every API dialect parses a request into.

A dialect (OpenAI chat, Responses, Anthropic) validates its own request shape and
produces a ``Generation``: the conversation as messages of typed parts, the tools
offered, the tool choice, the requested output format and the answer limits. The
relay core renders it into the DeepSeek prompt in one place (``ds2a.relay.prompt``)
and never looks at a dialect's JSON.

Roles are the model's, not a dialect's: ``system`` (system, developer, Anthropic's
``system``, Responses ``instructions``), ``user``, ``assistant``, and ``tool`` for
messages that carry tool results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# "developer" is a system message too; it keeps its own name so that a system message
# followed by a developer message stay two blocks of the prompt, as the client wrote them.
Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Reasoning:
    """An assistant's earlier thoughts sent back in the history (kept out of the prompt)."""

    text: str


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it (or the client sent it)


@dataclass(slots=True)
class ToolResult:
    call_id: str
    name: str | None  # the tool it answers, when known (paired by call_id otherwise)
    content: str
    is_error: bool = False


Part = Text | Reasoning | ToolCall | ToolResult


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if type(p) is Text)


@dataclass(slots=True)
class Tool:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False


@dataclass(slots=True)
class ToolChoice:
    """``auto``: the model decides; ``none``: no call; ``required``: some call; ``tool``: ``name``."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None

    @property
    def forces_call(self) -> bool:
        return self.mode in ("required", "tool")


@dataclass(slots=True)
class OutputFormat:
    """``text``, ``json_object`` or ``json_schema`` (with ``schema``, ``name``, ``strict``)."""

    kind: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False

    @property
    def is_json(self) -> bool:
        return self.kind != "text"


@dataclass(slots=True)
class Conversation:
    messages: list[Message]
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    output: OutputFormat = field(default_factory=OutputFormat)

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice.mode != "none"
