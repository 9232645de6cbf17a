"""Anthropic Messages answers as bytes: the SSE event sequence, or one ``message`` body.

A stream is, exactly as Anthropic sends it (each event an ``event:`` line naming
the type and a ``data:`` line with compact JSON)::

    message_start          the message shell: id, model, empty content, input usage
    ping
    content_block_start    per block, index 0, 1, …: thinking, text, tool_use
    content_block_delta    thinking_delta / signature_delta, text_delta, input_json_delta
    content_block_stop
    message_delta          stop_reason, stop_sequence, usage.output_tokens
    message_stop

Thinking blocks come only when the request enabled thinking, and carry a
``signature`` (sent as a ``signature_delta`` just before the block ends): clients
must echo it back with the block, and only do so if it is there. It is an HMAC of
the thinking text under a fixed key: opaque and stable, never verified, since the
gateway accepts any history anyway.

The sinks implement ``ds2a.relay.answer.AnswerSink``. ``MessageStream`` builds each
event from byte templates made once per block (text is escaped by the json module's
C encoder, UTF-8 kept) and writes everything of one upstream read in one write;
``MessageCollector`` keeps the blocks for one ``message`` body. Neither touches a
socket: the stream writes through any object with ``write``/``paused``/``drain``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Protocol

from ds2a.api.jsonbytes import dumps
from ds2a.api.jsonbytes import quote as _quote
from ds2a.anthropic.errors import stream_error_event
from ds2a.relay.answer import Outcome

COALESCE_MAX = 32  # events joined into one write at most, so no write grows unbounded
_SIGNATURE_KEY = b"ds2a thinking signature v1"
_ID_ALPHABET = string.ascii_letters + string.digits

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

# The relay's finish reasons in Anthropic's words; "stop" becomes "stop_sequence"
# when a stop sequence ended the answer.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


class Writer(Protocol):
    """Where a stream goes: ``ds2a.server.Responder`` in the gateway, a list in tests."""

    @property
    def paused(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


def new_id(prefix: str) -> str:
    """``prefix`` + 24 random alphanumerics, the shape of Anthropic's ids (``msg_…``, ``toolu_…``)."""
    n = int.from_bytes(secrets.token_bytes(18), "big")
    chars = []
    for _ in range(24):
        n, i = divmod(n, 62)
        chars.append(_ID_ALPHABET[i])
    return prefix + "".join(chars)


def tool_use_id(call_id: str) -> str:
    """The relay's ``call_…`` id as a ``toolu_…`` id; the same call always gets the same id."""
    return "toolu_" + call_id.removeprefix("call_")


def stop_reason(outcome: Outcome) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)`` for how the answer ended."""
    if outcome.finish_reason == "stop" and outcome.stop_sequence is not None:
        return "stop_sequence", outcome.stop_sequence
    return STOP_REASONS[outcome.finish_reason], None


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    # Nothing is cached upstream: the cache counters are honest zeros, present because
    # clients (Claude Code among them) add them into their context size.
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


def event(name: str, data: Any) -> bytes:
    """One SSE event: the ``event:`` line Anthropic's clients dispatch on, then the JSON."""
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


class Signer:
    """The ``signature`` of one thinking block, fed as the thoughts arrive."""

    __slots__ = ("_mac",)

    def __init__(self) -> None:
        self._mac = hmac.new(_SIGNATURE_KEY, digestmod=hashlib.sha256)

    def update(self, text: str) -> None:
        self._mac.update(text.encode("utf-8", "surrogatepass"))

    def signature(self) -> str:
        return base64.b64encode(self._mac.digest()).decode()


def signature_of(thinking: str) -> str:
    signer = Signer()
    signer.update(thinking)
    return signer.signature()


# --- streamed ----------------------------------------------------------------------


def message_start(message_id: str, model: str, input_tokens: int) -> bytes:
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage(input_tokens, 0),
    }
    return event("message_start", {"type": "message_start", "message": message})


def _delta_head(index: int, kind: str, field: str) -> bytes:
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%s","%s":'
        % (index, kind.encode(), field.encode())
    )


_DELTA_TAIL = b"}}\n\n"


