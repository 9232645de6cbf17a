"""One DeepSeek account: its credentials, its health, and what is prepared for it.

Health is a small state machine driven by upstream errors (see ``Account.report``).
Everything here is plain state; the pool decides when to act on it.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from dataclasses import dataclass

from ds2a.config import AccountConfig
from ds2a.deepseek.errors import DeepSeekError, ErrorKind


class Health(enum.Enum):
    READY = "ready"
    COOLING = "cooling"  # rate-limited, unreachable, or token invalid after a re-login: rest
    MUTED = "muted"  # restricted by DeepSeek until mute_until
    LOGIN_FAILED = "login_failed"  # wrong password, device refused: disabled, not retried in a loop
    BANNED = "banned"  # USER_IS_BANNED: never used again while this config runs


# How long an account rests after errors the config does not name a time for.
BUSY_REST = 5.0  # "A message is being generated": the protocol doc suggests ~5 s
UNAVAILABLE_REST = 5.0


@dataclass(slots=True)
class Ticket:
    """A chat session and a solved challenge, ready for one completion."""

    session_id: str
    pow_response: str
    expires_at: float  # monotonic time after which the challenge must not be used
    created_at: float  # monotonic; sessions are recycled after a while
    # Handed to one completion: a solved challenge is good for one answer only (a second
    # use is refused upstream as INVALID_POW_RESPONSE).
    claimed: bool = False

    def usable(self, now: float) -> bool:
        return now < self.expires_at


class Account:
    """A configured account, or a caller's own token used directly (``direct``)."""

    def __init__(self, config: AccountConfig, *, direct: bool = False) -> None:
        self.config = config
        self.direct = direct
        self.label = config.label
        self.token: str | None = config.token
        self.health = Health.READY
        self.reason = ""  # why the account is not ready, for operators
        self.until = 0.0  # monotonic end of COOLING / MUTED
        self.mute_until_epoch: float | None = None
        self.inflight = 0
        self.last_started = 0.0  # monotonic; for min_gap
        self.last_released = 0.0  # monotonic; least recently used goes first
        self.relogged_at = -1e9  # monotonic, of the last login that replaced a dead token
        self.replacing_token = False  # the token died; the next login replaces it
        self.ticket: Ticket | None = None
        self.preparing: asyncio.Task[Ticket] | None = None
        self.refresh_timer: asyncio.TimerHandle | None = None
        self.login_lock = asyncio.Lock()
        self.generations = 0
        self.errors = 0

    @property
    def key(self) -> str:
        """Identity for the token store: the login, never the password."""
        if self.config.email:
            return f"email:{self.config.email}"
        if self.config.mobile:
            return f"mobile:{self.config.area_code or ''}{self.config.mobile}"
        return "token:" + hashlib.sha256((self.config.token or "").encode()).hexdigest()[:16]

    @property
    def can_login(self) -> bool:
        return bool((self.config.email or self.config.mobile) and self.config.password)

    # --- health -------------------------------------------------------------

    def usable(self, now: float) -> bool:
        """Healthy enough to be given to a request (capacity is checked by the pool)."""
        if self.health is Health.READY:
            return True
        if self.health in (Health.COOLING, Health.MUTED) and now >= self.until:
            self.set_ready()
            return True
        return False

    def recovers_at(self) -> float | None:
        """Monotonic time when a resting account comes back; None if it never does by itself."""
        if self.health in (Health.COOLING, Health.MUTED):
            return self.until
        if self.health is Health.READY:
            return 0.0
        return None

    def set_ready(self) -> None:
        self.health = Health.READY
        self.reason = ""
        self.until = 0.0
        self.mute_until_epoch = None

    def cool(self, seconds: float, reason: str) -> None:
        self.health = Health.COOLING
        self.reason = reason
        self.until = max(self.until, time.monotonic() + seconds)

    def mute(self, mute_until_epoch: float | None, reason: str, fallback: float) -> None:
        self.health = Health.MUTED
        self.reason = reason
        self.mute_until_epoch = mute_until_epoch
        if mute_until_epoch:
            self.until = time.monotonic() + max(1.0, mute_until_epoch - time.time())
        else:
            self.until = time.monotonic() + fallback

    def disable(self, reason: str) -> None:
        self.health = Health.LOGIN_FAILED
        self.reason = reason

    def ban(self, reason: str) -> None:
        self.health = Health.BANNED
        self.reason = reason

    def report(self, error: DeepSeekError, *, cooldown: float) -> None:
        """Update health after an upstream error; the pool handles re-login for AUTH.

        Not the account's doing, so no change: BLOCKED (the CDN refuses the host: the
        pool's gate backs off), POW (a fresh challenge is solved), INPUT_TOO_LONG (the
        client's conversation), PROTOCOL and UPSTREAM.
        """
        self.errors += 1
        kind = error.kind
        if kind is ErrorKind.MUTED:
            self.mute(error.mute_until, f"muted by DeepSeek: {error.message}", fallback=cooldown)
        elif kind is ErrorKind.RATE_LIMITED:
            self.cool(error.retry_after or cooldown, f"rate limited: {error.message}")
        elif kind is ErrorKind.BUSY:
            self.cool(BUSY_REST, f"already generating upstream: {error.message}")
        elif kind is ErrorKind.UNAVAILABLE:
            self.cool(UNAVAILABLE_REST, f"upstream unreachable: {error.message}")
        elif kind is ErrorKind.TIMEOUT:
            self.cool(UNAVAILABLE_REST, f"upstream timed out: {error.message}")
        elif kind is ErrorKind.LOGIN_FAILED:
            self.disable(f"login failed: {error.message}")
        elif kind is ErrorKind.BANNED:
            self.ban(error.message)
        elif kind is ErrorKind.AUTH:
            if self.direct:
                return  # the caller's own token: their problem, reported to them as 401
            if not self.can_login:
                self.cool(cooldown, f"token invalid and no password to log in again: {error.message}")
            elif time.monotonic() - self.relogged_at < cooldown:
                # A fresh token died at once: logging in again in a loop would not help.
                self.cool(cooldown, f"token invalid right after logging in again: {error.message}")
            else:
                self.drop_token()

    def drop_token(self) -> None:
        """The token is dead: the next use logs in again, once."""
        self.token = None
        self.replacing_token = True

    def status(self, now: float, max_inflight: int) -> str:
        self.usable(now)
        if self.health is Health.READY:
            return "busy" if self.inflight >= max_inflight else "ready"
        return self.health.value

    def snapshot(self, now: float, max_inflight: int) -> dict[str, object]:
        """What operators see; never a token or password."""
        return {
            "account": self.label,
            "status": self.status(now, max_inflight),
            "reason": self.reason or None,
            "inflight": self.inflight,
            "ready_ticket": self.ticket is not None and self.ticket.usable(now),
            "retry_in": round(self.until - now, 1) if self.until > now else None,
            "mute_until": self.mute_until_epoch,
            "generations": self.generations,
            "errors": self.errors,
            "logged_in": self.token is not None,
        }
