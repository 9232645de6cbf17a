"""``POST /v1/chat/completions``: from an OpenAI request to a relayed DeepSeek answer.

The request is authenticated and validated, flattened into one prompt, and handed
to the pool, which starts the upstream answer (failing over between accounts
until the first text arrives). Errors up to that point are plain JSON errors with
the right status. Then either every event is relayed as one SSE chunk (stream) or
the answer is collected into one ``chat.completion`` body.

The relay loop in ``_relay`` is the gateway's hot path: per upstream event, one
type check and one chunk built from a pre-built template; per upstream read, one
write (``StreamSink``). Non-stream answers run through the same loop into a
``CollectSink``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ds2a.api.auth import Authenticator, Caller
from ds2a.api.citations import CitationRewriter
from ds2a.api.encode import ChunkEncoder, completion_body, new_completion_id
from ds2a.api.errors import pool_error, upstream_error
from ds2a.api.models import ModelTable
from ds2a.api.stops import StopMatcher
from ds2a.api.usage import count_prompt_tokens
from ds2a.api.validate import ChatRequest, parse_chat_request
from ds2a.config import Config
from ds2a.deepseek.errors import DeepSeekError
from ds2a.deepseek.events import AnswerDelta, Citation, Finish, ReasoningDelta, StreamError, Usage
from ds2a.deepseek.prompt import build_prompt
from ds2a.pool import AccountPool
from ds2a.pool.dispatch import UpstreamStream, open_stream
from ds2a.pool.errors import PoolError
from ds2a.server import Request, Responder

log = logging.getLogger(__name__)

# The upstream's end reasons in OpenAI's words; "incomplete" is only seen once the
# automatic continuation rounds are used up, i.e. the answer was cut for length.
FINISH_REASONS = {"stop": "stop", "content_filter": "content_filter", "incomplete": "length"}
LARGE_PROMPT = 20_000  # characters; the exact tokenizer runs off the loop beyond this
COALESCE_MAX = 32  # chunks joined into one write at most (~6 KB), so no write grows unbounded


class Answer:
    """What one request has received so far, and how it must be transformed."""

    __slots__ = (
        "citations", "stops", "limit", "tokens", "reasoning_tokens", "upstream_tokens",
        "finish_reason", "replacement", "error", "delivered",
    )

    def __init__(self, request: ChatRequest, citation_mode: str) -> None:
        self.citations = CitationRewriter(citation_mode) if request.spec.search else None
        self.stops = StopMatcher(request.stop)
        self.limit = request.max_tokens
        self.tokens = 0  # text events relayed: one upstream frame carries about one token
        self.reasoning_tokens = 0
        self.upstream_tokens: int | None = None  # accumulated_token_usage, when the upstream says
        self.finish_reason: str | None = None
        self.replacement: str | None = None  # the upstream's canned refusal after a content filter
        self.error: DeepSeekError | None = None
        self.delivered = 0  # answer characters let through the stop matcher (kept only with stops)

    def answer_text(self, text: str) -> str:
        """Citation markers rewritten, then stop sequences applied; what the client may see."""
        if self.citations is not None:
            text = self.citations.feed(text)
        if self.stops.active and text:
            text, hit = self.stops.feed(text)
            self.delivered += len(text)
            if hit:
                self.finish_reason = "stop"
        return text

    def flush_text(self) -> str:
        if self.stops.hit:
            # Nothing after a stop sequence, not even a citation the rewriter still held back.
            return ""
        tail = self.citations.flush() if self.citations is not None else ""
        if self.stops.active:
            if tail:
                tail, hit = self.stops.feed(tail)
                if hit:
                    return tail
            tail += self.stops.flush()
        return tail

    def cite(self, event: Citation) -> None:
        if self.citations is not None:
            self.citations.cite(event.marker, event.index, event.url, event.title)

    def annotations(self, content_length: int) -> list[dict[str, Any]] | None:
        if self.citations is None:
            return None
        kept = [a for a in self.citations.annotations if a["url_citation"]["end_index"] <= content_length]
        return kept or None

    def completion_tokens(self) -> int:
        if self.upstream_tokens is not None:
            return max(self.upstream_tokens, self.reasoning_tokens)
        return self.tokens

    def at_limit(self) -> bool:
        return self.limit is not None and self.tokens >= self.limit


class StreamSink:
    """A streamed answer's way out: one SSE chunk per event, one write per upstream read.

    Events that arrived in the same network read leave together in one write: they
    were available at the same instant, so joining them delays nothing and saves a
    syscall each (a paced token is alone in its read: one event, one write).
    """

    __slots__ = ("responder", "chunks", "_content", "_reasoning")

    def __init__(self, responder: Responder, enc: ChunkEncoder) -> None:
        self.responder = responder
        self.chunks: list[bytes] = []
        self._content = enc.content
        self._reasoning = enc.reasoning

    def answer(self, text: str) -> None:
        self.chunks.append(self._content(text))
        if len(self.chunks) >= COALESCE_MAX:
            self.flush()

    def reasoning(self, text: str) -> None:
        self.chunks.append(self._reasoning(text))
        if len(self.chunks) >= COALESCE_MAX:
            self.flush()

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
    """A non-stream answer's way out: the text, kept for one body at the end."""

    __slots__ = ("content", "reasoning_parts")
    paused = False  # nobody reads until the whole answer is in

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning_parts: list[str] = []

    def answer(self, text: str) -> None:
        self.content.append(text)

    def reasoning(self, text: str) -> None:
        self.reasoning_parts.append(text)

    def flush(self) -> None:
        pass

    async def drain(self) -> None:
        pass


