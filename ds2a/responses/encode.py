"""Answer events as Responses API output: stream events, or one ``response`` object.

Both sinks build the same output items from the relay's answer events: thoughts
make a ``reasoning`` item, answer text a ``message`` item with one ``output_text``
part, each tool call a ``function_call`` item; an item closes when an event of
another kind arrives or the answer ends. ``StreamSink`` writes OpenAI's event
sequence for them as it goes (``response.output_item.added``, the part and delta
events, ``….done``, ``response.output_item.done``) between ``response.created`` /
``response.in_progress`` and the terminal ``response.completed`` /
``response.incomplete`` / ``response.failed``, every event numbered by
``sequence_number``. ``CollectSink`` keeps the items for one body.

Deltas are the hot path: each is a per-item byte template around the escaped text
and its sequence number; every other event (a handful per item) is a dict dumped
once. Thoughts go out as a reasoning summary when the client asked for a summary,
as reasoning text otherwise (see ``parse._reasoning``).
"""

from __future__ import annotations

import time
from typing import Any

from ds2a.api.jsonbytes import dumps as _dumps
from ds2a.api.jsonbytes import quote as _quote
from ds2a.api.errors import upstream_error
from ds2a.relay.answer import Annotation, Outcome
from ds2a.responses.ids import new_id
from ds2a.server import Responder

COALESCE_MAX = 32  # events joined into one write at most, so no write grows unbounded

# Why an answer is incomplete, in the Responses API's words.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event, named by its type as OpenAI names them."""
    return b"event: " + event["type"].encode() + b"\ndata: " + _dumps(event) + b"\n\n"


