"""``POST /v1/chat/completions``: the OpenAI chat dialect on the relay core.

The request is authenticated and parsed into a ``Generation`` (``validate.py``);
the relay starts the upstream answer, failing over between accounts until the
first text. Errors up to that point are plain JSON errors with the right status.
Then the relay drives one of this dialect's sinks: ``StreamSink`` writes one SSE
chunk per answer event and one write per upstream read; ``CollectSink`` keeps the
answer for one ``chat.completion`` body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ds2a.api.dialect import open_answer, run_answer, run_stream
from ds2a.api.auth import Authenticator
from ds2a.api.encode import ChunkEncoder, completion_body, new_completion_id
from ds2a.api.errors import pool_error, upstream_error
from ds2a.api.models import ModelTable
from ds2a.api.validate import ChatRequest, parse_chat_request
from ds2a.config import Config
from ds2a.relay.answer import Annotation, Outcome
from ds2a.relay.core import Generation, Relay, RelayAnswer
from ds2a.server import Request, Responder

log = logging.getLogger(__name__)

COALESCE_MAX = 32  # chunks joined into one write at most (~6 KB), so no write grows unbounded


class StreamSink:
    """A streamed answer's way out: one SSE chunk per event, one write per upstream read.

    Events that arrived in the same network read leave together in one write: they
    were available at the same instant, so joining them delays nothing and saves a
    syscall each (a paced token is alone in its read: one event, one write).
    """

    __slots__ = ("responder", "enc", "chunks", "legacy", "_content", "_reasoning")

    def __init__(self, responder: Responder, enc: ChunkEncoder, *, legacy_functions: bool = False) -> None:
        self.responder = responder
        self.enc = enc
        self.chunks: list[bytes] = []
        self.legacy = legacy_functions
        self._content = enc.content
        self._reasoning = enc.reasoning

    def text(self, text: str) -> None:
        self.chunks.append(self._content(text))
        if len(self.chunks) >= COALESCE_MAX:
            self.flush()

    def reasoning(self, text: str) -> None:
        self.chunks.append(self._reasoning(text))
        if len(self.chunks) >= COALESCE_MAX:
            self.flush()

    def tool_call_start(self, index: int, call_id: str, name: str) -> None:
        if self.legacy:
            self.chunks.append(self.enc.function_call_start(name))
        else:
            self.chunks.append(self.enc.tool_call_start(index, call_id, name))

    def tool_call_arguments(self, index: int, fragment: str) -> None:
        if self.legacy:
            self.chunks.append(self.enc.function_call_arguments(fragment))
        else:
            self.chunks.append(self.enc.tool_call_arguments(index, fragment))

    def tool_call_end(self, index: int) -> None:
        pass  # OpenAI marks no end of a call: the next call or the finish chunk ends it

    def flush(self) -> None:
        chunks = self.chunks
        if chunks:
            self.responder.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            chunks.clear()

    @property
    def paused(self) -> bool:
        """The client reads slowly: stop reading upstream until it catches up."""
        return self.responder.paused

    async def drain(self) -> None:
        await self.responder.drain()


class CollectSink:
    """A non-stream answer's way out: the text and calls, kept for one body at the end."""

    __slots__ = ("content", "reasoning_parts", "calls")
    paused = False  # nobody reads until the whole answer is in

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning_parts: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def text(self, text: str) -> None:
        self.content.append(text)

    def reasoning(self, text: str) -> None:
        self.reasoning_parts.append(text)

    def tool_call_start(self, index: int, call_id: str, name: str) -> None:
        self.calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}})

    def tool_call_arguments(self, index: int, fragment: str) -> None:
        self.calls[index]["function"]["arguments"] += fragment

    def tool_call_end(self, index: int) -> None:
        pass

    def flush(self) -> None:
        pass

    async def drain(self) -> None:
        pass


def url_citations(annotations: list[Annotation]) -> list[dict[str, Any]] | None:
    """Citations in OpenAI's ``annotations`` shape (None when there are none)."""
    if not annotations:
        return None
    return [
        {
            "type": "url_citation",
            "url_citation": {"url": a.url, "title": a.title, "start_index": a.start, "end_index": a.end},
        }
        for a in annotations
    ]


class ChatHandler:
    def __init__(self, config: Config, relay: Relay, models: ModelTable, auth: Authenticator) -> None:
        self.config = config
        self.relay = relay
        self.models = models
        self.auth = auth

    async def __call__(self, request: Request, responder: Responder) -> None:
        caller = self.auth(request.headers)
        chat = parse_chat_request(request.body, self.models)
        generation = Generation(
            chat.conversation, chat.spec, chat.stop, chat.max_tokens, caller.direct_token, stream=chat.stream
        )
        answer = await open_answer(
            self.relay, generation, responder, chat.model, upstream_error=upstream_error, pool_error=pool_error
        )
        try:
            if chat.stream:
                await self._stream(responder, answer, chat)
            else:
                await self._collect(responder, answer, chat)
        finally:
            answer.close()

    # --- streaming ------------------------------------------------------------

    async def _stream(self, responder: Responder, answer: RelayAnswer, chat: ChatRequest) -> None:
        enc = ChunkEncoder(new_completion_id(), int(time.time()), chat.model)
        responder.start_stream(200)
        responder.write(enc.role())
        sink = StreamSink(responder, enc, legacy_functions=chat.legacy_functions)
        outcome = await run_stream(answer, sink, responder, self._fail_stream(responder))
        if outcome is None:
            return
        if outcome.error is not None:
            # A visible error, never a fake "stop": the SDKs raise on an error event.
            err = upstream_error(outcome.error)
            responder.write(ChunkEncoder.error(err.message, err.type, err.code))
            responder.end_stream()
            return
        responder.write(enc.finish(self._finish_reason(outcome, chat), url_citations(outcome.annotations)))
        if chat.include_usage:
            responder.write(enc.usage(outcome.prompt_tokens, outcome.completion_tokens, outcome.reasoning_tokens))
        responder.write(ChunkEncoder.DONE)
        responder.end_stream()

    @staticmethod
    def _fail_stream(responder: Responder) -> Callable[[str, str], None]:
        return lambda code, message: responder.write(ChunkEncoder.error(message, "server_error", code))

    @staticmethod
    def _finish_reason(outcome: Outcome, chat: ChatRequest) -> str:
        if outcome.finish_reason == "tool_calls" and chat.legacy_functions:
            return "function_call"
        return outcome.finish_reason

    # --- one JSON body --------------------------------------------------------

    async def _collect(self, responder: Responder, answer: RelayAnswer, chat: ChatRequest) -> None:
        sink = CollectSink()
        outcome = await run_answer(answer, sink, responder)
        if outcome.error is not None:
            raise upstream_error(outcome.error)
        content = "".join(sink.content)
        filtered = outcome.finish_reason == "content_filter"
        if filtered:
            # The upstream withdrew the answer and put its canned refusal in its place.
            content = outcome.replacement or ""
        calls = sink.calls
        body = completion_body(
            new_completion_id(),
            int(time.time()),
            chat.model,
            content=content,
            reasoning="".join(sink.reasoning_parts) if chat.spec.thinking else None,
            finish_reason=self._finish_reason(outcome, chat),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            reasoning_tokens=outcome.reasoning_tokens,
            annotations=None if filtered else url_citations(outcome.annotations),
            tool_calls=calls if calls and not chat.legacy_functions else None,
            function_call=calls[0]["function"] if calls and chat.legacy_functions else None,
        )
        responder.send(200, body)
