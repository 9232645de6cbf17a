"""Lenient JSON: read what a model meant when its JSON is slightly broken.

``loads_lenient`` first tries the standard parser (with raw control characters allowed
inside strings, which covers unescaped newlines and tabs), then a forgiving
recursive-descent reader that accepts:

- unescaped double quotes inside strings: a quote ends a string only where the JSON
  around it continues sensibly (``:`` after a key; ``,`` + next key, ``}``, ``]`` or the
  end after a value), otherwise it is part of the text;
- single-quoted strings (same rule for apostrophes inside them), unquoted keys;
- trailing and doubled commas, a missing comma between members;
- Python/JavaScript literals ``True``/``False``/``None``/``undefined``;
- unknown escapes (``\\d`` stays ``\\d``), ``\\'``;
- a truncated text: open strings, arrays and objects are closed at the end;
- text after the first complete value (ignored).

It raises ``ValueError`` when nothing sensible can be read. NaN and Infinity are refused
(they are not JSON and a tool could not receive them).
"""

from __future__ import annotations

import json
import re
from typing import Any

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_$][\w$.\-]*")
_LITERALS: dict[str, Any] = {
    "true": True, "false": False, "null": None, "True": True, "False": False, "None": None,
    "undefined": None,
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}
_VALUE_START = frozenset("\"'{[-+.0123456789tfnTFNu")
_WHITESPACE = " \t\r\n"
_MAX_DEPTH = 200

# String contexts: where the string stands decides which quotes can end it.
_KEY, _MEMBER, _ITEM, _TOP = range(4)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_lenient(text: str) -> Any:
    """The JSON value ``text`` means, repaired if need be; ``ValueError`` if hopeless."""
    try:
        return json.loads(text, strict=False, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        pass
    return _Reader(text).document()


class _Reader:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.n = len(text)
        self.depth = 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{what} at character {self.i}")

    def skip(self) -> None:
        s, i, n = self.s, self.i, self.n
        while i < n and s[i] in _WHITESPACE:
            i += 1
        self.i = i

    def document(self) -> Any:
        self.skip()
        if self.i >= self.n:
            raise self.fail("no JSON value")
        return self.value(_TOP)

    def value(self, context: int) -> Any:
        self.skip()
        if self.i >= self.n:
            raise self.fail("missing value")
        c = self.s[self.i]
        if c == "{":
            return self.nested(self.members)
        if c == "[":
            return self.nested(self.items)
        if c == '"' or c == "'":
            return self.string(c, context)
        number = _NUMBER.match(self.s, self.i)
        if number:
            self.i = number.end()
            raw = number.group().lstrip("+")
            return int(raw) if raw.lstrip("-").isdigit() else float(raw)
        word = _WORD.match(self.s, self.i)
        if word:
            self.i = word.end()
            if word.group() in _LITERALS:
                return _LITERALS[word.group()]
            if word.group() in ("NaN", "Infinity") or context == _TOP:
                raise self.fail(f"{word.group()!r} is not JSON")
            return word.group()  # an unquoted word: the schema decides whether a string fits
        raise self.fail(f"unexpected {c!r}")

    def nested(self, reader: Any) -> Any:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail("nesting too deep")
        try:
            return reader()
        finally:
            self.depth -= 1

    def members(self) -> dict[str, Any]:
        self.i += 1
        out: dict[str, Any] = {}
        while True:
            self.skip()
            if self.i >= self.n:
                return out  # truncated: close it
            c = self.s[self.i]
            if c == "}":
                self.i += 1
                return out
            if c == ",":
                self.i += 1
                continue
            key = self.key()
            self.skip()
            if self.i < self.n and self.s[self.i] in ":=":
                self.i += 1
            else:
                raise self.fail("expected ':'")
            out[key] = self.value(_MEMBER)

    def key(self) -> str:
        c = self.s[self.i]
        if c == '"' or c == "'":
            return self.string(c, _KEY)
        word = _WORD.match(self.s, self.i)
        if not word:
            raise self.fail(f"unexpected {c!r} where a key was expected")
        self.i = word.end()
        return word.group()

    def items(self) -> list[Any]:
        self.i += 1
        out: list[Any] = []
        while True:
            self.skip()
            if self.i >= self.n:
                return out
            c = self.s[self.i]
            if c == "]":
                self.i += 1
                return out
            if c == ",":
                self.i += 1
                continue
            out.append(self.value(_ITEM))

    def string(self, quote: str, context: int) -> str:
        s, n = self.s, self.n
        i = self.i + 1
        out: list[str] = []
        while i < n:
            c = s[i]
            if c == "\\" and i + 1 < n:
                i = self.escape(i, out)
                continue
            if c == quote and self.ends_string(i + 1, context):
                self.i = i + 1
                return "".join(out)
            out.append(c)
            i += 1
        self.i = n  # truncated string: keep what there is
        return "".join(out)

    def escape(self, i: int, out: list[str]) -> int:
        s = self.s
        e = s[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            return i + 2
        if e == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 2 : i + 6]):
            code = int(s[i + 2 : i + 6], 16)
            if 0xD800 <= code < 0xDC00 and s[i + 6 : i + 8] == "\\u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 8 : i + 12]):
                low = int(s[i + 8 : i + 12], 16)
                if 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    return i + 12
            out.append(chr(code))
            return i + 6
        out.append("\\" + e)  # an escape JSON does not know (a regex's \d): keep it as written
        return i + 2

    def ends_string(self, j: int, context: int) -> bool:
        """Does a quote just before ``s[j]`` close the string, judging by what follows?"""
        s, n = self.s, self.n
        while j < n and s[j] in _WHITESPACE:
            j += 1
        if j >= n:
            return True
        c = s[j]
        if context == _KEY:
            return c == ":"
        if context == _TOP:
            return False
        if c == ("}" if context == _MEMBER else "]"):
            return True
        if c != ",":
            return False
        j += 1
        while j < n and s[j] in _WHITESPACE:
            j += 1
        if j >= n:
            return True
        c = s[j]
        if context == _ITEM:
            return c in _VALUE_START or c == "]"
        if c == "}":
            return True
        return self.key_follows(j)

    def key_follows(self, j: int) -> bool:
        """Is ``s[j:]`` a key and its colon (the next member of an object)?"""
        s = self.s
        c = s[j]
        if c == '"' or c == "'":
            end = s.find(c, j + 1)
            if end < 0:
                return False
            j = end + 1
        else:
            word = _WORD.match(s, j)
            if not word:
                return False
            j = word.end()
        while j < self.n and s[j] in _WHITESPACE:
            j += 1
        return j < self.n and s[j] == ":"
