"""Search citations in answer text: ``[reference:N]`` / ``[citation:N]`` markers rewritten.

The web chat marks citations inline with markers that mean nothing to an OpenAI client
(protocol doc §7.7): ``[reference:N]`` in the current format, where N is the 0-based
index into the answer fragment's references, and ``[citation:N]`` in older ones, where
N is a search result's ``cite_index``. The source of a marker arrives as a separate
event — before the marker's text (older formats) or right after it in the same frame
(current format) — so a complete marker whose source is not known yet is held back
until the next ``feed``/``flush``, by which time the handler has passed that frame's
citations to ``cite``. After that a marker is final: an unknown source renders as a
plain number, never as the raw marker.

Modes (``api.citations``):

- ``links``: ``[1](https://…)``, a Markdown link every chat UI renders;
- ``numbers``: ``[1]``;
- ``remove``: the marker is deleted.

Display numbers are 1-based, assigned in order of first appearance in the output, and
one URL keeps one number however many markers cite it (the upstream indexes are per
fragment or per search and would show gaps or repeats). ``annotations`` gives OpenAI
``url_citation`` objects whose ``start_index``/``end_index`` are character offsets
(code points, end exclusive) of the rendered citation in the rewritten content; in
``remove`` mode the span is empty, at the place the marker was.
"""

from __future__ import annotations

import re
from typing import Any

MODES = ("links", "numbers", "remove")
_MAX_DIGITS = 6
_MARKER = re.compile(rf"\[(reference|citation):([0-9]{{1,{_MAX_DIGITS}}})\]")
_PREFIXES = ("[reference:", "[citation:")
# Longest possible marker; a held incomplete marker is never longer than this minus one.
MAX_MARKER = len("[reference:") + _MAX_DIGITS + 1
# Characters that would end or break a Markdown link destination.
_URL_ESCAPES = str.maketrans({" ": "%20", "(": "%28", ")": "%29", "<": "%3C", ">": "%3E"})


def _could_become_marker(tail: str) -> bool:
    """Whether ``tail`` (which starts with "[" and is shorter than MAX_MARKER) is the
    beginning of a marker cut short."""
    for prefix in _PREFIXES:
        if len(tail) <= len(prefix):
            if prefix.startswith(tail):
                return True
        elif tail.startswith(prefix):
            digits = tail[len(prefix) :]
            return len(digits) <= _MAX_DIGITS and all("0" <= c <= "9" for c in digits)
    return False


class CitationRewriter:
    """Streaming rewrite of citation markers in answer text."""

    def __init__(self, mode: str = "links") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown citation mode {mode!r}")
        self._mode = mode
        self._pending = ""  # received, not yet emitted: an incomplete marker or an unresolved one onwards
        self._sources: dict[tuple[str, int], tuple[str | None, str]] = {}
        self._numbers: dict[object, int] = {}
        self._annotations: list[dict[str, Any]] = []
        self._length = 0  # characters emitted so far

    def cite(self, marker: str, index: int, url: str | None, title: str | None = None) -> None:
        """Register the source of ``[marker:index]``; one without a URL renders as a plain
        number, but still releases its held marker at once."""
        self._sources[(marker, index)] = (url or None, title or "")

    def feed(self, text: str) -> str:
        """Rewritten text that may be emitted now."""
        if not self._pending and "[" not in text:
            self._length += len(text)
            return text
        settled = len(self._pending)
        return self._process(self._pending + text, settled, at_end=False)

    def flush(self) -> str:
        """Everything still held, rewritten; call once at the end of the answer."""
        return self._process(self._pending, len(self._pending), at_end=True)

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return list(self._annotations)

    def _process(self, buf: str, settled: int, *, at_end: bool) -> str:
        # Markers ending within ``settled`` (the part held since the last call) are final:
        # the frame that could have carried their source has been handled.
        out: list[str] = []
        self._pending = ""
        i = 0
        while (j := buf.find("[", i)) >= 0:
            self._emit(out, buf[i:j])
            m = _MARKER.match(buf, j)
            if m is not None:
                key = (m[1], int(m[2]))
                if key not in self._sources and m.end() > settled and not at_end:
                    self._pending = buf[j:]
                    return "".join(out)
                self._emit(out, self._render(key))
                i = m.end()
            elif not at_end and len(buf) - j < MAX_MARKER and _could_become_marker(buf[j:]):
                self._pending = buf[j:]
                return "".join(out)
            else:
                self._emit(out, "[")
                i = j + 1
        self._emit(out, buf[i:])
        return "".join(out)

    def _emit(self, out: list[str], text: str) -> None:
        if text:
            out.append(text)
            self._length += len(text)

    def _number(self, key: object) -> int:
        return self._numbers.setdefault(key, len(self._numbers) + 1)

    def _render(self, key: tuple[str, int]) -> str:
        url, title = self._sources.get(key, (None, ""))
        if self._mode == "remove":
            text = ""
        elif url is None:
            text = f"[{self._number(key)}]"
        elif self._mode == "numbers":
            text = f"[{self._number(url)}]"
        else:
            text = f"[{self._number(url)}]({url.translate(_URL_ESCAPES)})"
        if url is not None:
            self._annotations.append(
                {
                    "type": "url_citation",
                    "url_citation": {
                        "url": url,
                        "title": title,
                        "start_index": self._length,
                        "end_index": self._length + len(text),
                    },
                }
            )
        return text
