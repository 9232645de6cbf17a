"""The chain of streaming text transforms between upstream events and a dialect's sink.

Answer text goes through, in order and only where the request needs them:
citation markers rewritten (search models), stop sequences cut, tool-call markup
recognised (requests with tools), JSON fences stripped (JSON output formats). Each
stage holds back only what could still change meaning (the start of a marker, a
stop sequence or a call), so text reaches the client as soon as it is final.

``TextChain.text`` and ``TextChain.reasoning`` are bound at construction to the
shortest path the request allows: for plain chat the text goes straight to the
sink, with no stage in between.
"""

from __future__ import annotations

from typing import Any

from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.deepseek.events import Citation
from ds2a.relay.answer import AnswerSink
from ds2a.relay.citations import CitationRewriter
from ds2a.relay.conversation import Conversation, ToolCall
from ds2a.relay.stops import StopMatcher


class TextChain:
    __slots__ = (
        "sink", "citations", "stops", "tools", "json",
        "text", "reasoning", "finished", "finish_reason", "delivered", "chars",
        "tool_calls", "retried", "search", "citation_mode", "stop_list", "_sink_text", "_flushed",
    )

    def __init__(
        self,
        sink: AnswerSink,
        *,
        search: bool,
        citation_mode: str,
        stops: list[str],
        conversation: Conversation,
        stream: bool = True,
    ) -> None:
        self.sink = sink
        self.search = search
        self.citation_mode = citation_mode
        self.stop_list = stops
        self.citations = CitationRewriter(citation_mode) if search else None
        self.stops = StopMatcher(stops)
        self.tools = _tool_stage(conversation)
        self.json = _json_stage(conversation, stream)
        self._flushed = False
        self.finished = False  # the text is complete (a stop sequence): stop reading
        self.finish_reason: str | None = None
        self.delivered = 0  # characters given to sink.text
        self.chars = 0  # characters received (text and reasoning), to bound an answer
        self.tool_calls = 0
        self.retried = False
        self._sink_text = sink.text
        plain = self.citations is None and not self.stops.active and self.tools is None and self.json is None
        self.text = self._count_and_pass if plain else self._transform
        self.reasoning = self._reasoning if self.tools is None else self._filtered_reasoning

    # --- per event ------------------------------------------------------------

    def _count_and_pass(self, text: str) -> None:
        if text:
            self.chars += len(text)
            self.delivered += len(text)
            self._sink_text(text)

    def _reasoning(self, text: str) -> None:
        self.chars += len(text)
        self.sink.reasoning(text)

    def _filtered_reasoning(self, text: str) -> None:
        self.chars += len(text)
        assert self.tools is not None
        text = self.tools.reasoning(text)
        if text:
            self.sink.reasoning(text)

    def _transform(self, text: str) -> None:
        self.chars += len(text)
        if self.citations is not None:
            text = self.citations.feed(text)
        if self.stops.active and text:
            text, hit = self.stops.feed(text)
            if hit:
                self.finished = True
                self.finish_reason = "stop"
        if text:
            self._structured(text)

    def _structured(self, text: str) -> None:
        """After citations and stops: tool calls, then JSON fences, then the sink."""
        if self.tools is not None:
            self._pieces(self.tools.feed(text))
            if self.tools.recognizer.calls_done and self.tool_calls:
                # No further call can come and text after calls is dropped: stop reading.
                self.finished = True
                self.finish_reason = "tool_calls"
            return
        self._emit(text)

    def _pieces(self, pieces: list[Any]) -> None:
        for piece in pieces:
            if type(piece) is str:
                self._emit(piece)
            else:
                self._call(piece)

    def _emit(self, text: str) -> None:
        if self.json is not None:
            text = self.json.feed(text)
        if text:
            self.delivered += len(text)
            self._sink_text(text)

    def _call(self, call: ToolCall) -> None:
        index = self.tool_calls
        self.tool_calls += 1
        sink = self.sink
        sink.tool_call_start(index, call.id, call.name)
        sink.tool_call_arguments(index, call.arguments)
        sink.tool_call_end(index)

    def cite(self, event: Citation) -> None:
        if self.citations is not None:
            self.citations.cite(event.marker, event.index, event.url, event.title)

    # --- end of the answer ----------------------------------------------------

    def needs_retry(self, finish_reason: str | None) -> bool:
        """A forced tool call that did not come, or checked JSON that is not valid: worth
        one more upstream answer, once, and only when nothing of this one was shown."""
        if self.retried or finish_reason in ("length", "content_filter"):
            return False
        self._flush_all()
        if self.tools is not None and self.tools.forced and not self.tool_calls:
            return not self.tools.shown
        return self.json is not None and self.json.error is not None

    def correction(self) -> str:
        """The instruction that tells the model what was wrong with its first answer."""
        if self.tools is not None:
            return self.tools.correction()
        assert self.json is not None
        return self.json.correction()

    def restart(self) -> None:
        """Fresh stages for the retried answer (nothing of the first one was shown)."""
        self.retried = True
        self.finished = False
        self.finish_reason = None
        self._flushed = False
        self.citations = CitationRewriter(self.citation_mode) if self.search else None
        self.stops = StopMatcher(self.stop_list)
        if self.tools is not None:
            self.tools.restart()
        if self.json is not None:
            self.json.restart()

    def finish(self) -> DeepSeekError | None:
        """Flush every stage into the sink; an error when the answer breaks a promise
        (a required tool call that never came, JSON that never matched its schema)."""
        self._flush_all()
        self.sink.flush()
        if self.tool_calls:
            self.finish_reason = "tool_calls"
            return None
        if self.tools is not None and self.tools.forced:
            return DeepSeekError(
                ErrorKind.UPSTREAM,
                "the model answered without calling a tool although tool_choice requires one "
                "(after one corrective retry)",
            )
        if self.json is not None and self.json.error is not None:
            return DeepSeekError(
                ErrorKind.UPSTREAM,
                f"the model's answer is not valid for the requested format (after one corrective retry): "
                f"{self.json.error}",
            )
        return None

    def _flush_all(self) -> None:
        if self._flushed:
            return
        self._flushed = True
        if not self.stops.hit:
            # Nothing after a stop sequence, not even a citation the rewriter still held back.
            self._flush_stages()
        if self.json is not None:
            tail = self.json.flush()
            if tail:
                self.delivered += len(tail)
                self._sink_text(tail)

    def _flush_stages(self) -> None:
        tail = self.citations.flush() if self.citations is not None else ""
        if self.stops.active:
            if tail:
                tail, hit = self.stops.feed(tail)
                if hit:
                    self.finish_reason = "stop"
            if not self.stops.hit:
                tail += self.stops.flush()
        if tail:
            self._structured(tail)
        if self.tools is not None:
            self._pieces(self.tools.flush())
            thoughts = self.tools.flush_reasoning()
            if thoughts:
                self.sink.reasoning(thoughts)

    @property
    def stop_sequence(self) -> str | None:
        return self.stops.matched if self.stops.hit else None

    def annotations(self) -> list[dict[str, Any]]:
        if self.citations is None:
            return []
        return [a for a in self.citations.annotations if a["url_citation"]["end_index"] <= self.delivered]


def _tool_stage(conversation: Conversation) -> Any:
    # Also with tool_choice "none": the tools are in the prompt, so a call the model writes
    # anyway must be taken out of the text (the recogniser refuses it).
    if not conversation.tools:
        return None
    from ds2a.relay.toolstage import ToolStage

    return ToolStage(conversation)


def _json_stage(conversation: Conversation, stream: bool) -> Any:
    if not conversation.output.is_json or conversation.uses_tools:
        return None
    from ds2a.relay.toolstage import JsonStage

    return JsonStage(conversation.output, check=not stream)