class ChatHandler:
    def __init__(self, config: Config, pool: AccountPool, models: ModelTable, auth: Authenticator) -> None:
        self.config = config
        self.pool = pool
        self.models = models
        self.auth = auth

    async def __call__(self, request: Request, responder: Responder) -> None:
        caller = self.auth(request.headers)
        chat = parse_chat_request(request.body, self.models)
        prompt = build_prompt(chat.messages, self.config.api.prompt_template)
        prompt_tokens = await self._count_prompt_tokens(prompt)
        upstream = await self._open(caller, chat, prompt)
        try:
            answer = Answer(chat, self.config.api.citations)
            if chat.stream:
                await self._stream(responder, upstream, chat, answer, prompt_tokens)
            else:
                await self._collect(responder, upstream, chat, answer, prompt_tokens)
        finally:
            # Stops the upstream when the answer did not end (disconnect, limit, error).
            upstream.close()

    async def _open(self, caller: Caller, chat: ChatRequest, prompt: str) -> UpstreamStream:
        try:
            return await open_stream(
                self.pool,
                prompt=prompt,
                thinking=chat.spec.thinking,
                search=chat.spec.search,
                direct_token=caller.direct_token,
            )
        except DeepSeekError as exc:
            raise upstream_error(exc, direct=caller.direct_token is not None) from None
        except PoolError as exc:
            raise pool_error(exc) from None

    async def _count_prompt_tokens(self, prompt: str) -> int:
        method = self.config.api.prompt_tokens
        if method == "tokenizer" and len(prompt) > LARGE_PROMPT:
            return await asyncio.to_thread(count_prompt_tokens, prompt, method)
        return count_prompt_tokens(prompt, method)

    # --- streaming ------------------------------------------------------------

    async def _stream(
        self, responder: Responder, upstream: UpstreamStream, chat: ChatRequest, answer: Answer, prompt_tokens: int
    ) -> None:
        enc = ChunkEncoder(new_completion_id(), int(time.time()), chat.model)
        responder.start_stream(200)
        responder.write(enc.role())
        try:
            await self._relay(upstream, answer, StreamSink(responder, enc))
        except DeepSeekError as exc:  # the connection dropped or went silent mid-answer
            answer.error = exc
        except asyncio.CancelledError:
            if responder.shutting_down and not responder.disconnected.is_set():
                responder.write(ChunkEncoder.error("the gateway is shutting down", "server_error", "shutting_down"))
                responder.end_stream()
            raise
        except Exception:
            # A bug of ours mid-answer: still a visible error for the client, not a silent cut.
            log.exception("relaying an answer failed")
            responder.write(ChunkEncoder.error("internal error while relaying the answer", "server_error", "internal_error"))
            responder.end_stream()
            return
        if answer.error is not None:
            # A visible error, never a fake "stop": the SDKs raise on an error event.
            err = upstream_error(answer.error)
            responder.write(ChunkEncoder.error(err.message, err.type, err.code))
            responder.end_stream()
            log.info("answer on %s failed mid-stream: %s", upstream.account.label, answer.error.message)
            return
        tail = answer.flush_text()
        if tail:
            responder.write(enc.content(tail))
        # A stop sequence may have cut citations already rendered: only those the client got.
        sent = answer.delivered + len(tail) if answer.stops.active else 1 << 62
        responder.write(enc.finish(answer.finish_reason or "stop", answer.annotations(sent)))
        if chat.include_usage:
            responder.write(enc.usage(prompt_tokens, answer.completion_tokens(), answer.reasoning_tokens))
        responder.write(ChunkEncoder.DONE)
        responder.end_stream()

    async def _relay(self, upstream: UpstreamStream, answer: Answer, sink: StreamSink | CollectSink) -> None:
        """The hot path: per upstream event one type check and one sink call (one chunk
        built from a template); per upstream read one flush (one write)."""
        read_events = upstream.read_events
        to_answer = sink.answer
        to_reasoning = sink.reasoning
        while batch := await read_events():
            for event in batch:
                kind = type(event)
                if kind is AnswerDelta:
                    answer.tokens += 1
                    text = answer.answer_text(event.text)
                    if text:
                        to_answer(text)
                elif kind is ReasoningDelta:
                    answer.tokens += 1
                    answer.reasoning_tokens += 1
                    to_reasoning(event.text)
                else:
                    self._on_event(event, answer)
                if answer.finish_reason is not None or answer.error is not None:
                    break
                if answer.limit is not None and answer.at_limit():
                    answer.finish_reason = "length"
                    break
            sink.flush()
            if answer.finish_reason is not None or answer.error is not None:
                return
            if sink.paused:
                await sink.drain()

    @staticmethod
    def _on_event(event: Any, answer: Answer) -> None:
        kind = type(event)
        if kind is Citation:
            answer.cite(event)
        elif kind is Usage:
            answer.upstream_tokens = event.completion_tokens
        elif kind is Finish:
            answer.finish_reason = FINISH_REASONS[event.reason]
            answer.replacement = event.replacement
        elif kind is StreamError:
            answer.error = DeepSeekError(event.kind, event.message)

    # --- one JSON body --------------------------------------------------------

    async def _collect(
        self, responder: Responder, upstream: UpstreamStream, chat: ChatRequest, answer: Answer, prompt_tokens: int
    ) -> None:
        sink = CollectSink()
        try:
            await self._relay(upstream, answer, sink)
        except DeepSeekError as exc:
            answer.error = exc
        if answer.error is not None:
            raise upstream_error(answer.error)
        sink.answer(answer.flush_text())
        content = "".join(sink.content)
        if answer.finish_reason == "content_filter":
            # The upstream withdrew the answer and put its canned refusal in its place.
            content = answer.replacement or ""
        body = completion_body(
            new_completion_id(),
            int(time.time()),
            chat.model,
            content=content,
            reasoning="".join(sink.reasoning_parts) if chat.spec.thinking else None,
            finish_reason=answer.finish_reason or "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=answer.completion_tokens(),
            reasoning_tokens=answer.reasoning_tokens,
            annotations=answer.annotations(len(content)) if answer.finish_reason != "content_filter" else None,
        )
        responder.send(200, body)
