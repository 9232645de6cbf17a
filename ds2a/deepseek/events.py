"""Typed events produced by ``ds2a.deepseek.stream.StreamParser``.

Small slotted classes rather than dataclasses: one event is built per upstream
frame on the gateway's hot path, and the chat handler dispatches with
``type(ev) is X``, so there is no shared behaviour beyond equality and repr
(both used by tests comparing event sequences).
"""

from __future__ import annotations

from typing import Any, Literal

from ds2a.deepseek.errors import ErrorKind

FinishReason = Literal["stop", "content_filter", "incomplete"]
CitationMarker = Literal["reference", "citation"]


class _Record:
    """Field-wise equality and a readable repr from ``__slots__``."""

    __slots__ = ()

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({inner})"


class Event(_Record):
    """Base class of everything ``StreamParser.feed`` returns."""

    __slots__ = ()


class Ready(Event):
    """The ``ready`` event: ids of the user message and of the answer being generated."""

    __slots__ = ("request_message_id", "response_message_id", "model_type")

    def __init__(self, request_message_id: int | None, response_message_id: int | None, model_type: str | None = None) -> None:
        self.request_message_id = request_message_id
        self.response_message_id = response_message_id
        self.model_type = model_type


class ReasoningDelta(Event):
    """New reasoning text (THINK fragment, G2 ``thinking_content``, G1 ``type: thinking``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class AnswerDelta(Event):
    """New answer text (RESPONSE fragment, G2 ``content``, G1 ``type: text``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class SearchResult(_Record):
    """One web page found or opened by the upstream search."""

    __slots__ = ("url", "title", "snippet", "site_name", "cite_index")

    def __init__(
        self,
        url: str | None,
        title: str | None = None,
        snippet: str | None = None,
        site_name: str | None = None,
        cite_index: int | None = None,
    ) -> None:
        self.url = url
        self.title = title
        self.snippet = snippet
        self.site_name = site_name
        self.cite_index = cite_index


class SearchResults(Event):
    """Results that became known in this frame (each result is reported once)."""

    __slots__ = ("results",)

    def __init__(self, results: list[SearchResult]) -> None:
        self.results = results


class Citation(Event):
    """What a ``[reference:N]`` (G3) or ``[citation:N]`` (G1/G2) marker points to.

    ``url``/``title`` are ``None`` when the source cannot be resolved (the marker's
    fragment is unknown or has no result); the event is still emitted so every
    marker has exactly one Citation.
    """

    __slots__ = ("marker", "index", "url", "title")

    def __init__(self, marker: CitationMarker, index: int, url: str | None, title: str | None) -> None:
        self.marker = marker
        self.index = index
        self.url = url
        self.title = title


class Usage(Event):
    """Latest ``accumulated_token_usage`` (output tokens incl. reasoning, §7.8)."""

    __slots__ = ("completion_tokens",)

    def __init__(self, completion_tokens: int) -> None:
        self.completion_tokens = completion_tokens


class Finish(Event):
    """Normal terminal: the answer ended with a final status.

    ``replacement`` is the TEMPLATE_RESPONSE text on a content filter: the text
    already streamed is withdrawn upstream and this canned answer replaces it.
    ``resumable`` is False for an ``incomplete`` end that someone chose (a user's
    stop or a regenerate, §16.4: a TIP fragment closes the answer first): continuing
    it automatically would undo their stop.
    """

    __slots__ = ("reason", "replacement", "resumable")

    def __init__(self, reason: FinishReason, replacement: str | None = None, resumable: bool = True) -> None:
        self.reason = reason
        self.replacement = replacement
        self.resumable = resumable


class StreamError(Event):
    """Error terminal: a ``hint``/``toast``, an error frame, an error status (TIMEOUT,
    CONTEXT_LENGTH_EXCEEDED), a ``close`` or end of body without a status, or a bound
    of the parser exceeded."""

    __slots__ = ("kind", "message", "finish_reason", "clear_response")

    def __init__(self, kind: ErrorKind, message: str, finish_reason: str | None = None, clear_response: bool = False) -> None:
        self.kind = kind
        self.message = message
        self.finish_reason = finish_reason
        self.clear_response = clear_response


class Title(Event):
    """The session title the upstream generated (``title`` event, first turn only)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


__all__ = [
    "AnswerDelta",
    "Citation",
    "CitationMarker",
    "Event",
    "Finish",
    "FinishReason",
    "Ready",
    "ReasoningDelta",
    "SearchResult",
    "SearchResults",
    "StreamError",
    "Title",
    "Usage",
]
