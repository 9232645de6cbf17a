"""The request a handler receives: head and whole body, already within the limits."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Request:
    method: str
    path: str  # as sent, percent-escapes kept: routing splits on "/" before decoding
    query: str  # raw, without the "?"; "" when absent
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    client: tuple[str, int] | None
    http_version: str = "1.1"
    params: dict[str, str] = field(default_factory=dict)  # filled by the Router
