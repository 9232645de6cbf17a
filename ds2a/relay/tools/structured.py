"""JSON answers (``response_format`` json_object / json_schema): fences off, checked, repaired.

``parse_json_answer(text, schema=…, require_object=…)`` finds the JSON in a whole answer
(inside a code fence if there is one, else from the first ``{``/``[``), repairs it if it
must (``ds2a.relay.tools.repair``), checks it against the schema, and returns the value,
or raises ``JsonAnswerError`` whose message names the first violation; the relay puts that
message in its corrective instruction. ``json_answer_text`` gives the text to send: the
answer's own JSON when it was valid as written, else the repaired value re-serialised.

``JsonFenceStripper`` does the streaming half: when an answer starts with a code fence
(`````json``), the fence lines are removed as the text streams; otherwise text passes
through untouched. It holds back only trailing whitespace and backticks, which could be
the closing fence.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ds2a.relay.tools.calls import canonical
from ds2a.relay.tools.repair import loads_lenient
from ds2a.relay.tools.schema import Checker

_FENCED = re.compile(r"(`{3,}|~{3,})[^\n`]*\n(.*?)(?:\n[ \t]*\1|\Z)", re.S)


class JsonAnswerError(ValueError):
    """The answer is not the JSON that was asked for; ``str()`` says why, for the model to read."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _candidate(text: str) -> str:
    fenced = _FENCED.search(text)
    if fenced:
        return fenced.group(2).strip()
    stripped = text.strip()
    starts = [i for i in (stripped.find("{"), stripped.find("[")) if i >= 0]
    return stripped[min(starts):] if starts else stripped


def _read(text: str) -> tuple[Any, bool]:
    """The value and whether it was valid JSON as written."""
    candidate = _candidate(text)
    if not candidate:
        raise JsonAnswerError("the answer is empty; a JSON value was expected")
    try:
        return json.loads(candidate, parse_constant=_reject_constant), True
    except (ValueError, RecursionError):
        pass
    try:
        value, end = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(candidate)
        return value, False  # valid JSON followed by other text
    except (ValueError, RecursionError):
        pass
    try:
        return loads_lenient(candidate), False
    except ValueError as exc:
        raise JsonAnswerError(f"the answer is not valid JSON ({exc})") from None


def _check(value: Any, schema: dict[str, Any] | None, require_object: bool) -> Any:
    if require_object and not isinstance(value, dict):
        raise JsonAnswerError("the answer must be a JSON object")
    if schema:
        fitted, problem = Checker(schema).fit(value)
        if problem is not None:
            raise JsonAnswerError(f"the answer does not match the JSON Schema: {problem}")
        return fitted
    return value


def parse_json_answer(text: str, schema: dict[str, Any] | None = None, *, require_object: bool = False) -> Any:
    """The JSON value an answer holds, checked against ``schema``; ``JsonAnswerError`` if it fails."""
    value, _ = _read(text)
    return _check(value, schema, require_object)


def json_answer_text(text: str, schema: dict[str, Any] | None = None, *, require_object: bool = False) -> str:
    """What to send as the answer: the JSON as written when it was valid, else the repaired value."""
    value, clean = _read(text)
    fitted = _check(value, schema, require_object)
    if clean and fitted is value:
        return _candidate(text)
    return canonical(fitted)


_START, _PLAIN, _FENCE, _END = range(4)
_HOLD = " \t\r\n`~"
_CLOSING = re.compile(r"\n[ \t]*(?:`{3,}|~{3,})")


class JsonFenceStripper:
    """Streaming: removes a code fence around an answer that starts with one (see the module docstring)."""

    def __init__(self) -> None:
        self._state = _START
        self._held = ""

    def feed(self, text: str) -> str:
        state = self._state
        if state == _PLAIN:
            return text
        if state == _END:
            return ""
        buf = self._held + text
        self._held = ""
        if state == _START:
            return self._start(buf)
        return self._body(buf)

    def flush(self) -> str:
        held, self._held = self._held, ""
        if self._state == _START:
            self._state = _PLAIN
            return held.strip()
        if self._state == _FENCE:
            self._state = _END
            return held.rstrip(_HOLD)
        return ""

    def _start(self, buf: str) -> str:
        body = buf.lstrip()
        if not body or "```".startswith(body) or "~~~".startswith(body):
            self._held = buf
            return ""
        if body.startswith(("```", "~~~")):
            nl = body.find("\n")
            if nl < 0:
                self._held = buf
                return ""
            self._state = _FENCE
            return self._body(body[nl + 1 :])
        self._state = _PLAIN
        return body

    def _body(self, buf: str) -> str:
        closing = _CLOSING.search(buf)
        if closing:
            self._state = _END
            return buf[: closing.start()].rstrip(_HOLD)
        keep = len(buf.rstrip(_HOLD))
        self._held = buf[keep:]
        return buf[:keep]
