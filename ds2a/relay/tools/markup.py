"""The tool-call markers: their canonical spelling, and a tolerant reader for what models write.

The prompt (``ds2a.relay.prompt``) asks for ``<｜tool▁call｜>{JSON}<｜/tool▁call｜>`` and
shows results as ``<｜tool▁result｜>…<｜/tool▁result｜>``: full-width bars (U+FF5C) and
the lower one-eighth block (U+2581), DeepSeek's own special-token look, which ordinary
answer text (Markdown, code, XML) never contains. They are deliberately *not* DeepSeek's
real special tokens (``<｜tool▁call▁begin｜>`` …): the web service might treat those
specially.

Models drift from the spelling they were shown, so ``scan_marker`` accepts, case-blind:

- an opener ``<``/``＜`` and a closer ``>``/``＞``;
- any run of bars and spaces on either side of the keyword, bars from ``BARS`` (ASCII
  ``|``, full-width ``｜``, CJK ``丨`` and other look-alikes), doubled, spaced, trailing;
  at least one bar somewhere (without one, ``<tool_call>`` is too plausible in prose);
- a ``/`` before the keyword (a closing marker);
- ``tool`` then ``call``/``calls``/``result(s)``/``output(s)``/``sep``, joined by ``▁``,
  ``_``, ``-``, spaces or nothing, then optionally ``begin``/``start``/``end`` (so
  DeepSeek's native ``<｜tool▁calls▁begin｜>``, ``<｜tool▁call▁end｜>``, ``<｜tool▁sep｜>``
  read as what they mean).
"""

from __future__ import annotations

from typing import Final

CALL_OPEN: Final = "<\uff5ctool\u2581call\uff5c>"
CALL_CLOSE: Final = "<\uff5c/tool\u2581call\uff5c>"
RESULT_OPEN: Final = "<\uff5ctool\u2581result\uff5c>"
RESULT_CLOSE: Final = "<\uff5c/tool\u2581result\uff5c>"

OPENERS: Final = "<\uff1c"
CLOSERS: Final = ">\uff1e"
# ASCII bar, full-width bar, half-width forms light vertical, box drawings light/heavy
# vertical, CJK 丨, divides, broken bar, Latin dental click, presentation-form bar, ⏐.
BARS: Final = "|\uff5c\uffe8\u2502\u2503\u4e28\u2223\u00a6\u01c0\ufe31\u23d0"
SPACES: Final = " \t\u3000\u00a0"
SEPARATORS: Final = SPACES + "\u2581_-"
MAX_MARKER: Final = 48  # longer than any sane drift; bounds what the recogniser holds back

# scan_marker statuses
NONE: Final = 0
PARTIAL: Final = 1
MATCH: Final = 2

# marker kinds
CALL_BEGIN: Final = 1  # opens one call
CALL_END: Final = 2  # closes one call
CALLS: Final = 3  # a wrapper around several calls (native ``tool▁calls▁begin/end``): no meaning here
RESULT: Final = 4  # any tool result/output marker: the model is inventing a result
SEP: Final = 5  # native ``tool▁sep`` between a name and its arguments, inside a call

_WORDS: Final = ("call", "result", "output", "sep")
_SUFFIXES: Final = ("begin", "start", "end")


def _word_at(s: str, j: int, word: str) -> int:
    """MATCH if ``word`` is at ``s[j:]`` (case-blind), PARTIAL if ``s`` ends inside it, else NONE."""
    piece = s[j : j + len(word)].lower()
    if piece == word:
        return MATCH
    if len(piece) < len(word) and word.startswith(piece):
        return PARTIAL
    return NONE


def _first_word_at(s: str, j: int, words: tuple[str, ...]) -> tuple[int, str]:
    """The first of ``words`` at ``s[j:]``: (MATCH, word); (PARTIAL, "") as soon as one could
    still be there once more text arrives; else (NONE, "")."""
    for word in words:
        status = _word_at(s, j, word)
        if status == MATCH:
            return MATCH, word
        if status == PARTIAL:
            return PARTIAL, ""
    return NONE, ""


def scan_marker(s: str, i: int) -> tuple[int, int, int]:
    """Read a marker starting at ``s[i]`` (an opener): ``(status, end, kind)``.

    ``PARTIAL`` means ``s`` ends while the text could still become a marker: hold it back.
    """
    n = len(s)
    limit = i + MAX_MARKER
    j = i + 1
    bars = 0
    while j < n and j < limit:  # bars, spaces and a slash before the keyword
        c = s[j]
        if c in BARS:
            bars += 1
        elif c not in SPACES and c != "/":
            break
        j += 1
    if j >= n:
        return (PARTIAL, 0, 0) if j < limit else (NONE, 0, 0)
    slash = "/" in s[i + 1 : j]
    status = _word_at(s, j, "tool")
    if status != MATCH:
        return status, 0, 0
    j += 4
    while j < n and s[j] in SEPARATORS:
        j += 1
    if j >= n:
        return (PARTIAL, 0, 0) if j < limit else (NONE, 0, 0)
    status, word = _first_word_at(s, j, _WORDS)
    if status != MATCH:
        return status, 0, 0
    j += len(word)
    plural = False
    suffix = ""
    if j < n and s[j] in "sS" and word != "sep":
        if _word_at(s, j, "start") == NONE:  # "calls", not "callstart"
            plural = True
            j += 1
    while j < n and s[j] in SEPARATORS:
        j += 1
    if j < n and s[j].isascii() and s[j].isalpha():  # not str.isalpha alone: 丨 is a "letter" too
        status, suffix = _first_word_at(s, j, _SUFFIXES)
        if status != MATCH:
            return status, 0, 0
        j += len(suffix)
    while j < n and j < limit:  # bars and spaces after the keyword
        c = s[j]
        if c in BARS:
            bars += 1
        elif c not in SPACES and c != "/":
            break
        j += 1
    if j >= n:
        return (PARTIAL, 0, 0) if j < limit else (NONE, 0, 0)
    if s[j] not in CLOSERS or not bars or j >= limit:
        return NONE, 0, 0
    return MATCH, j + 1, _kind(word, plural, slash, suffix)


def _kind(word: str, plural: bool, slash: bool, suffix: str) -> int:
    if word == "sep":
        return SEP
    if word != "call":
        return RESULT
    if plural:
        return CALLS
    return CALL_END if slash or suffix == "end" else CALL_BEGIN
