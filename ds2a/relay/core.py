"""The relay core: one loop from upstream events to a dialect's answer sink.

Every API dialect parses its request into a ``Generation`` and hands it to
``Relay.open``, which renders the prompt, counts its tokens and starts the upstream
answer through the pool (failing over between accounts until the first text).
Errors up to that point are raised (``DeepSeekError``, ``PoolError``) for the
dialect to answer in its own shape. ``RelayAnswer.run(sink)`` then drives the
dialect's sink: one call per answer event, one ``flush`` per upstream read, and
returns the ``Outcome``.

The text of the answer passes a chain of streaming transforms, each holding back
only what it must: citation markers rewritten (search models), stop sequences cut,
tool-call markup recognised (requests with tools), JSON fences stripped (JSON output
formats). Plain chat has none active beyond a type check: that loop is the
gateway's hot path (per upstream event one type check and one sink call; per
upstream read one flush, i.e. one write).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ds2a.config import Config
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.deepseek.events import AnswerDelta, Citation, Finish, ReasoningDelta, StreamError, Usage
from ds2a.pool import AccountPool
from ds2a.pool.dispatch import UpstreamStream, open_stream
from ds2a.pool.errors import PoolError
from ds2a.relay.answer import Annotation, AnswerSink, Outcome
from ds2a.relay.conversation import Conversation
from ds2a.relay.prompt import render_prompt
from ds2a.relay.spec import ModelSpec
from ds2a.relay.transforms import TextChain
from ds2a.relay.usage import count_prompt_tokens

log = logging.getLogger(__name__)

# The upstream's end reasons in the relay's words; "incomplete" is only seen once the
# automatic continuation rounds are used up, i.e. the answer was cut for length.
FINISH_REASONS = {"stop": "stop", "content_filter": "content_filter", "incomplete": "length"}
LARGE_PROMPT = 20_000  # characters; the token count runs off the loop beyond this


@dataclass(slots=True)
class Generation:
    """What a dialect asks of the relay: a conversation, a model, the answer's limits."""

    conversation: Conversation
    spec: ModelSpec
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    direct_token: str | None = None  # a caller's own DeepSeek token instead of the pool
    stream: bool = True  # False: nothing is shown before the end, so a JSON answer can be checked and retried


class Relay:
    def __init__(self, config: Config, pool: AccountPool) -> None:
        self.config = config
        self.pool = pool

    def render(self, conversation: Conversation, correction: str | None = None) -> str:
        return render_prompt(conversation, self.config.api.prompt_template, correction=correction)

    def count_tokens(self, conversation: Conversation) -> int:
        return count_prompt_tokens(self.render(conversation), self.config.api.prompt_tokens)

    async def open(self, generation: Generation) -> RelayAnswer:
        """The answer, started upstream; raises DeepSeekError or PoolError before any text."""
        prompt = self.render(generation.conversation)
        limit = self.config.api.max_prompt_chars
        if len(prompt) > limit:
            raise DeepSeekError(
                ErrorKind.INPUT_TOO_LONG,
                f"the conversation is {len(prompt)} characters as a prompt, more than the web chat "
                f"accepts ({limit}); shorten the history or the tool definitions",
            )
        prompt_tokens = await self._count_prompt_tokens(prompt)
        upstream = await self._start(generation, prompt)
        return RelayAnswer(self, generation, upstream, prompt_tokens)

    async def _start(self, generation: Generation, prompt: str) -> UpstreamStream:
        spec = generation.spec
        return await open_stream(
            self.pool,
            prompt=prompt,
            thinking=spec.thinking,
            search=spec.search,
            direct_token=generation.direct_token,
            model_type=spec.model_type,
        )

    async def _count_prompt_tokens(self, prompt: str) -> int:
        method = self.config.api.prompt_tokens
        if len(prompt) > LARGE_PROMPT:  # either method costs milliseconds there: off the loop
            return await asyncio.to_thread(count_prompt_tokens, prompt, method)
        return count_prompt_tokens(prompt, method)


class _State:
    """What one answer has received so far; set by the loop, read into the Outcome."""

    __slots__ = ("tokens", "reasoning_tokens", "upstream_tokens", "finish_reason", "replacement", "error")

    def __init__(self) -> None:
        self.tokens = 0  # text events relayed: one upstream frame carries about one token
        self.reasoning_tokens = 0
        self.upstream_tokens: int | None = None  # accumulated_token_usage, when the upstream says
        self.finish_reason: str | None = None
        self.replacement: str | None = None  # the upstream's canned refusal after a content filter
        self.error: DeepSeekError | None = None

    def completion_tokens(self) -> int:
        if self.upstream_tokens is not None:
            return max(self.upstream_tokens, self.reasoning_tokens)
        return self.tokens


