"""Sans-I/O parser for the body of ``POST /api/v0/chat/completion`` (protocol doc §7, §8).

Two layers:

* ``SSEDecoder`` turns bytes into ``(event, data)`` pairs. It splits on complete
  lines only, so a UTF-8 character cut between two reads is decoded once whole.
* ``StreamParser`` keeps the client-side response state that the G3 patch frames
  (§7.4) edit, and derives events from how that state changes: text deltas from
  THINK/RESPONSE fragment contents, search results from tool fragments, citations
  from ``references``, the terminal from ``status``. G2 (``response/content``...)
  is the same grammar on other paths; G1 (``choices[0].delta``) has its own branch.

Hot path: almost every frame is ``{"v":"text"}`` appended to the fragment that
the previous frame addressed. That frame skips JSON decoding when it holds no
escapes and only counts its characters into the cached ``Text`` of that fragment.

Memory is bounded whatever the upstream sends (issue 8): a block that never ends is
cut at ``max_block`` bytes, and the text of THINK/RESPONSE fragments is forgotten as
soon as it has been emitted (a ``Text`` then keeps only its length, which is all a
continuation needs), so a long answer costs the parser no more than a short one.
Everything else the state retains is counted; past ``max_retained`` the stream ends
with a ``StreamError(PROTOCOL)``, as it does past ``max_block``.
"""

from __future__ import annotations

import json
from typing import Any

from ds2a.deepseek.errors import ErrorKind, classify_stream_error
from ds2a.deepseek.events import (
    AnswerDelta,
    Citation,
    Event,
    Finish,
    FinishReason,
    Ready,
    ReasoningDelta,
    SearchResult,
    SearchResults,
    StreamError,
    Title,
    Usage,
)

_loads = json.loads

# Fragment types whose content is shown as text. ANSWER is a peer's synonym of RESPONSE.
TEXT_FRAGMENTS: dict[str, type[ReasoningDelta] | type[AnswerDelta]] = {
    "THINK": ReasoningDelta,
    "RESPONSE": AnswerDelta,
    "ANSWER": AnswerDelta,
}
# G2 keeps both texts directly on the response object.
G2_TEXTS: tuple[tuple[str, type[ReasoningDelta] | type[AnswerDelta]], ...] = (
    ("thinking_content", ReasoningDelta),
    ("content", AnswerDelta),
)
# Final response statuses (§7.8). CANCELLED / CONTENT_TOO_LONG are in the
# front-end's enum but never seen: both leave an unfinished answer.
FINISH_STATUSES: dict[str, FinishReason] = {
    "FINISHED": "stop",
    "CONTENT_FILTER": "content_filter",
    "INCOMPLETE": "incomplete",
    "CANCELLED": "incomplete",
    "CONTENT_TOO_LONG": "incomplete",
}
# Statuses that end the answer with an error (§7.8, §16.4): kind, message, finish_reason.
# Unlike the finish statuses they are terminal as a BATCH quasi_status already.
ERROR_STATUSES: dict[str, tuple[ErrorKind, str, str]] = {
    "CONTENT_EMPTY": (ErrorKind.UPSTREAM, "upstream ended with status CONTENT_EMPTY", "content_empty"),
    "CONTEXT_LENGTH_EXCEEDED": (
        ErrorKind.INPUT_TOO_LONG,
        "the conversation is longer than the model's context (status CONTEXT_LENGTH_EXCEEDED)",
        "context_length_exceeded",
    ),
    "TIMEOUT": (ErrorKind.TIMEOUT, "DeepSeek gave up on this answer (status TIMEOUT)", "timeout"),
}
# Fragment types whose results may be cited (§7.6, §16.4); any other non-text type with
# a url-bearing ``result``/``results`` is read the same way, never as text.
SEARCH_FRAGMENTS = frozenset({"TOOL_SEARCH", "TOOL_FIND", "SEARCH"})
OPEN_FRAGMENTS = frozenset({"TOOL_OPEN", "READ_LINK"})
PLAIN_FRAGMENTS = frozenset({"TIP", "TEMPLATE_RESPONSE"})  # UI text, never a source
# Named events whose ``type: error`` payload ends the stream (§7.9, §16.4).
ERROR_EVENTS = frozenset({"hint", "error", "toast"})

# Bounds (issue 8). A real block is one frame: the largest, a continuation's opening
# snapshot, carries the text produced so far (hundreds of KB); 8 MiB is far above it.
MAX_BLOCK_BYTES = 8 * 1024 * 1024
# What the state may keep besides forgotten text (characters, roughly bytes): search
# results, references, statuses. A searched answer keeps tens of KB.
MAX_RETAINED = 16 * 1024 * 1024
_NODE = 8  # what a number, a flag or a container costs in the estimate
ALL, NONE = -1 << 62, -(1 << 62) - 1  # _sync: every fragment / none (any other value: that index)

# Compacting the piece list every so many appends keeps memory near the text size
# while each piece is still copied only once.
_PIECES_PER_CHUNK = 512
_PATH_CACHE_LIMIT = 4096
_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------- layer 1


