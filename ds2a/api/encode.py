"""OpenAI chat completion bodies and stream chunks, as bytes.

A stream relays one chunk per upstream text event, so the chunk encoder is on the
hot path: everything but the text is rendered once per response into byte
templates, and a chunk is ``head + escaped text + tail``. The text is escaped by
the json module's C string encoder (no dict is built or walked per chunk) and
stays UTF-8 (no ``\\uXXXX`` for non-ASCII), which keeps Chinese text at a third
of the escaped size.

Chunk shape (OpenAI's ``chat.completion.chunk``): every chunk carries the same
``id``, ``created`` and ``model``; one choice with ``index: 0``, ``logprobs: null``,
and ``finish_reason`` null except on the one finish chunk. Reasoning goes to
``delta.reasoning_content``, the field DeepSeek's own API uses, which reasoning-aware
clients already read.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from ds2a.api.jsonbytes import dumps as _dumps
from ds2a.api.jsonbytes import quote as _quote

DONE = b"data: [DONE]\n\n"
FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls", "function_call"})

_ID_ALPHABET = string.ascii_letters + string.digits


def new_completion_id() -> str:
    """``chatcmpl-`` + 29 random alphanumerics, the length OpenAI's ids have."""
    # One random draw, not 29 secrets.choice calls (a getrandom syscall each).
    n = int.from_bytes(secrets.token_bytes(22), "big")
    chars = []
    for _ in range(29):
        n, i = divmod(n, 62)
        chars.append(_ID_ALPHABET[i])
    return "chatcmpl-" + "".join(chars)


def usage_dict(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> dict[str, Any]:
    """OpenAI ``usage``; ``completion_tokens`` includes the reasoning tokens, as in OpenAI's API."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


class ChunkEncoder:
    """Stream chunks of one completion, each the complete ``data: …\\n\\n`` SSE event."""

    __slots__ = ("_envelope", "_content_head", "_reasoning_head", "_tail", "_role")

    DONE = DONE

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._envelope = (
            b'{"id":'
            + _quote(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(int(created)).encode()
            + b',"model":'
            + _quote(model)
        )
        choice_head = b"data: " + self._envelope + b',"choices":[{"index":0,"delta":{'
        self._content_head = choice_head + b'"content":'
        self._reasoning_head = choice_head + b'"reasoning_content":'
        self._tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        self._role = choice_head + b'"role":"assistant","content":""' + self._tail

    def role(self) -> bytes:
        """The first chunk: announces the assistant role with empty content."""
        return self._role

    def content(self, text: str) -> bytes:
        return self._content_head + _quote(text) + self._tail

    def reasoning(self, text: str) -> bytes:
        return self._reasoning_head + _quote(text) + self._tail

    def delta(self, delta: dict[str, Any]) -> bytes:
        """A chunk with any other delta (tool calls); not on the plain-text hot path."""
        return b"data: " + self._envelope + b',"choices":[{"index":0,"delta":' + _dumps(delta) + self._tail[1:]

    def tool_call_start(self, index: int, call_id: str, name: str) -> bytes:
        call = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        return self.delta({"tool_calls": [call]})

    def tool_call_arguments(self, index: int, fragment: str) -> bytes:
        return self.delta({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def function_call_start(self, name: str) -> bytes:
        """The legacy ``functions`` API: one call, no id."""
        return self.delta({"function_call": {"name": name, "arguments": ""}})

    def function_call_arguments(self, fragment: str) -> bytes:
        return self.delta({"function_call": {"arguments": fragment}})

    def finish(self, reason: str, annotations: list[dict[str, Any]] | None = None) -> bytes:
        """The only chunk with a finish_reason; citations ride along as delta.annotations."""
        if reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish reason {reason!r}")
        delta = _dumps({"annotations": annotations}) if annotations else b"{}"
        return (
            b"data: "
            + self._envelope
            + b',"choices":[{"index":0,"delta":'
            + delta
            + b',"logprobs":null,"finish_reason":'
            + _quote(reason)
            + b"}]}\n\n"
        )

    def usage(self, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> bytes:
        """The include_usage chunk: no choices, the usage of the whole request."""
        usage = _dumps(usage_dict(prompt_tokens, completion_tokens, reasoning_tokens))
        return b"data: " + self._envelope + b',"choices":[],"usage":' + usage + b"}\n\n"

    @staticmethod
    def error(message: str, type: str = "upstream_error", code: str | None = None) -> bytes:
        """An error event after streaming began; OpenAI's SDKs raise it as an APIError."""
        return b"data: " + _dumps({"error": {"message": message, "type": type, "param": None, "code": code}}) + b"\n\n"


def completion_body(
    completion_id: str,
    created: int,
    model: str,
    *,
    content: str,
    reasoning: str | None = None,
    finish_reason: str = "stop",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    reasoning_tokens: int = 0,
    annotations: list[dict[str, Any]] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    function_call: dict[str, Any] | None = None,
) -> bytes:
    """A non-stream ``chat.completion``. ``reasoning`` None leaves out reasoning_content
    (non-thinking models); an empty string keeps it, as DeepSeek's API does for reasoners.
    With tool calls and no text, ``content`` is null, as in OpenAI's answers."""
    if finish_reason not in FINISH_REASONS:
        raise ValueError(f"unknown finish reason {finish_reason!r}")
    calling = bool(tool_calls or function_call)
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if calling else content)}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    message["refusal"] = None
    if annotations:
        message["annotations"] = annotations
    if tool_calls:
        message["tool_calls"] = tool_calls
    if function_call:
        message["function_call"] = function_call
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(created),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_dict(prompt_tokens, completion_tokens, reasoning_tokens),
    }
    return _dumps(body)
