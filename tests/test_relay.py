"""The relay core on its own: a scripted upstream, a recording sink, the Outcome."""

from __future__ import annotations

from typing import Any

from ds2a.api.models import ModelSpec
from ds2a.config import Config
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.deepseek.events import AnswerDelta, Citation, Finish, ReasoningDelta, StreamError, Usage
from ds2a.relay.conversation import Conversation, Message, Text
from ds2a.relay.core import Generation, Relay, RelayAnswer

CHAT = ModelSpec("deepseek-chat", False, False, "default")
SEARCH = ModelSpec("deepseek-chat-search", False, True, "default")


class ScriptedUpstream:
    """Hands out the given batches, one per read; an exception in the script is raised."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = list(batches)
        self.closed = 0

    async def read_events(self) -> list[Any]:
        if not self.batches:
            return []
        batch = self.batches.pop(0)
        if isinstance(batch, Exception):
            raise batch
        return batch

    def close(self) -> None:
        self.closed += 1


class RecordingSink:
    paused = False

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.flushes = 0

    def text(self, text: str) -> None:
        self.events.append(("text", text))

    def reasoning(self, text: str) -> None:
        self.events.append(("reasoning", text))

    def tool_call_start(self, index: int, call_id: str, name: str) -> None:
        self.events.append(("start", index, name))

    def tool_call_arguments(self, index: int, fragment: str) -> None:
        self.events.append(("args", index, fragment))

    def tool_call_end(self, index: int) -> None:
        self.events.append(("end", index))

    def flush(self) -> None:
        self.flushes += 1

    async def drain(self) -> None:
        pass

    def texts(self) -> str:
        return "".join(e[1] for e in self.events if e[0] == "text")


async def relay(batches: list[Any], *, spec: ModelSpec = CHAT, stop: list[str] | None = None,
                max_tokens: int | None = None, config: Config | None = None) -> tuple[Any, RecordingSink, ScriptedUpstream]:
    generation = Generation(Conversation([Message("user", [Text("hi")])]), spec, stop or [], max_tokens)
    upstream = ScriptedUpstream(batches)
    answer = RelayAnswer(Relay(config or Config(), pool=None), generation, upstream, 7)  # type: ignore[arg-type]
    sink = RecordingSink()
    outcome = await answer.run(sink)
    return outcome, sink, upstream


async def test_plain_text_and_reasoning_pass_through_one_flush_per_read() -> None:
    outcome, sink, _ = await relay(
        [[ReasoningDelta("think")], [AnswerDelta("Hel"), AnswerDelta("lo")], [Usage(5), Finish("stop")]]
    )
    assert sink.events == [("reasoning", "think"), ("text", "Hel"), ("text", "lo")]
    assert sink.flushes >= 3
    assert (outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens) == ("stop", 7, 5)
    assert outcome.reasoning_tokens == 1 and outcome.error is None


async def test_stop_sequence_cuts_and_names_itself() -> None:
    outcome, sink, _ = await relay([[AnswerDelta("one EN"), AnswerDelta("D two")], [Finish("stop")]], stop=["END"])
    assert sink.texts() == "one "
    assert (outcome.finish_reason, outcome.stop_sequence) == ("stop", "END")


async def test_held_stop_prefix_is_released_at_the_end() -> None:
    outcome, sink, _ = await relay([[AnswerDelta("ends with EN")], [Finish("stop")]], stop=["END"])
    assert sink.texts() == "ends with EN" and outcome.stop_sequence is None


async def test_max_tokens_ends_with_length() -> None:
    outcome, sink, _ = await relay([[AnswerDelta("a"), AnswerDelta("b"), AnswerDelta("c")], [Finish("stop")]],
                                   max_tokens=2)
    assert sink.texts() == "ab" and outcome.finish_reason == "length"


async def test_incomplete_upstream_end_is_length() -> None:
    outcome, _, _ = await relay([[AnswerDelta("a")], [Finish("incomplete")]])
    assert outcome.finish_reason == "length"


async def test_stream_error_after_text_is_an_error_not_a_stop() -> None:
    outcome, sink, _ = await relay([[AnswerDelta("partial")], [StreamError(ErrorKind.UPSTREAM, "boom")]])
    assert sink.texts() == "partial"
    assert outcome.error is not None and outcome.error.message == "boom"


async def test_a_dropped_connection_mid_answer_is_an_error() -> None:
    outcome, _, _ = await relay([[AnswerDelta("partial")], DeepSeekError(ErrorKind.TIMEOUT, "silent")])
    assert outcome.error is not None and outcome.error.kind is ErrorKind.TIMEOUT


async def test_an_endless_answer_is_cut_with_an_error() -> None:
    config = Config()
    config.api.max_answer_chars = 50
    outcome, sink, _ = await relay([[AnswerDelta("x" * 10)] for _ in range(100)], config=config)
    assert outcome.error is not None and "exceeded 50 characters" in outcome.error.message
    assert len(sink.texts()) <= 60


async def test_citations_are_rewritten_and_annotated_for_search_models() -> None:
    outcome, sink, _ = await relay(
        [
            [AnswerDelta("Paris [reference:1]"), Citation("reference", 1, "https://example.org", "Example")],
            [AnswerDelta(" is big.")],
            [Finish("stop")],
        ],
        spec=SEARCH,
    )
    text = sink.texts()
    assert "https://example.org" in text and "[reference:1]" not in text
    assert [(a.url, a.title) for a in outcome.annotations] == [("https://example.org", "Example")]
    assert text[outcome.annotations[0].start : outcome.annotations[0].end]


async def test_content_filter_keeps_the_replacement() -> None:
    outcome, _, _ = await relay([[AnswerDelta("bad")], [Finish("content_filter", "Sorry.")]])
    assert (outcome.finish_reason, outcome.replacement) == ("content_filter", "Sorry.")
