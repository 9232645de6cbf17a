"""Streaming recognition of tool calls in answer text, and their removal from reasoning (sans-I/O).

``ToolCallRecognizer.feed(text)`` returns what may be shown now: plain text at once,
except the shortest tail that could still be the start of a call marker (at most
``markup.MAX_MARKER`` characters), and a ``ToolCall`` as soon as its closing marker
arrives. The same input gives the same output however it is split.

States: *text* (markers are looked for), *fence* (inside a Markdown code fence opened
by a line of three or more backticks or tildes: everything is text), *call* (collecting
a call body until its closing marker), *after* (calls were made: whitespace and further
calls only), *done* (everything is dropped). ``calls_done`` turns true when no further
call can come: after the first call when parallel calls are off, when non-whitespace
text follows the calls, or when the model starts writing a tool *result* (it is
inventing one); the relay may stop reading the upstream then.

A body whose closing marker never comes is read at ``flush``, and a new opening marker
ends the body before it. Calls that are refused (unknown tool, arguments that cannot
be repaired or do not match the schema, a tool the tool choice excludes) are not
emitted; their reasons are in ``rejected``.

``ReasoningFilter`` runs the same machine over thinking text and removes call markup
and bodies (a call written while thinking is never executed and never shown).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ds2a.relay.conversation import Tool, ToolCall, ToolChoice
from ds2a.relay.tools import markup
from ds2a.relay.tools.calls import ToolBook, new_call_id

TEXT, FENCE, CALL, AFTER, DONE = range(5)

_TEXT_STOPS = re.compile("[<\uff1c\n`~]")
_FENCE_STOPS = re.compile("[\n`~]")
_OPENER = re.compile("[<\uff1c]")
_SPACE = " \t\r\n\u3000\u00a0"
_HEAD_LIMIT = 64  # characters of a line looked at to tell a fence line

Output = list[str | ToolCall]


class _Scanner:
    """Text, fences and call markers; subclasses decide what a finished call body becomes."""

    def __init__(self) -> None:
        self.mode = TEXT
        self._held = ""  # the unresolved tail: a possible marker start
        self._head: str | None = ""  # the current line so far, while it may still be a fence line
        self._fence = ""  # the opening fence's run ("```", "~~~~") while in a fence
        self._body: list[str] = []

    # --- the public surface -----------------------------------------------------------

    def feed(self, text: str) -> Output:
        mode = self.mode
        if mode < CALL and not self._held:
            # The fast paths: nothing in this piece can start a marker, open or close a fence.
            if self._head is None and "\n" not in text:
                # Mid-line, where fence characters mean nothing; only an opener in text mode does.
                if mode == FENCE or ("<" not in text and "\uff1c" not in text):
                    return [text] if text else []
            elif "<" not in text and "\uff1c" not in text and "`" not in text and "~" not in text:
                # A fence may still close at a newline here, but no marker follows in this piece.
                self._lines(text)
                return [text] if text else []
        if mode == DONE:
            return []
        return self._scan(self._held + text, final=False)

    def flush(self) -> Output:
        held, self._held = self._held, ""
        out = self._scan(held, final=True) if held else []
        if self.mode == CALL:
            body = "".join(self._body)
            self._body = []
            self.mode = AFTER
            self._finish(body, out)
            self._after_call()
        return out

    # --- line heads: fence detection ---------------------------------------------------

    def _lines(self, text: str) -> None:
        """Track fence lines in ``text``, which holds no marker candidates."""
        start = 0
        while True:
            nl = text.find("\n", start)
            if nl < 0:
                if self._head is not None and start < len(text):
                    self._push_head(text[start : start + _HEAD_LIMIT])
                return
            if self._head is not None:
                self._push_head(text[start : min(nl, start + _HEAD_LIMIT)], line_end=True)
            self._head = ""
            start = nl + 1

    def _push_head(self, piece: str, line_end: bool = False) -> None:
        if not self._head and piece and piece[0] not in " `~":
            self._head = None  # the common case: a line that starts with a word
            return
        head = (self._head or "") + piece
        rest = head.lstrip(" ")
        if len(head) - len(rest) > 3:
            self._head = None
            return
        if not rest:
            self._head = None if line_end else head
            return
        c = rest[0]
        if c != "`" and c != "~":
            self._head = None
            return
        run = len(rest) - len(rest.lstrip(c))
        if run == len(rest) and not line_end and len(head) < _HEAD_LIMIT:
            self._head = head  # the run may go on in the next piece
            return
        self._head = None
        if run >= 3:
            self._fence_line(c * run)

    def _fence_line(self, run: str) -> None:
        if self.mode == TEXT:
            self.mode = FENCE
            self._fence = run
        elif self.mode == FENCE and run[0] == self._fence[0] and len(run) >= len(self._fence):
            self.mode = TEXT
            self._fence = ""

    # --- the scanner --------------------------------------------------------------------

    def _scan(self, buf: str, final: bool) -> Output:
        out: Output = []
        self._held = ""
        p = 0
        n = len(buf)
        while p < n:
            mode = self.mode
            if mode == TEXT or mode == FENCE:
                p = self._text(buf, p, final, out)
            elif mode == CALL:
                p = self._call(buf, p, final, out)
            elif mode == AFTER:
                p = self._after(buf, p, final)
            else:
                break
        return out

    def _emit(self, out: Output, text: str) -> None:
        if not text:
            return
        if out and type(out[-1]) is str:
            out[-1] += text  # type: ignore[operator]
        else:
            out.append(text)

    def _text(self, buf: str, p: int, final: bool, out: Output) -> int:
        """Text from ``p`` up to a marker (or the end); returns where to go on."""
        start = p
        n = len(buf)
        while p < n:
            stops = _TEXT_STOPS if self.mode == TEXT else _FENCE_STOPS
            found = stops.search(buf, p)
            q = found.start() if found else n
            if self._head is not None and q > p:
                self._push_head(buf[p : min(q, p + _HEAD_LIMIT)])
            if q >= n:
                p = n
                break
            c = buf[q]
            if c == "\n":
                if self._head is not None:
                    self._push_head("", line_end=True)
                self._head = ""
                p = q + 1
                continue
            if c == "`" or c == "~":
                if self._head is not None:
                    r = q
                    while r < n and buf[r] == c:
                        r += 1
                    self._push_head(buf[q:r])
                    p = r
                else:
                    p = q + 1
                continue
            if self._head is not None:
                self._push_head(c)
            if self.mode == FENCE:  # an opener inside a fence (perhaps one this very line opened)
                p = q + 1
                continue
            status, end, kind = markup.scan_marker(buf, q)
            if status == markup.NONE or (status == markup.PARTIAL and final):
                p = q + 1
                continue
            self._emit(out, buf[start:q])
            if status == markup.PARTIAL:
                self._held = buf[q:]
                return n
            return self._marker(kind, end, out)
        self._emit(out, buf[start:p])
        return p

    def _marker(self, kind: int, end: int, out: Output) -> int:
        """A marker met in text or after calls; returns where to go on."""
        if kind == markup.CALL_BEGIN:
            self.mode = CALL
            self._body = []
        elif kind == markup.RESULT:
            self._result_marker()
        return end  # wrappers, stray closers and separators are dropped

    def _call(self, buf: str, p: int, final: bool, out: Output) -> int:
        n = len(buf)
        start = p
        while True:
            found = _OPENER.search(buf, p)
            if found is None:
                self._body.append(buf[start:])
                return n
            q = found.start()
            status, end, kind = markup.scan_marker(buf, q)
            if status == markup.PARTIAL and not final:
                self._body.append(buf[start:q])
                self._held = buf[q:]
                return n
            if status != markup.MATCH or kind == markup.SEP:
                p = q + 1
                continue
            self._body.append(buf[start:q])
            body = "".join(self._body)
            self._body = []
            self.mode = AFTER
            self._finish(body, out)
            self._after_call()
            if self.mode == DONE:
                return n
            if kind == markup.CALL_BEGIN:
                self.mode = CALL  # the closing marker was forgotten: a new call starts
            elif kind == markup.RESULT:
                self._result_marker()
            return end

    def _after(self, buf: str, p: int, final: bool) -> int:
        n = len(buf)
        while p < n and buf[p] in _SPACE:
            p += 1
        if p >= n:
            return n
        if buf[p] in markup.OPENERS:
            status, end, kind = markup.scan_marker(buf, p)
            if status == markup.PARTIAL and not final:
                self._held = buf[p:]
                return n
            if status == markup.MATCH:
                return self._marker(kind, end, [])
        self._text_after_calls()
        return n

    # --- what subclasses decide ---------------------------------------------------------

    def _finish(self, body: str, out: Output) -> None:
        raise NotImplementedError

    def _after_call(self) -> None:
        """A call just closed (mode is AFTER)."""

    def _result_marker(self) -> None:
        self.mode = DONE

    def _text_after_calls(self) -> None:
        self.mode = DONE


class ToolCallRecognizer(_Scanner):
    """Answer text in, text and validated ``ToolCall``s out (see the module docstring)."""

    def __init__(self, tools: Iterable[Tool], *, parallel: bool = True, choice: ToolChoice | None = None,
                 new_id: Callable[[], str] = new_call_id) -> None:
        super().__init__()
        self.book = ToolBook(tools, choice, new_id)
        self.parallel = parallel
        self.rejected: list[str] = []
        self.calls: list[ToolCall] = []
        self.blocks = 0  # call bodies seen, accepted or not

    @property
    def calls_done(self) -> bool:
        return self.mode == DONE

    def _finish(self, body: str, out: Output) -> None:
        self.blocks += 1
        for found in self.book.calls(body):
            if type(found) is str:
                self.rejected.append(found)
            elif self.parallel or not self.calls:
                self.calls.append(found)  # type: ignore[arg-type]
                out.append(found)

    def _after_call(self) -> None:
        if not self.parallel and self.calls:
            self.mode = DONE


class ReasoningFilter(_Scanner):
    """Thinking text in, the same text without call markup out; it never yields a call."""

    def _finish(self, body: str, out: Output) -> None:
        self.mode = TEXT  # drop the body, go on with the thoughts

    def _marker(self, kind: int, end: int, out: Output) -> int:
        if kind == markup.CALL_BEGIN:
            self.mode = CALL
            self._body = []
        return end  # every other marker is just removed

    def _result_marker(self) -> None:
        pass  # an invented result in the thoughts: only its markers go

    # feed() is inherited: _finish never adds a call, so every piece out is text.

    def flush(self) -> Output:
        held, self._held = self._held, ""
        out = self._scan(held, final=True) if held else []
        self._body = []  # an unclosed call in the thoughts: dropped
        if self.mode == CALL:
            self.mode = TEXT
        return out


def strip_calls(reasoning: str) -> str:
    """``reasoning`` without any tool-call markup or call bodies."""
    scanner = ReasoningFilter()
    return "".join(scanner.feed(reasoning) + scanner.flush())
