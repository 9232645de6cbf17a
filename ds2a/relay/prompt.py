"""A Conversation rendered into the one prompt string the web chat takes.

Placeholder until the tool-calling convention lands: tool calls and results are
rendered as text lines exactly as request validation did before (byte-identical
prompts for chat completions).
"""

from __future__ import annotations

from ds2a.deepseek.prompt import build_prompt, render_tool_calls, render_tool_result
from ds2a.relay.conversation import Conversation, Reasoning, Text, ToolCall, ToolResult


def render_prompt(conversation: Conversation, template: str = "deepseek", *, correction: str | None = None) -> str:
    pairs: list[tuple[str, str]] = []
    names: dict[str, str] = {}
    for message in conversation.messages:
        texts = [p.text for p in message.parts if type(p) is Text]
        calls = [p for p in message.parts if type(p) is ToolCall]
        results = [p for p in message.parts if type(p) is ToolResult]
        if message.role == "assistant":
            text = "\n".join(texts)
            rendered = render_tool_calls((c.id, c.name, c.arguments) for c in calls)
            for c in calls:
                if c.id:
                    names[c.id] = c.name
            if rendered:
                text = f"{text}\n{rendered}" if text else rendered
            pairs.append(("assistant", text))
        elif results:
            for r in results:
                pairs.append(("tool", render_tool_result(r.name or names.get(r.call_id), r.call_id or None, r.content)))
        elif not any(type(p) is Reasoning for p in message.parts) or texts:
            pairs.append((message.role, "\n".join(texts)))
    return build_prompt(pairs, template)
