"""Stop sequences over streamed text.

The web chat knows nothing of ``stop``, so the gateway cuts the answer itself: text
is passed through until a stop sequence appears, and nothing from the stop sequence
onwards is emitted (OpenAI's behaviour: the sequence itself is not returned). A stop
sequence can straddle two chunks, so the longest chunk end that could still begin one
is held back — at most ``max(len(stop)) - 1`` characters, and only while it matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class StopMatcher:
    __slots__ = ("_stops", "_longest", "_partial", "_held", "_hit", "matched")

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._longest = max(map(len, self._stops), default=0)
        # Every proper beginning of a stop sequence, anchored at the end of the text: the
        # leftmost match is the longest chunk end that may still grow into a stop.
        prefixes = {s[:n] for s in self._stops for n in range(1, len(s))}
        pattern = "|".join(map(re.escape, sorted(prefixes, key=len, reverse=True)))
        self._partial = re.compile(f"(?:{pattern})\\Z", re.DOTALL) if prefixes else None
        self._held = ""
        self._hit = False
        self.matched: str | None = None  # the stop sequence that ended the text

    @property
    def active(self) -> bool:
        return bool(self._stops)

    @property
    def hit(self) -> bool:
        return self._hit

    def feed(self, text: str) -> tuple[str, bool]:
        """(text to emit now, whether a stop sequence was reached). After a hit, nothing more."""
        if not self._stops:
            return text, False
        if self._hit:
            return "", True
        buf = self._held + text
        cut = self._first_stop(buf)
        if cut >= 0:
            self._held = ""
            self._hit = True
            return buf[:cut], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The held tail at the end of the answer (it never completed a stop sequence)."""
        held, self._held = self._held, ""
        return "" if self._hit else held

    def _first_stop(self, buf: str) -> int:
        found = [(p, s) for s in self._stops if (p := buf.find(s)) >= 0]
        if not found:
            return -1
        position, self.matched = min(found, key=lambda hit: hit[0])
        return position

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest end of ``buf`` that is a proper beginning of a stop sequence."""
        if self._partial is None:
            return 0
        m = self._partial.search(buf, max(0, len(buf) - self._longest + 1))
        return len(buf) - m.start() if m else 0
