"""What the relay core hands a dialect: answer events through a sink, then an outcome.

The relay loop turns upstream events into dialect-neutral answer events and calls
one method of the dialect's ``AnswerSink`` per event: ``reasoning``/``text`` for
thoughts and visible answer text (already through the citation, stop-sequence and
tool-call transforms), ``tool_call_start``/``tool_call_arguments``/``tool_call_end``
for a recognised and validated call. Per upstream read the loop calls ``flush`` once
(a stream sink writes everything of that read in one write). When the answer ends,
``Relay.run`` returns an ``Outcome``; the dialect writes its own ending from it
(finish chunk, ``message_delta``, ``response.completed``, or one JSON body).

A sink is written twice per dialect: streamed (bytes per event) and collected
(kept for one body at the end). Both are plain classes, testable without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from ds2a.deepseek.errors import DeepSeekError

FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


@dataclass(slots=True)
class Annotation:
    """A citation of a web page, over ``answer[start:end]`` of the visible answer text."""

    url: str
    title: str
    start: int
    end: int


@dataclass(slots=True)
class Outcome:
    """How an answer ended. ``error`` set: it failed after text began (write an error event)."""

    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    annotations: list[Annotation] = field(default_factory=list)
    stop_sequence: str | None = None  # the stop sequence that ended the answer, if one did
    replacement: str | None = None  # content filter: the upstream's canned refusal
    error: DeepSeekError | None = None
    tool_calls: int = 0  # calls passed to the sink


class AnswerSink(Protocol):
    @property
    def paused(self) -> bool:
        """The client reads slowly: the loop stops reading upstream and awaits ``drain``."""

    async def drain(self) -> None: ...

    def reasoning(self, text: str) -> None: ...

    def text(self, text: str) -> None: ...

    def tool_call_start(self, index: int, call_id: str, name: str) -> None: ...

    def tool_call_arguments(self, index: int, fragment: str) -> None: ...

    def tool_call_end(self, index: int) -> None: ...

    def flush(self) -> None:
        """End of one upstream read: write what the events of that read produced."""
