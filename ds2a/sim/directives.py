"""`[[sim:name]]` / `[[sim:name=value]]` markers in a prompt (listed in ds2a.sim's docstring).

They let an end-to-end test through a gateway trigger upstream behaviour without
knowing which account the gateway picks. Unknown names are ignored, so a typo shows
up as "nothing happened" rather than a crash in the middle of a benchmark.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"\[\[sim:([a-z_]+)(?:=([^\]]*))?\]\]")


@dataclass(frozen=True, slots=True)
class Directives:
    values: dict[str, str]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def number(self, name: str, default: float) -> float:
        raw = self.values.get(name, "")
        try:
            return float(raw) if raw else default
        except ValueError:
            return default

    def integer(self, name: str, default: int) -> int:
        value = self.number(name, default)
        return max(0, int(value))


EMPTY = Directives({})


def parse(prompt: str) -> Directives:
    if "[[sim:" not in prompt:
        return EMPTY
    return Directives({m.group(1): (m.group(2) or "").strip() for m in _PATTERN.finditer(prompt)})


def strip(prompt: str) -> str:
    return _PATTERN.sub("", prompt)