def usage_dict(outcome: Outcome) -> dict[str, Any]:
    return {
        "input_tokens": outcome.prompt_tokens,
        # Nothing is cached: the web chat reads the whole prompt every time.
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": outcome.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens},
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


class ResponseEnvelope:
    """What every ``response`` object of one request repeats: its id, time, model and settings."""

    __slots__ = ("id", "created_at", "model", "echo")

    def __init__(self, model: str, echo: dict[str, Any], *, response_id: str | None = None) -> None:
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        self.model = model
        self.echo = echo

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        echo = self.echo
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "max_tool_calls": echo.get("max_tool_calls"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo.get("parallel_tool_calls", True),
            "previous_response_id": echo.get("previous_response_id"),
            "prompt_cache_key": echo.get("prompt_cache_key"),
            "reasoning": echo.get("reasoning") or {"effort": None, "summary": None},
            "safety_identifier": echo.get("safety_identifier"),
            "service_tier": "default",
            "store": echo.get("store", True),
            "temperature": echo.get("temperature"),
            "text": echo.get("text") or {"format": {"type": "text"}},
            "tool_choice": echo.get("tool_choice", "auto"),
            "tools": echo.get("tools") or [],
            "top_logprobs": echo.get("top_logprobs") or 0,
            "top_p": echo.get("top_p"),
            "truncation": echo.get("truncation") or "disabled",
            "metadata": echo.get("metadata") or {},
        }
        # Both are objects or strings when present, never null: left out until known.
        if usage is not None:
            body["usage"] = usage
        if echo.get("user") is not None:
            body["user"] = echo["user"]
        return body


def failure(outcome: Outcome) -> dict[str, Any]:
    """The ``error`` of a failed response, in the codes the Responses API has."""
    assert outcome.error is not None
    err = upstream_error(outcome.error)
    code = "rate_limit_exceeded" if err.status == 429 else "server_error"
    return {"code": code, "message": err.message}


def _output_text(text: str, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}


def _url_citations(annotations: list[Annotation], start: int, end: int) -> list[dict[str, Any]]:
    """The citations over ``answer[start:end]``, with indexes relative to that span."""
    return [
        {"type": "url_citation", "url": a.url, "title": a.title, "start_index": a.start - start,
         "end_index": a.end - start}
        for a in annotations
        if a.start >= start and a.end <= end
    ]


class _Item:
    """An output item being built: its kind, id, place in the output and text so far."""

    __slots__ = ("kind", "id", "index", "pieces", "call_id", "name", "start")

    def __init__(self, kind: str, item_id: str, index: int, start: int = 0) -> None:
        self.kind = kind  # "reasoning" | "message" | "function_call"
        self.id = item_id
        self.index = index
        self.pieces: list[str] = []
        self.call_id = ""
        self.name = ""
        self.start = start  # messages: where its text starts in the whole answer text

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class OutputSink:
    """The output items of one answer, built from answer events; the collecting sink.

    ``StreamSink`` extends it with the events a stream writes at each step.
    """

    paused = False  # nobody reads a collected answer until it is whole

    def __init__(self, envelope: ResponseEnvelope, *, summary: bool = False) -> None:
        self.envelope = envelope
        self.summary = summary
        self.output: list[dict[str, Any]] = []  # closed items, in output order
        self.open: _Item | None = None  # the reasoning or message item text goes to
        self.calls: dict[int, _Item] = {}  # the relay's call index -> its open item
        self.messages: list[tuple[int, int, int]] = []  # (output index, start, end) of closed messages
        self.answer_chars = 0  # answer text so far, the coordinate of citations
        self.items = 0  # items opened so far: the next output index

    # --- answer events ----------------------------------------------------------

    def reasoning(self, text: str) -> None:
        item = self.open
        if item is None or item.kind != "reasoning":
            item = self._open("reasoning", "rs")
        item.pieces.append(text)
        self._reasoning_delta(item, text)

    def text(self, text: str) -> None:
        item = self.open
        if item is None or item.kind != "message":
            item = self._open("message", "msg")
        item.pieces.append(text)
        self.answer_chars += len(text)

    def tool_call_start(self, index: int, call_id: str, name: str) -> None:
        self._close_open("completed")
        item = _Item("function_call", new_id("fc"), self._next_index())
        item.call_id = call_id
        item.name = name
        self.calls[index] = item
        self.output.append({})  # its place, filled when the call ends
        self._added(item)

    def tool_call_arguments(self, index: int, fragment: str) -> None:
        item = self.calls[index]
        item.pieces.append(fragment)
        self._arguments_delta(item, fragment)

    def tool_call_end(self, index: int) -> None:
        item = self.calls.pop(index)
        self._close(item, "completed")

    def flush(self) -> None:
        pass

    async def drain(self) -> None:
        pass

    # --- the end ----------------------------------------------------------------

    def finish(self, outcome: Outcome, *, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The final ``response`` object: items closed, citations placed, status decided
        (``error``: failed for a reason of the gateway's own, not the upstream's)."""
        status, incomplete, error = ("failed", None, error) if error else self._status(outcome)
        item_status = "completed" if status == "completed" else "incomplete"
        if error is None and incomplete == "content_filter" and outcome.replacement:
            # The upstream withdrew the answer and put its canned refusal in its place.
            self._message().pieces = [outcome.replacement]
        elif error is None and not self._has_answer():
            # Clients look for the answer in a message (an agent that finds neither a message
            # nor a call would go round again): an empty answer is an empty message.
            self._message()
        if self.open is not None and self.open.kind == "message":
            self._close(self.open, item_status, outcome.annotations)
            self.open = None
        self._close_open(item_status)
        for item in list(self.calls.values()):  # a call cut off before its end
            self._close(item, "incomplete")
        self.calls.clear()
        self._place_citations(outcome.annotations)
        usage = usage_dict(outcome)
        return self.envelope.body(status, self.output, usage=usage, error=error, incomplete=incomplete)

    @staticmethod
    def _status(outcome: Outcome) -> tuple[str, str | None, dict[str, Any] | None]:
        if outcome.error is not None:
            return "failed", None, failure(outcome)
        incomplete = INCOMPLETE.get(outcome.finish_reason)
        if incomplete is not None:
            return "incomplete", incomplete, None
        return "completed", None, None

    def _has_answer(self) -> bool:
        if self.calls or (self.open is not None and self.open.kind == "message"):
            return True
        return any(item.get("type") in ("message", "function_call") for item in self.output)

    def _message(self) -> _Item:
        """The open message item, opened if another kind (or none) is open."""
        if self.open is not None and self.open.kind == "message":
            return self.open
        return self._open("message", "msg")

    def _place_citations(self, annotations: list[Annotation]) -> None:
        if not annotations:
            return
        for index, start, end in self.messages:
            part = self.output[index]["content"][0]
            if not part["annotations"]:
                part["annotations"] = _url_citations(annotations, start, end)

    # --- items ------------------------------------------------------------------

    def _next_index(self) -> int:
        index = self.items
        self.items += 1
        return index

    def _open(self, kind: str, prefix: str) -> _Item:
        self._close_open("completed")
        item = _Item(kind, new_id(prefix), self._next_index(), self.answer_chars)
        self.open = item
        self.output.append({})  # its place, filled when it closes
        self._added(item)
        return item

    def _close_open(self, status: str) -> None:
        if self.open is not None:
            self._close(self.open, status)
            self.open = None

    def _close(self, item: _Item, status: str, annotations: list[Annotation] = ()) -> None:  # type: ignore[assignment]
        done = self._done_item(item, status, annotations)
        self.output[item.index] = done
        if item.kind == "message":
            self.messages.append((item.index, item.start, item.start + len(item.text)))
        self._closed(item, done)

    def _done_item(self, item: _Item, status: str, annotations: list[Annotation]) -> dict[str, Any]:
        text = item.text
        if item.kind == "message":
            cited = _url_citations(annotations, item.start, item.start + len(text))
            return {"id": item.id, "type": "message", "role": "assistant", "status": status,
                    "content": [_output_text(text, cited)]}
        if item.kind == "reasoning":
            if self.summary:
                return {"id": item.id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}],
                        "status": status}
            return {"id": item.id, "type": "reasoning", "summary": [],
                    "content": [{"type": "reasoning_text", "text": text}], "status": status}
        return {"id": item.id, "type": "function_call", "call_id": item.call_id, "name": item.name,
                "arguments": text, "status": status}

    # --- what a stream adds (nothing when collecting) ---------------------------

    def _added(self, item: _Item) -> None:
        pass

    def _reasoning_delta(self, item: _Item, text: str) -> None:
        pass

    def _arguments_delta(self, item: _Item, fragment: str) -> None:
        pass

    def _closed(self, item: _Item, done: dict[str, Any]) -> None:
        pass


CollectSink = OutputSink


class StreamSink(OutputSink):
    """A streamed answer's way out: OpenAI's events per answer event, one write per upstream read."""

    def __init__(self, responder: Responder, envelope: ResponseEnvelope, *, summary: bool = False) -> None:
        super().__init__(envelope, summary=summary)
        self.responder = responder
        self.chunks: list[bytes] = []
        self.sequence = 0
        self._delta_head = b""  # the open item's delta template, up to the delta text
        self._args_heads: dict[int, bytes] = {}  # output index -> arguments delta template

    # --- the flow ---------------------------------------------------------------

    def begin(self) -> None:
        """``response.created`` and ``response.in_progress``, written at once."""
        body = self.envelope.body("in_progress", [])
        self._event({"type": "response.created", "response": body})
        self._event({"type": "response.in_progress", "response": body})
        self.flush()

    def finish(self, outcome: Outcome, *, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """Closes every item and returns the final response object. Its terminal event
        (``response.completed`` / ``.incomplete`` / ``.failed``) is queued, not written, so
        the caller can store the response before the client learns it is done (``flush``)."""
        body = super().finish(outcome, error=error)
        self.flush()
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            body["status"], "response.failed"
        )
        self.chunks.append(sse({"type": kind, "response": body, "sequence_number": self.sequence}))
        self.sequence += 1
        return body

    def fail(self, message: str) -> dict[str, Any]:
        """Ends the stream as failed (shutdown, or a bug of ours mid-answer), written at once."""
        body = self.finish(Outcome(), error={"code": "server_error", "message": message})
        self.flush()
        return body

    def flush(self) -> None:
        chunks = self.chunks
        if chunks:
            self.responder.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            chunks.clear()

    @property
    def paused(self) -> bool:  # type: ignore[override]
        """The client reads slowly: stop reading upstream until it catches up."""
        return self.responder.paused

    async def drain(self) -> None:
        await self.responder.drain()

    # --- events -----------------------------------------------------------------

    def _event(self, event: dict[str, Any]) -> None:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        self.chunks.append(sse(event))
        if len(self.chunks) >= COALESCE_MAX:
            self.flush()

    def text(self, text: str) -> None:
        # The hot path, inlined: one check of the open item, one template filled.
        item = self.open
        if item is None or item.kind != "message":
            item = self._open("message", "msg")
        item.pieces.append(text)
        self.answer_chars += len(text)
        chunks = self.chunks
        chunks.append(b"%s%s,\"sequence_number\":%d}\n\n" % (self._delta_head, _quote(text), self.sequence))
        self.sequence += 1
        if len(chunks) >= COALESCE_MAX:
            self.flush()

    def _delta(self, head: bytes, text: str) -> None:
        self.chunks.append(b"%s%s,\"sequence_number\":%d}\n\n" % (head, _quote(text), self.sequence))
        self.sequence += 1
        if len(self.chunks) >= COALESCE_MAX:
            self.flush()

    @staticmethod
    def _template(kind: str, item: _Item, index_field: str | None, extra: str = "") -> bytes:
        """The bytes of a delta event up to its text: everything that stays the same per item."""
        fields = f'"type":"{kind}","item_id":"{item.id}","output_index":{item.index}'
        if index_field:
            fields += f',"{index_field}":0'
        return f'event: {kind}\ndata: {{{fields}{extra},"delta":'.encode()

    def _added(self, item: _Item) -> None:
        base = {"type": "response.output_item.added", "output_index": item.index}
        if item.kind == "message":
            self._event({**base, "item": {"id": item.id, "type": "message", "role": "assistant",
                                          "status": "in_progress", "content": []}})
            self._event({"type": "response.content_part.added", "item_id": item.id, "output_index": item.index,
                         "content_index": 0, "part": _output_text("", [])})
            self._delta_head = self._template(
                "response.output_text.delta", item, "content_index", ',"logprobs":[]'
            )
        elif item.kind == "reasoning":
            reasoning: dict[str, Any] = {"id": item.id, "type": "reasoning", "summary": [], "status": "in_progress"}
            if not self.summary:
                reasoning["content"] = []
            self._event({**base, "item": reasoning})
            if self.summary:
                self._event({"type": "response.reasoning_summary_part.added", "item_id": item.id,
                             "output_index": item.index, "summary_index": 0,
                             "part": {"type": "summary_text", "text": ""}})
                self._delta_head = self._template("response.reasoning_summary_text.delta", item, "summary_index")
            else:
                self._event({"type": "response.content_part.added", "item_id": item.id,
                             "output_index": item.index, "content_index": 0,
                             "part": {"type": "reasoning_text", "text": ""}})
                self._delta_head = self._template("response.reasoning_text.delta", item, "content_index")
        else:
            self._event({**base, "item": {"id": item.id, "type": "function_call", "call_id": item.call_id,
                                          "name": item.name, "arguments": "", "status": "in_progress"}})
            self._args_heads[item.index] = self._template("response.function_call_arguments.delta", item, None)

    def _reasoning_delta(self, item: _Item, text: str) -> None:
        self._delta(self._delta_head, text)

    def _arguments_delta(self, item: _Item, fragment: str) -> None:
        self._delta(self._args_heads[item.index], fragment)

    def _closed(self, item: _Item, done: dict[str, Any]) -> None:
        ids = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            part = done["content"][0]
            for k, annotation in enumerate(part["annotations"]):
                self._event({"type": "response.output_text.annotation.added", **ids, "content_index": 0,
                             "annotation_index": k, "annotation": annotation})
            self._event({"type": "response.output_text.done", **ids, "content_index": 0, "text": part["text"],
                         "logprobs": []})
            self._event({"type": "response.content_part.done", **ids, "content_index": 0, "part": part})
        elif item.kind == "reasoning":
            text = item.text
            if self.summary:
                part = {"type": "summary_text", "text": text}
                self._event({"type": "response.reasoning_summary_text.done", **ids, "summary_index": 0,
                             "text": text})
                self._event({"type": "response.reasoning_summary_part.done", **ids, "summary_index": 0,
                             "part": part})
            else:
                part = {"type": "reasoning_text", "text": text}
                self._event({"type": "response.reasoning_text.done", **ids, "content_index": 0, "text": text})
                self._event({"type": "response.content_part.done", **ids, "content_index": 0, "part": part})
        else:
            self._args_heads.pop(item.index, None)
            self._event({"type": "response.function_call_arguments.done", **ids, "name": item.name,
                         "arguments": done["arguments"]})
        self._event({"type": "response.output_item.done", "output_index": item.index, "item": done})
