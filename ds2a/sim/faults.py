"""Faults injected on demand, per account or for any account, for a number of requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Answered instead of a generation (one per request).
REFUSALS = frozenset({"rate_limit", "input_too_long", "busy", "muted", "invalid_pow"})
# Change how a generation streams (several may apply to one request).
MODIFIERS = frozenset({
    "content_filter", "incomplete", "drop", "slow_first_byte",
    # drift of 2026-08..10 (§16): endings and errors inside the stream
    "context_length_exceeded", "status_timeout", "toast", "user_stop", "stall", "pause",
    # a broken upstream (issue 8): an SSE block that never ends
    "endless_block",
})
# Consumed by the next authenticated call of a matching account, whatever the endpoint.
AUTH = frozenset({"expired_token"})
# Consumed by the next login of a matching account (§16.3).
LOGIN = frozenset({"banned", "risk_device", "muted_login"})
# Consumed by the next /api/v0 call of any kind, before anything else looks at it (§16.2, §16.4).
GATE = frozenset({"waf", "client_too_old"})
KNOWN = REFUSALS | MODIFIERS | AUTH | LOGIN | GATE


@dataclass(slots=True)
class Fault:
    name: str
    account: str | None  # an email, mobile or token; None = any account
    remaining: int  # requests still affected; negative = until reset
    params: dict[str, Any] = field(default_factory=dict)


class FaultBook:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, name: str, account: str | None, count: int, params: dict[str, Any]) -> Fault:
        if name not in KNOWN:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(KNOWN))}")
        if count == 0:
            raise ValueError("count must be non-zero (negative = until reset)")
        fault = Fault(name, account, count, dict(params))
        self._faults.append(fault)
        return fault

    def take(self, names: frozenset[str], aliases: set[str]) -> list[Fault]:
        """Consume at most one fault per name among `names` that matches the account.

        Faults aimed at this account win over faults for any account; among equals the
        oldest goes first.
        """
        if not self._faults:
            return []
        taken: dict[str, Fault] = {}
        for fault in sorted(self._faults, key=lambda f: f.account is None):
            if fault.name in names and fault.name not in taken and (fault.account is None or fault.account in aliases):
                taken[fault.name] = fault
        for fault in taken.values():
            fault.remaining -= 1
            if fault.remaining == 0:
                self._faults.remove(fault)
        return list(taken.values())

    def pending(self) -> list[Fault]:
        return list(self._faults)

    def clear(self) -> None:
        self._faults.clear()