class SSEDecoder:
    """Server-sent events framing (LF or CRLF lines), without any I/O.

    Works block by block: bytes are kept until a blank line completes a block,
    so fields are only decoded from whole lines (never half a UTF-8 character)
    and the common block, a single ``data:`` line, is cut out with one slice.
    A lone CR is not a line break here (the upstream uses LF; CRLF is accepted).
    """

    __slots__ = ("_pending", "_size", "_cr", "_started", "max_block", "overflowed")

    def __init__(self, max_block: int = MAX_BLOCK_BYTES) -> None:
        self._pending: list[bytes] = []  # bytes of the current, incomplete block
        self._size = 0  # bytes in _pending
        self._cr = False  # the previous chunk ended with CR, maybe half of a CRLF
        self._started = False  # a leading BOM has been dealt with
        self.max_block = max_block
        self.overflowed = False  # a block outgrew max_block: nothing more is decoded

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Blocks completed by ``chunk``, as ``(event name, data)``."""
        if self.overflowed:
            return []
        if self._cr or 13 in chunk:  # int membership is a bare memchr: cheaper than b"\r"
            chunk = self._without_crlf(chunk)
        pending = self._pending
        # One read = one single-line data block: the upstream's usual rhythm.
        if not pending and self._started and chunk.find(10) == len(chunk) - 2 and chunk[-1:] == b"\n" and chunk[:6] == b"data: ":
            return [("message", chunk[6:-2].decode("utf-8", "replace"))]
        out: list[tuple[str, str]] = []
        if pending and chunk.startswith(b"\n") and pending[-1].endswith(b"\n"):
            # The blank line straddles two reads.
            block = b"".join(pending)[:-1]
            pending.clear()
            self._size = 0
            self._blocks(block, out)
            chunk = chunk[1:]
        cut = chunk.rfind(b"\n\n")
        if cut < 0:
            if chunk:
                self._keep(chunk)
            return out
        head = chunk[:cut]
        if pending:
            pending.append(head)
            head = b"".join(pending)
            pending.clear()
            self._size = 0
        rest = chunk[cut + 2 :]
        if rest:
            self._keep(rest)
        self._blocks(head, out)
        return out

    def _keep(self, part: bytes) -> None:
        """Hold the start of an unfinished block, up to ``max_block`` bytes."""
        size = self._size + len(part)
        if size > self.max_block:
            # An upstream that never ends its block must not grow the gateway: give up.
            self._pending.clear()
            self._size = 0
            self.overflowed = True
            return
        self._pending.append(part)
        self._size = size

    def close(self) -> list[tuple[str, str]]:
        """End of body. Unlike a browser, dispatch a block that lacks its final
        blank line: a missing trailing newline must not turn a finished answer
        into an error, and a truncated frame still fails JSON decoding later."""
        out: list[tuple[str, str]] = []
        if self._cr:
            self._cr = False
            self._pending.append(b"\r")
        if self._pending:
            block = b"".join(self._pending)
            self._pending.clear()
            self._size = 0
            self._blocks(block, out)
        return out

    def _without_crlf(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            # Keep a trailing CR until we know whether LF follows.
            self._cr = True
            chunk = chunk[:-1]
        return chunk.replace(b"\r\n", b"\n")

    def _blocks(self, text: bytes, out: list[tuple[str, str]]) -> None:
        """Dispatch every block of ``text`` (complete blocks separated by blank lines)."""
        if not self._started:
            self._started = True
            if text.startswith(_BOM):
                text = text[3:]
        for block in text.split(b"\n\n"):
            if block.startswith(b"data: ") and block.find(b"\n") < 0:
                out.append(("message", block[6:].decode("utf-8", "replace")))
            elif block:
                self._lines(block.split(b"\n"), out)

    def _lines(self, lines: list[bytes], out: list[tuple[str, str]]) -> None:
        """The general case: any mix of fields, comments and (extra) blank lines."""
        event = ""
        data: list[bytes] = []
        for line in lines:
            if not line:
                if data:
                    out.append((event or "message", b"\n".join(data).decode("utf-8", "replace")))
                    data = []
                event = ""
                continue
            if line[0] == 0x3A:  # ':' starts a comment (keep-alive)
                continue
            name, colon, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":  # a bare "data" line is an empty data line
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")
            # id, retry and unknown fields carry nothing this parser needs
        if data:
            out.append((event or "message", b"\n".join(data).decode("utf-8", "replace")))


# --------------------------------------------------------------------------- text


class Text:
    """A string that grows by appends: pieces now, one join when read.

    ``length`` counts every character ever appended; the pieces may hold only the
    end of it: ``release()`` forgets what was relayed, and a released text keeps
    counting (``length``) what the fast path relays without storing it. ``tail``
    and ``str`` then see the kept end only.
    """

    __slots__ = ("chunks", "parts", "length", "held")

    def __init__(self, first: str = "") -> None:
        self.chunks: list[str] = []
        self.parts: list[str] = [first] if first else []
        self.length = len(first)
        self.held = len(first)  # characters kept in chunks and parts

    def append(self, piece: str) -> None:
        parts = self.parts
        parts.append(piece)
        self.length += len(piece)
        self.held += len(piece)
        if len(parts) >= _PIECES_PER_CHUNK:
            self.compact()

    def release(self) -> int:
        """Forget the kept pieces (the length stays); how many characters that freed."""
        freed = self.held
        self.chunks = []
        self.parts = []
        self.held = 0
        return freed

    @classmethod
    def relayed(cls, length: int) -> Text:
        """A text of ``length`` characters, all of them relayed and forgotten."""
        text = cls()
        text.length = length
        return text

    def compact(self) -> None:
        """Fold the recent pieces into one chunk (each piece is copied once)."""
        self.chunks.append("".join(self.parts))
        self.parts.clear()

    def __len__(self) -> int:
        return self.length

    def __str__(self) -> str:
        whole = "".join(self.chunks) + "".join(self.parts)
        self.chunks = [whole] if whole else []
        self.parts = []
        return whole

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Text):
            return str(self) == str(other)
        return isinstance(other, str) and str(self) == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Text({str(self)!r})"

    def tail(self, start: int) -> str:
        """The text from ``start`` on, touching only the pieces it needs."""
        need = self.length - start
        if need <= 0:
            return ""
        picked: list[str] = []
        for pieces in (self.parts, self.chunks):
            for piece in reversed(pieces):
                if len(piece) >= need:
                    picked.append(piece[len(piece) - need :])
                    return "".join(reversed(picked))
                picked.append(piece)
                need -= len(piece)
        return "".join(reversed(picked))


def text_length(value: Any) -> int | None:
    kind = type(value)
    if kind is str:
        return len(value)
    if kind is Text:
        return value.length
    return None


def text_from(value: Any, start: int) -> str:
    return value[start:] if type(value) is str else value.tail(start)


def plain(value: Any) -> Any:
    """``value`` with every ``Text`` turned back into ``str`` (a JSON-able copy)."""
    kind = type(value)
    if kind is Text:
        return str(value)
    if kind is dict:
        return {k: plain(v) for k, v in value.items()}
    if kind is list:
        return [plain(v) for v in value]
    return value


def retained_size(value: Any) -> int:
    """Rough size of a decoded JSON value in the parser's state (characters plus a
    fixed cost per node): what the retention bound counts. Scalars are measured in
    place, only containers recurse (search results are dicts of strings)."""
    kind = type(value)
    if kind is str:
        return len(value)
    if kind is dict:
        size = _NODE
        for key, item in value.items():
            size += len(key)
            t = type(item)
            size += len(item) if t is str else retained_size(item) if t is dict or t is list or t is Text else _NODE
        return size
    if kind is list:
        size = _NODE
        for item in value:
            t = type(item)
            size += len(item) if t is str else retained_size(item) if t is dict or t is list or t is Text else _NODE
        return size
    if kind is Text:
        return value.held
    return _NODE


# --------------------------------------------------------------------------- paths

_paths: dict[str, tuple[str, ...]] = {}


def split_path(path: str) -> tuple[str, ...]:
    parts = _paths.get(path)
    if parts is None:
        if len(_paths) >= _PATH_CACHE_LIMIT:
            _paths.clear()
        parts = _paths[path] = tuple(path.split("/")) if path else ()
    return parts


def list_index(part: str, size: int, *, allow_end: bool = False) -> int | None:
    """A list position from a path segment; negative counts from the end (§7.4 rule 5)."""
    try:
        index = int(part)
    except ValueError:
        return None
    if index < 0:
        index += size
    limit = size + 1 if allow_end else size
    return index if 0 <= index < limit else None


def child(node: Any, part: str) -> Any:
    if type(node) is dict:
        return node.get(part)
    if type(node) is list:
        index = list_index(part, len(node))
        return None if index is None else node[index]
    return None


def appended(current: Any, value: Any) -> Any:
    """APPEND: strings concatenate, lists extend; anything else behaves like SET."""
    if type(value) is str:
        if type(current) is Text:
            current.append(value)
            return current
        if type(current) is str:
            text = Text(current)
            text.append(value)
            return text
    elif type(value) is list and type(current) is list:
        current.extend(value)
        return current
    return value


def search_result(raw: Any) -> SearchResult | None:
    if type(raw) is not dict:
        return None
    cite_index = raw.get("cite_index")
    return SearchResult(
        url=raw.get("url"),
        title=raw.get("title"),
        snippet=raw.get("snippet"),
        site_name=raw.get("site_name"),
        cite_index=cite_index if type(cite_index) is int else None,
    )


def search_results(raws: list[Any]) -> list[SearchResult]:
    return [r for r in map(search_result, raws) if r is not None]


def reference_source(fragment: Any, marker: int) -> tuple[str | None, str | None]:
    """URL and title behind ``[reference:N]``.

    A page fragment (TOOL_OPEN, READ_LINK) has one ``result``. A search fragment
    (TOOL_SEARCH, TOOL_FIND, SEARCH) is a result list and the reference does not say
    which result: take the one whose ``cite_index`` equals N, else the first (the
    search's top hit). Other non-text fragments are read by the same two shapes.
    """
    if type(fragment) is not dict or fragment.get("type") in TEXT_FRAGMENTS:
        return None, None
    result: Any = fragment.get("result")
    if type(result) is not dict:
        results = fragment.get("results")
        if type(results) is list and results:
            result = next((r for r in results if type(r) is dict and r.get("cite_index") == marker), results[0])
    if type(result) is not dict:
        return None, None
    return result.get("url"), result.get("title")


def error_frame(obj: dict[str, Any]) -> tuple[str, str | None, bool, int | None] | None:
    """``(message, finish_reason, clear_response, code)`` when a data frame is an error object.

    The ``hint``/``toast`` payload shape (``type: error``) is the documented one (§7.9,
    §16.4); the framing of the busy error is unpublished, so an ``error`` member or a
    non-zero ``code`` with a message (``{"code":40301,"msg":"INVALID_POW_RESPONSE"}``)
    are accepted too.
    """
    if obj.get("type") == "error":
        message = obj.get("content") or obj.get("message") or obj.get("msg")
    elif "error" in obj and type(obj["error"]) in (dict, str):
        err = obj["error"]
        message = err if type(err) is str else err.get("message") or err.get("msg") or err.get("content")
    elif type(obj.get("code")) is int and obj["code"] != 0 and (obj.get("msg") or obj.get("message")):
        message = obj.get("msg") or obj.get("message")
    else:
        return None
    finish_reason = obj.get("finish_reason")
    code = obj.get("code")
    return (
        str(message or "upstream error"),
        finish_reason if type(finish_reason) is str else None,
        bool(obj.get("clear_response")),
        code if type(code) is int else None,
    )


def json_object(payload: str) -> dict[str, Any] | None:
    try:
        obj = _loads(payload)
    except ValueError:
        return None
    return obj if type(obj) is dict else None


# --------------------------------------------------------------------------- layer 2


class StreamParser:
    """Bytes of a completion body in, typed events out (see ds2a.deepseek.events).

    ``keep_text=True`` keeps the whole text of every fragment in the state (tests and
    debugging read it with ``snapshot()``); by default relayed text is forgotten.
    ``max_block`` and ``max_retained`` bound memory (see the module docstring).
    """

    def __init__(
        self,
        resume_from: StreamParser | None = None,
        *,
        keep_text: bool = False,
        max_block: int = MAX_BLOCK_BYTES,
        max_retained: int = MAX_RETAINED,
    ) -> None:
        if resume_from is not None:
            keep_text, max_block, max_retained = resume_from.keep_text, resume_from._sse.max_block, resume_from.max_retained
        self._sse = SSEDecoder(max_block)
        self.keep_text = keep_text
        self.max_retained = max_retained
        self.retained = 0  # estimate of what the state holds besides forgotten text
        self.aborted = False  # the parser gave up on a stream the upstream may still be writing
        self.state: dict[str, Any] = {}
        self.request_message_id: int | None = None
        self.response_message_id: int | None = None
        self.model_type: str | None = None
        self.finished = False
        self.terminal: Event | None = None  # the Finish or StreamError that ended the stream
        self.token_usage: int | None = None
        self.title: str | None = None
        self.ignored_ops = 0  # patches that addressed nothing; a diagnostic, not an error
        # Sticky path/op of the top-level frames (§7.4 rule 1).
        self._path = ""
        self._parts: tuple[str, ...] = ()
        self._op = "SET"
        # Per text source (("f", fragment id) or ("g2", key)): characters emitted.
        self._emitted: dict[tuple[str, Any], int] = {}
        # Per RESPONSE fragment: references already turned into Citation events.
        self._cited: dict[tuple[str, Any], int] = {}
        # Per tool fragment / G2 list: search results already reported.
        self._reported: dict[tuple[str, Any], int] = {}
        self._g2_cited: set[int] = set()
        self._g1_tokens = 0
        self._g1_results: dict[str, str | None] = {}  # url -> title, for G1 search_index
        self._ready_seen = False
        self._written_status: str | None = None  # last string written to response/status
        # (text, event class, emitted key) of the sticky APPEND target while it is
        # a plain text continuation; its emitted count is written back lazily.
        self._fast: tuple[Text, type[ReasoningDelta] | type[AnswerDelta], tuple[str, Any]] | None = None
        if resume_from is not None:
            self._resume(resume_from)

    # ------------------------------------------------------------------ public

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        sse = self._sse
        for name, payload in sse.feed(data):
            if name == "message":
                self._on_message(payload, out)
            else:
                self._on_named(name, payload, out)
        if sse.overflowed and not self.finished:
            self._abort(f"the upstream sent an SSE block larger than {sse.max_block} bytes", out)
        return out

    def close(self) -> list[Event]:
        """End of body: a stream that never reached a terminal condition is an error."""
        out: list[Event] = []
        for name, payload in self._sse.close():
            if name == "message":
                self._on_message(payload, out)
            else:
                self._on_named(name, payload, out)
        if self._sse.overflowed and not self.finished:
            self._abort(f"the upstream sent an SSE block larger than {self._sse.max_block} bytes", out)
        if not self.finished:
            self._terminate(StreamError(ErrorKind.PROTOCOL, "upstream body ended without a final status"), out)
        self._drop_fast()
        return out

    def snapshot(self) -> dict[str, Any]:
        """The response state as plain JSON (tests, debugging)."""
        return plain(self.state)

    # ------------------------------------------------------------------ frames

    def _on_message(self, payload: str, out: list[Event]) -> None:
        if self.finished:
            return
        fast = self._fast
        if fast is not None and payload.startswith('{"v":"') and payload.endswith('"}'):
            text = payload[6:-2]
            # Without quotes or backslashes the JSON string is its own value.
            if '"' not in text and "\\" not in text:
                if text:
                    buffer = fast[0]
                    if self.keep_text:
                        buffer.append(text)
                    else:
                        buffer.length += len(text)  # relayed at once: only its length is kept
                    out.append(fast[1](text))
                return
        if payload == "[DONE]":
            self._terminate(Finish("stop"), out)
            return
        try:
            obj = _loads(payload)
        except ValueError:
            self._abort(f"invalid JSON in stream frame: {payload[:200]!r}", out)
            return
        if type(obj) is not dict:
            return
        if "v" in obj or "p" in obj or "o" in obj:
            value = obj.get("v")
            if fast is not None and len(obj) == 1 and type(value) is str:
                if value:
                    buffer = fast[0]
                    if self.keep_text:
                        buffer.append(value)
                    else:
                        buffer.length += len(value)
                    out.append(fast[1](value))
                return
            self._on_patch(obj, out)
        elif "choices" in obj:
            self._on_g1(obj, out)
        else:
            error = error_frame(obj)
            if error is not None:
                self._fail(*error, out)

    def _on_named(self, name: str, payload: str, out: list[Event]) -> None:
        if name == "title":
            obj = json_object(payload)
            if obj is not None and type(obj.get("content")) is str:
                self.title = obj["content"]
                out.append(Title(obj["content"]))
            return
        if self.finished:
            return
        if name == "ready":
            self._on_ready(json_object(payload) or {}, out)
        elif name in ERROR_EVENTS:
            obj = json_object(payload)
            if obj is None:
                # Unreadable: an error event is still an error; a toast may be mere chrome.
                error = (payload or name, None, False, None) if name != "toast" else None
            else:
                error = error_frame(obj)
            if error is not None:
                self._fail(*error, out)
        elif name == "close":
            self._terminate(StreamError(ErrorKind.UNAVAILABLE, "upstream closed the stream without a final status"), out)
        # update_session, finish and unknown events are metadata (§7.2)

    def _on_ready(self, obj: dict[str, Any], out: list[Event]) -> None:
        request_id, response_id = obj.get("request_message_id"), obj.get("response_message_id")
        model_type = obj.get("model_type")
        if type(request_id) is int:
            self.request_message_id = request_id
        if type(response_id) is int:
            self.response_message_id = response_id
        if type(model_type) is str:
            self.model_type = model_type
        self._ready_seen = True
        out.append(Ready(self.request_message_id, self.response_message_id, self.model_type))

    # ------------------------------------------------------------------ G3 / G2 patches

    def _on_patch(self, obj: dict[str, Any], out: list[Event]) -> None:
        self._drop_fast()
        if "p" in obj:
            path = obj["p"]
            if type(path) is not str:
                self.ignored_ops += 1
                return
            self._path = path
            self._parts = split_path(path)
        if "o" in obj:
            self._op = obj["o"]
        self._apply(self._parts, self._op, obj.get("v"), out)
        self._check_status(out)
        if self.retained > self.max_retained and not self.finished:
            self._abort(f"the upstream answer's state outgrew {self.max_retained} characters", out)
        if not self.finished and self._op == "APPEND":
            self._fast = self._fast_target()

    def _apply(self, parts: tuple[str, ...], op: Any, value: Any, out: list[Event]) -> None:
        if op == "BATCH":
            self._apply_batch(parts, value, out)
            return
        if op != "SET" and op != "APPEND":
            self.ignored_ops += 1
            return
        if not parts:
            self._set_root(op, value)
            self._sync(out, ALL)
        else:
            self._set_leaf(parts, op, value)
            self._sync(out, self._touched(parts))

    def _touched(self, parts: tuple[str, ...]) -> int:
        """Which fragment an op on ``parts`` may have changed: its index, NONE, or ALL.

        Most ops address one fragment (its text, results, status, references): only that
        one is looked at again, not every fragment of a long search answer."""
        if len(parts) >= 2 and parts[0] == "response":
            if parts[1] != "fragments":
                return NONE  # status, usage, G2 paths: no fragment changed
            response = self.state.get("response")
            if len(parts) >= 3 and type(response) is dict:
                fragments = response.get("fragments")
                if type(fragments) is list:
                    index = list_index(parts[2], len(fragments))
                    return NONE if index is None else index
        return ALL  # the response, its fragment list, or a path nobody knows

    def _apply_batch(self, base: tuple[str, ...], items: Any, out: list[Event]) -> None:
        """Sub-frames with paths relative to ``base`` and their own sticky p/o (§7.4 rule 4)."""
        if type(items) is not list:
            self.ignored_ops += 1
            return
        parts, op = base, "SET"
        for item in items:
            if type(item) is not dict:
                self.ignored_ops += 1
                continue
            if "p" in item:
                path = item["p"]
                parts = base + split_path(path) if type(path) is str else base
            if "o" in item:
                op = item["o"]
            self._apply(parts, op, item.get("v"), out)

    def _set_root(self, op: str, value: Any) -> None:
        if op != "SET" or type(value) is not dict:
            self.ignored_ops += 1
            return
        self.state = value
        self.retained = retained_size(value)
        response = value.get("response")
        if type(response) is dict:
            # The snapshot names the ids too; useful when no ready event came.
            if self.response_message_id is None and type(response.get("message_id")) is int:
                self.response_message_id = response["message_id"]
            if self.request_message_id is None and type(response.get("parent_id")) is int:
                self.request_message_id = response["parent_id"]

    def _set_leaf(self, parts: tuple[str, ...], op: str, value: Any) -> None:
        parent = self._container_of(parts)
        key = parts[-1]
        if key == "status" and type(value) is str and parent is self.state.get("response"):
            # Quoted G2 streams end with {"p":"response/status","v":"FINISHED"} right
            # after text APPENDs; the sticky op makes that "WIPFINISHED" in the state.
            # The state stays exact, but the terminal is read from the written value.
            self._written_status = value
        grown = retained_size(value)
        if type(parent) is dict:
            if key not in parent:
                grown += len(key)
            elif op == "SET":
                grown -= retained_size(parent[key])
            parent[key] = value if op == "SET" else appended(parent.get(key), value)
        elif type(parent) is list:
            index = list_index(key, len(parent), allow_end=True)
            if index is None:
                self.ignored_ops += 1
                return
            elif index == len(parent):
                parent.append(value)
            elif op == "SET":
                grown -= retained_size(parent[index])
                parent[index] = value
            else:
                parent[index] = appended(parent[index], value)
        else:
            self.ignored_ops += 1
            return
        self.retained += grown

    def _container_of(self, parts: tuple[str, ...]) -> Any:
        """The object holding the last segment; missing objects on the way are created."""
        node: Any = self.state
        for i in range(len(parts) - 1):
            part = parts[i]
            if type(node) is dict:
                nxt = node.get(part)
                if nxt is None:
                    nxt = node[part] = {}
                node = nxt
            else:
                node = child(node, part)
                if node is None:
                    return None
        return node

    def _fast_target(self) -> tuple[Text, type[ReasoningDelta] | type[AnswerDelta], tuple[str, Any]] | None:
        """The text the sticky APPEND path addresses, when plain ``{"v": str}`` frames
        may bypass the state machine: a THINK/RESPONSE content or a G2 text, fully emitted."""
        parts = self._parts
        if len(parts) < 2:
            return None
        key = parts[-1]
        owner: Any = self.state
        for i in range(len(parts) - 1):
            owner = child(owner, parts[i])
        if type(owner) is not dict:
            return None
        response = self.state.get("response")
        cls: type[ReasoningDelta] | type[AnswerDelta] | None
        if owner is response:
            cls = ReasoningDelta if key == "thinking_content" else AnswerDelta if key == "content" else None
            source: tuple[str, Any] = ("g2", key)
        else:
            cls = TEXT_FRAGMENTS.get(owner.get("type")) if key == "content" else None  # type: ignore[arg-type]
            fragment_id = owner.get("id")
            if fragment_id is None:
                return None
            source = ("f", fragment_id)
        if cls is None:
            return None
        text = owner.get(key)
        if type(text) is str:
            text = owner[key] = Text(text)
        if type(text) is not Text or self._emitted.get(source, 0) != text.length:
            return None
        return text, cls, source

    def _drop_fast(self) -> None:
        fast = self._fast
        if fast is not None:
            self._emitted[fast[2]] = fast[0].length
            self._fast = None

    # ------------------------------------------------------------------ deriving events

    def _sync(self, out: list[Event], which: int) -> None:
        """Emit what changed in the response since the last call, in document order;
        ``which``: the fragment that may have changed (or ALL, or NONE)."""
        response = self.state.get("response")
        if type(response) is not dict:
            return
        fragments = response.get("fragments")
        if type(fragments) is list and which != NONE:
            if which == ALL:
                for position, fragment in enumerate(fragments):
                    self._sync_fragment(position, fragment, fragments, out)
            else:
                self._sync_fragment(which, fragments[which], fragments, out)
        g2_results = response.get("search_results")
        if type(g2_results) is list:
            self._sync_g2_results(g2_results, out)
        for key, cls in G2_TEXTS:
            if key in response:
                self._sync_text(("g2", key), response, key, cls, out)
        usage = response.get("accumulated_token_usage")
        if type(usage) is int and usage != self.token_usage:
            self.token_usage = usage
            if usage:
                out.append(Usage(usage))

    def _sync_fragment(self, position: int, fragment: Any, fragments: list[Any], out: list[Event]) -> None:
        if type(fragment) is not dict:
            return
        kind = fragment.get("type")
        fragment_id = fragment.get("id")
        source = ("f", fragment_id) if fragment_id is not None else ("i", position)
        cls = TEXT_FRAGMENTS.get(kind)  # type: ignore[arg-type]
        if cls is not None:
            self._sync_text(source, fragment, "content", cls, out)
            references = fragment.get("references")
            if cls is AnswerDelta and type(references) is list:
                self._sync_references(source, references, fragments, out)
        # Tool fragments (TOOL_SEARCH, TOOL_OPEN and the 2026-09 types TOOL_FIND, SEARCH,
        # READ_LINK, FILE) are never text; their results feed citations.
        elif kind in SEARCH_FRAGMENTS:
            results = fragment.get("results")
            if type(results) is list:
                self._report_results(source, results, out)
        elif kind in OPEN_FRAGMENTS:
            result = fragment.get("result")
            if type(result) is dict:
                self._report_results(source, [result], out)
        elif kind not in PLAIN_FRAGMENTS:
            self._sync_unknown(source, fragment, out)

    def _sync_unknown(self, source: tuple[str, Any], fragment: dict[str, Any], out: list[Event]) -> None:
        """A fragment type nobody has described (FILE, or newer): its url-bearing results
        count like a search's, its text never counts."""
        results = fragment.get("results")
        if type(results) is list and any(type(r) is dict and r.get("url") for r in results):
            self._report_results(source, results, out)
            return
        result = fragment.get("result")
        if type(result) is dict and result.get("url"):
            self._report_results(source, [result], out)

    def _sync_text(
        self, source: tuple[str, Any], owner: dict[str, Any], key: str,
        cls: type[ReasoningDelta] | type[AnswerDelta], out: list[Event],
    ) -> None:
        content = owner.get(key)
        length = text_length(content)
        if length is None:
            return
        done = self._emitted.get(source, 0)
        # A shorter text (a SET that rewrote it) cannot be unsent; resume at the old length.
        if length > done:
            self._emitted[source] = length
            out.append(cls(text_from(content, done)))
        if not self.keep_text:
            # Relayed (or never to be relayed): keep the length, forget the characters.
            if type(content) is Text:
                if content.held:
                    self.retained -= content.release()
            elif length:
                self.retained -= length
                owner[key] = Text.relayed(length)

    def _sync_references(self, source: tuple[str, Any], references: list[Any], fragments: list[Any], out: list[Event]) -> None:
        done = self._cited.get(source, 0)
        if len(references) <= done:
            return
        self._cited[source] = len(references)
        by_id = {f.get("id"): f for f in fragments if type(f) is dict}
        for marker in range(done, len(references)):
            ref = references[marker]
            target = by_id.get(ref.get("id")) if type(ref) is dict else None
            url, title = reference_source(target, marker)
            out.append(Citation("reference", marker, url, title))

    def _report_results(self, source: tuple[str, Any], results: list[Any], out: list[Event]) -> None:
        done = self._reported.get(source, 0)
        if len(results) > done:
            self._reported[source] = len(results)
            found = search_results(results[done:])
            if found:
                out.append(SearchResults(found))

    def _sync_g2_results(self, results: list[Any], out: list[Event]) -> None:
        """G2 search results: report new ones, and cite each ``cite_index`` once it is set."""
        self._report_results(("g2", "search_results"), results, out)
        for raw in results:
            if type(raw) is dict:
                self._cite_g2(raw.get("cite_index"), raw.get("url"), raw.get("title"), out)

    def _cite_g2(self, cite_index: Any, url: Any, title: Any, out: list[Event]) -> None:
        if type(cite_index) is int and cite_index not in self._g2_cited:
            self._g2_cited.add(cite_index)
            out.append(Citation("citation", cite_index, url, title))

    # ------------------------------------------------------------------ terminals

    def _check_status(self, out: list[Event]) -> None:
        response = self.state.get("response")
        if type(response) is not dict:
            return
        status = response.get("status")
        if type(status) is not str or (status not in FINISH_STATUSES and status not in ERROR_STATUSES):
            status = self._written_status
            if status is None:
                # An error status ends the answer already as the BATCH's quasi_status.
                status = response.get("quasi_status")
                if type(status) is not str or status not in ERROR_STATUSES:
                    return
        reason = FINISH_STATUSES.get(status)
        if reason is not None:
            replacement = template_text(response) if reason == "content_filter" else None
            resumable = reason != "incomplete" or not ends_with_tip(response)
            self._terminate(Finish(reason, replacement, resumable), out)
        elif status in ERROR_STATUSES:
            kind, message, finish_reason = ERROR_STATUSES[status]
            self._terminate(StreamError(kind, message, finish_reason), out)

    def _fail(
        self, message: str, finish_reason: str | None, clear_response: bool, code: int | None, out: list[Event]
    ) -> None:
        kind = classify_stream_error(finish_reason, message, code)
        self._terminate(StreamError(kind, message, finish_reason, clear_response), out)

    def _abort(self, message: str, out: list[Event]) -> None:
        """Give up on a stream the upstream may still be writing (the caller must stop it)."""
        self.aborted = True
        self._terminate(StreamError(ErrorKind.PROTOCOL, message), out)

    def _terminate(self, event: Event, out: list[Event]) -> None:
        self._drop_fast()
        self.finished = True
        self.terminal = event
        out.append(event)

    # ------------------------------------------------------------------ G1

    def _on_g1(self, obj: dict[str, Any], out: list[Event]) -> None:
        if not self._ready_seen and type(obj.get("message_id")) is int:
            # G1 has no ready event; its frames name the turn instead (§7.3).
            parent_id = obj.get("parent_id")
            self._on_ready({"request_message_id": parent_id, "response_message_id": obj["message_id"]}, out)
        tokens = obj.get("chunk_token_usage")
        if type(tokens) is int:
            self._g1_tokens += tokens
        choices = obj.get("choices")
        if type(choices) is not list or not choices or type(choices[0]) is not dict:
            return
        choice = choices[0]
        delta = choice.get("delta")
        if type(delta) is dict:
            self._on_g1_delta(delta, out)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._finish_g1(finish_reason, out)

    def _on_g1_delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        kind = delta.get("type")
        content = delta.get("content")
        if kind == "search_result":
            raws = delta.get("search_results")
            if type(raws) is list:
                found = search_results(raws)
                for result in found:
                    if result.url:
                        self._g1_results[result.url] = result.title
                        self.retained += len(result.url) + len(result.title or "")
                if found:
                    out.append(SearchResults(found))
                for result in found:
                    self._cite_g2(result.cite_index, result.url, result.title, out)
        elif kind == "search_index":
            indexes = delta.get("search_indexes")
            for item in indexes if type(indexes) is list else ():
                if type(item) is dict:
                    url = item.get("url")
                    self._cite_g2(item.get("cite_index"), url, self._g1_results.get(url) if type(url) is str else None, out)
        elif type(content) is str and content:
            if kind == "thinking":
                out.append(ReasoningDelta(content))
            elif kind in ("text", None):
                out.append(AnswerDelta(content))

    def _finish_g1(self, finish_reason: Any, out: list[Event]) -> None:
        if self._g1_tokens:
            self.token_usage = self._g1_tokens
            out.append(Usage(self._g1_tokens))
        if finish_reason == "stop":
            self._terminate(Finish("stop"), out)
        elif finish_reason == "content_filter":
            self._terminate(Finish("content_filter"), out)
        elif finish_reason == "backend_busy":
            # The server (not this account) is busy: worth retrying elsewhere.
            self._terminate(StreamError(ErrorKind.UNAVAILABLE, "upstream backend busy", "backend_busy"), out)
        else:
            reason = str(finish_reason)
            self._terminate(StreamError(classify_stream_error(reason, None), f"upstream finish_reason {reason}", reason), out)

    # ------------------------------------------------------------------ continuation

    def _resume(self, previous: StreamParser) -> None:
        """Carry over what the client has already been sent (§8), so the
        continuation's opening snapshot only yields text beyond it."""
        previous._drop_fast()
        self._emitted = dict(previous._emitted)
        self._cited = dict(previous._cited)
        self._reported = dict(previous._reported)
        self._g2_cited = set(previous._g2_cited)
        self.token_usage = previous.token_usage
        self.request_message_id = previous.request_message_id
        self.response_message_id = previous.response_message_id
        self.model_type = previous.model_type
        self.title = previous.title


def ends_with_tip(response: dict[str, Any]) -> bool:
    """A TIP fragment closes the answer: how a user's stop or a regenerate ends one
    INCOMPLETE (§16.4); a cut by the server ends without it (the 2026-04-05 capture)."""
    fragments = response.get("fragments")
    return type(fragments) is list and bool(fragments) and type(fragments[-1]) is dict and fragments[-1].get("type") == "TIP"


def template_text(response: dict[str, Any]) -> str | None:
    fragments = response.get("fragments")
    if type(fragments) is not list:
        return None
    texts = [
        str(f.get("content"))
        for f in fragments
        if type(f) is dict and f.get("type") == "TEMPLATE_RESPONSE" and f.get("content") is not None
    ]
    return "".join(texts) if texts else None


__all__ = ["SSEDecoder", "StreamParser", "Text", "split_path"]
