"""The tool-call and JSON stages of the text chain: the recognisers, plus the relay's policy.

``ds2a.relay.tools`` recognises calls and reads JSON; these stages decide what the
client sees and when a second upstream answer is worth asking for:

- ``ToolStage``: answer text goes through ``ToolCallRecognizer``; thinking text through
  ``ReasoningFilter`` (a call written while thinking is never executed nor shown). When
  the tool choice forces a call, text is held back until a call arrives: if none comes,
  the answer is asked for again with a correction, and the first answer was never seen.
- ``JsonStage``: for a streamed answer, fences are stripped as the text flows; for a
  collected one the whole text is held, read and checked against the schema at the end,
  so an invalid answer can be asked for again before anything is shown.
"""

from __future__ import annotations

from ds2a.relay.conversation import Conversation, OutputFormat, ToolCall
from ds2a.relay.prompt import json_correction, tool_correction
from ds2a.relay.tools import ReasoningFilter, ToolCallRecognizer
from ds2a.relay.tools.structured import JsonAnswerError, JsonFenceStripper, json_answer_text

Piece = str | ToolCall


class ToolStage:
    __slots__ = ("conversation", "forced", "shown", "called", "recognizer", "thoughts", "held", "problems")

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.forced = conversation.tool_choice.forces_call
        self.problems: list[str] = []
        self._fresh()

    def _fresh(self) -> None:
        conv = self.conversation
        self.recognizer = ToolCallRecognizer(conv.tools, parallel=conv.parallel_tool_calls, choice=conv.tool_choice)
        self.thoughts = ReasoningFilter()
        self.shown = False  # text of this answer reached the client
        self.called = False
        self.held: list[str] = []  # text held while a forced call has not come

    def feed(self, text: str) -> list[Piece]:
        return self._gate(self.recognizer.feed(text))

    def flush(self) -> list[Piece]:
        pieces = self._gate(self.recognizer.flush())
        self.problems = list(self.recognizer.rejected)
        return pieces

    def reasoning(self, text: str) -> str:
        pieces = self.thoughts.feed(text)
        return pieces[0] if len(pieces) == 1 else "".join(pieces)  # type: ignore[arg-type]

    def flush_reasoning(self) -> str:
        return "".join(self.thoughts.flush())  # type: ignore[arg-type]

    def _gate(self, pieces: list[Piece]) -> list[Piece]:
        if not pieces:
            return pieces
        if not self.forced:
            if not self.shown and any(type(p) is str and p for p in pieces):
                self.shown = True
            return pieces
        out: list[Piece] = []
        for piece in pieces:
            if type(piece) is str:
                if self.called:
                    out.append(piece)
                else:
                    self.held.append(piece)
            else:
                if not self.called:
                    # The text the model wrote before its call goes out ahead of it.
                    self.called = True
                    preface = "".join(self.held)
                    self.held.clear()
                    if preface.strip():
                        out.append(preface)
                out.append(piece)
        return out

    def correction(self) -> str:
        return tool_correction(self.conversation, self.problems)

    def restart(self) -> None:
        self._fresh()


class JsonStage:
    """Fences off a streamed JSON answer; holds and checks a collected one."""

    __slots__ = ("output", "check", "stripper", "held", "error")

    def __init__(self, output: OutputFormat, *, check: bool) -> None:
        self.output = output
        self.check = check
        self._fresh()

    def _fresh(self) -> None:
        self.stripper = JsonFenceStripper()
        self.held: list[str] = []
        self.error: str | None = None

    def feed(self, text: str) -> str:
        if self.check:
            self.held.append(text)
            return ""
        return self.stripper.feed(text)

    def flush(self) -> str:
        if not self.check:
            return self.stripper.flush()
        text = "".join(self.held)
        self.held.clear()
        try:
            return json_answer_text(text, self.output.schema, require_object=self.output.kind == "json_object")
        except JsonAnswerError as exc:
            self.error = str(exc)
            return ""

    def correction(self) -> str:
        return json_correction(self.output_conversation(), self.error or "")

    def output_conversation(self) -> Conversation:
        return Conversation([], output=self.output)

    def restart(self) -> None:
        self._fresh()