class RelayAnswer:
    """One answer being relayed: ``run`` it into a sink once, ``close`` it always."""

    def __init__(self, relay: Relay, generation: Generation, upstream: UpstreamStream, prompt_tokens: int) -> None:
        self.relay = relay
        self.generation = generation
        self.upstream = upstream
        self.prompt_tokens = prompt_tokens

    @property
    def account_label(self) -> str:
        return self.upstream.account.label

    def close(self) -> None:
        """Stops the upstream when the answer did not end (disconnect, limit, error)."""
        self.upstream.close()

    async def run(self, sink: AnswerSink) -> Outcome:
        generation = self.generation
        conversation = generation.conversation
        chain = TextChain(
            sink,
            search=generation.spec.search,
            citation_mode=self.relay.config.api.citations,
            stops=generation.stop,
            conversation=conversation,
            stream=generation.stream,
        )
        state = _State()
        await self._relay(state, chain, sink)
        if state.error is None and chain.needs_retry(state.finish_reason):
            await self._retry(state, chain, sink)
        return self._outcome(state, chain)

    async def _retry(self, state: _State, chain: TextChain, sink: AnswerSink) -> None:
        """One more upstream answer, told what was wrong with the first (a forced tool
        call that did not come, JSON that did not match its schema)."""
        correction = chain.correction()
        log.info("answer on %s needs a retry: %s", self.account_label, correction)
        self.upstream.close()
        prompt = self.relay.render(self.generation.conversation, correction)
        try:
            self.upstream = await self.relay._start(self.generation, prompt)
        except DeepSeekError as exc:
            state.error = exc
            return
        except PoolError as exc:
            state.error = DeepSeekError(ErrorKind.BUSY, exc.message)
            return
        chain.restart()
        state.finish_reason = None
        await self._relay(state, chain, sink)

    async def _relay(self, state: _State, chain: TextChain, sink: AnswerSink) -> None:
        try:
            await self._loop(state, chain, sink)
        except DeepSeekError as exc:  # the connection dropped or went silent mid-answer
            state.error = exc

    async def _loop(self, state: _State, chain: TextChain, sink: AnswerSink) -> None:
        """The hot path: per upstream event one type check and one sink call; per
        upstream read one flush (one write)."""
        read_events = self.upstream.read_events
        to_text = chain.text
        to_reasoning = chain.reasoning
        limit = self.generation.max_tokens
        max_chars = self.relay.config.api.max_answer_chars
        while batch := await read_events():
            for event in batch:
                kind = type(event)
                if kind is AnswerDelta:
                    state.tokens += 1
                    to_text(event.text)
                elif kind is ReasoningDelta:
                    state.tokens += 1
                    state.reasoning_tokens += 1
                    to_reasoning(event.text)
                else:
                    self._on_event(event, state, chain)
                if chain.finished and state.finish_reason is None:
                    state.finish_reason = chain.finish_reason
                if state.finish_reason is not None or state.error is not None:
                    break
                if limit is not None and state.tokens >= limit:
                    state.finish_reason = "length"
                    break
            sink.flush()
            if state.finish_reason is not None or state.error is not None:
                return
            if chain.chars > max_chars:
                state.error = DeepSeekError(ErrorKind.PROTOCOL, f"the answer exceeded {max_chars} characters and was cut")
                return
            if sink.paused:
                await sink.drain()

    @staticmethod
    def _on_event(event: Any, state: _State, chain: TextChain) -> None:
        kind = type(event)
        if kind is Citation:
            chain.cite(event)
        elif kind is Usage:
            state.upstream_tokens = event.completion_tokens
        elif kind is Finish:
            state.finish_reason = FINISH_REASONS[event.reason]
            state.replacement = event.replacement
        elif kind is StreamError:
            state.error = DeepSeekError(event.kind, event.message)

    def _outcome(self, state: _State, chain: TextChain) -> Outcome:
        outcome = Outcome(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=state.completion_tokens(),
            reasoning_tokens=state.reasoning_tokens,
            replacement=state.replacement,
            error=state.error,
        )
        if state.error is not None:
            return outcome
        error = chain.finish()
        if error is not None:
            outcome.error = error
            return outcome
        outcome.finish_reason = chain.finish_reason or state.finish_reason or "stop"  # type: ignore[assignment]
        outcome.stop_sequence = chain.stop_sequence
        outcome.tool_calls = chain.tool_calls
        outcome.annotations = [_annotation(a["url_citation"]) for a in chain.annotations()]
        return outcome


def _annotation(cite: dict[str, Any]) -> Annotation:
    return Annotation(cite["url"], cite["title"], cite["start_index"], cite["end_index"])