class MessageStream:
    """A streamed message's way out: one event per answer event, one write per upstream read."""

    __slots__ = (
        "writer", "message_id", "model", "show_thinking", "writes", "_chunks", "_next_index", "_open",
        "_head", "_signer", "_calls",
    )

    def __init__(self, writer: Writer, message_id: str, model: str, *, show_thinking: bool) -> None:
        self.writer = writer
        self.message_id = message_id
        self.model = model
        self.show_thinking = show_thinking
        self.writes = 0  # flushes that wrote something: the keep-alive pings only when this stands still
        self._chunks: list[bytes] = []
        self._next_index = 0
        self._open: str | None = None  # "thinking", "text" or "tool_use": the block being written
        self._head = b""  # the delta template of the open block
        self._signer: Signer | None = None
        self._calls: dict[int, int] = {}  # relay call index -> block index

    # --- the AnswerSink interface ---------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.writer.paused

    async def drain(self) -> None:
        await self.writer.drain()

    def reasoning(self, text: str) -> None:
        if not self.show_thinking:
            return
        if self._open != "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
            self._start_block("thinking", block, "thinking_delta", "thinking")
            self._signer = Signer()
        assert self._signer is not None
        self._signer.update(text)
        self._add(self._head + _quote(text) + _DELTA_TAIL)

    def text(self, text: str) -> None:
        if not text:
            return
        if self._open != "text":
            self._start_block("text", {"type": "text", "text": ""}, "text_delta", "text")
        self._add(self._head + _quote(text) + _DELTA_TAIL)

    def tool_call_start(self, index: int, call_id: str, name: str) -> None:
        block = {"type": "tool_use", "id": tool_use_id(call_id), "name": name, "input": {}}
        self._start_block("tool_use", block, "input_json_delta", "partial_json")
        self._calls[index] = self._next_index - 1

    def tool_call_arguments(self, index: int, fragment: str) -> None:
        block = self._calls[index]
        self._add(_delta_head(block, "input_json_delta", "partial_json") + _quote(fragment) + _DELTA_TAIL)

    def tool_call_end(self, index: int) -> None:
        if self._open == "tool_use" and self._calls.get(index) == self._next_index - 1:
            self._close_block()

    def flush(self) -> None:
        chunks = self._chunks
        if chunks:
            self.writer.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            chunks.clear()
            self.writes += 1

    # --- beginning and end ------------------------------------------------------------

    def start(self, input_tokens: int) -> None:
        """``message_start`` and a ``ping``, as Anthropic opens every stream."""
        self.writer.write(message_start(self.message_id, self.model, input_tokens) + PING)
        self.writes += 1

    def ping(self) -> None:
        """A keep-alive while nothing else is sent (a long silence upstream, a held-back tool call)."""
        self.writer.write(PING)

    def finish(self, outcome: Outcome) -> None:
        """Close the open block, then ``message_delta`` (stop reason, usage) and ``message_stop``."""
        self._close_block()
        reason, sequence = stop_reason(outcome)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {"input_tokens": outcome.prompt_tokens, "output_tokens": outcome.completion_tokens},
        }
        self._add(event("message_delta", delta) + MESSAGE_STOP)
        self.flush()

    def fail(self, status: int, message: str) -> None:
        """The answer broke after the stream began: what was sent stays, then an ``error`` event."""
        self._add(stream_error_event(status, message))
        self.flush()

    # --- blocks -----------------------------------------------------------------------

    def _add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        if len(self._chunks) >= COALESCE_MAX:
            self.flush()

    def _start_block(self, kind: str, block: dict[str, Any], delta_kind: str, delta_field: str) -> None:
        self._close_block()
        index = self._next_index
        self._next_index += 1
        self._add(event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        self._open = kind
        self._head = _delta_head(index, delta_kind, delta_field)

    def _close_block(self) -> None:
        if self._open is None:
            return
        index = self._next_index - 1
        if self._open == "thinking" and self._signer is not None:
            signature = {"type": "signature_delta", "signature": self._signer.signature()}
            delta = {"type": "content_block_delta", "index": index, "delta": signature}
            self._add(event("content_block_delta", delta))
            self._signer = None
        self._add(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        self._open = None


# --- collected -----------------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    kind: str  # "thinking", "text", "tool_use"
    parts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        joined = "".join(self.parts)
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": joined, "signature": signature_of(joined)}
        if self.kind == "text":
            return {"type": "text", "text": joined}
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": _tool_input(joined)}


def _tool_input(arguments: str) -> Any:
    # The relay validated the arguments against the tool's schema; an empty call is {}.
    if not arguments.strip():
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        return {}


class MessageCollector:
    """A non-stream message's way out: the blocks, kept for one body at the end."""

    __slots__ = ("show_thinking", "blocks", "_calls")
    paused = False  # nobody reads until the whole answer is in

    def __init__(self, *, show_thinking: bool) -> None:
        self.show_thinking = show_thinking
        self.blocks: list[_Block] = []
        self._calls: dict[int, _Block] = {}

    async def drain(self) -> None:
        pass

    def reasoning(self, text: str) -> None:
        if self.show_thinking:
            self._block("thinking").parts.append(text)

    def text(self, text: str) -> None:
        if text:
            self._block("text").parts.append(text)

    def tool_call_start(self, index: int, call_id: str, name: str) -> None:
        block = _Block("tool_use", id=tool_use_id(call_id), name=name)
        self.blocks.append(block)
        self._calls[index] = block

    def tool_call_arguments(self, index: int, fragment: str) -> None:
        self._calls[index].parts.append(fragment)

    def tool_call_end(self, index: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def _block(self, kind: str) -> _Block:
        if not self.blocks or self.blocks[-1].kind != kind:
            self.blocks.append(_Block(kind))
        return self.blocks[-1]

    def body(self, message_id: str, model: str, outcome: Outcome) -> bytes:
        blocks = [b.to_dict() for b in self.blocks]
        if outcome.finish_reason == "content_filter":
            # The upstream withdrew the answer and put its canned refusal in its place.
            blocks = [b for b in blocks if b["type"] == "thinking"]
            if outcome.replacement:
                blocks.append({"type": "text", "text": outcome.replacement})
        reason, sequence = stop_reason(outcome)
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage(outcome.prompt_tokens, outcome.completion_tokens),
        }
        return dumps(message)
