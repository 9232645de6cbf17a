"""One gate for the whole upstream: closed while DeepSeek's CDN/WAF blocks this host.

A block (protocol doc §16.4: AWS WAF captcha or challenge, a Cloudflare challenge, an
HTML page where the API answers JSON) refuses the host, not an account: logging in
again cannot help, and a storm of retries or re-logins is what gets accounts flagged.
So the first block closes the gate for ``backoff`` seconds, during which no call
reaches DeepSeek (the client asks ``admit`` before every call) and requests are
answered at once with a ``PoolBlocked`` (503). Then one call is let through as a
probe; another block closes the gate for twice as long (up to ``backoff_max``), any
answer that is not a block opens it. The operator reads the state on
``/admin/accounts`` and one warning in the log per episode.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool.errors import PoolError

log = logging.getLogger(__name__)

# A probe that never reports back (its call failed some other way, or was cancelled)
# must not keep the gate shut: after this long another call may probe.
PROBE_WINDOW = 30.0


class PoolBlocked(PoolError):
    """DeepSeek's CDN/WAF blocks this host: nothing is sent upstream until the backoff ends."""

    status = 503


class UpstreamGate:
    def __init__(self, backoff: float, backoff_max: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._clock = clock
        self.blocks = 0  # blocks in a row, each after the previous backoff ended
        self.until = 0.0  # no call before this (monotonic)
        self.delay = 0.0  # the current backoff, seconds
        self.reason = ""  # the last block, in the client's words
        self.blocked_since: float | None = None  # wall clock, for operators
        self.episodes = 0  # blocked periods since start
        self._probe_until = 0.0  # a probe is out until this (monotonic)

    # --- asked by the client around every call ----------------------------------------

    def admit(self) -> None:
        """Let a call through, or raise DeepSeekError(BLOCKED) without touching the network."""
        if not self.blocks:
            return
        now = self._clock()
        if now < self.until or now < self._probe_until:
            raise DeepSeekError(ErrorKind.BLOCKED, self.message(now), retry_after=self.retry_in(now))
        self._probe_until = now + PROBE_WINDOW  # this call is the probe; the others wait for it

    def blocked(self, error: DeepSeekError) -> None:
        """A call met the block. Calls already in flight when it began add nothing."""
        now = self._clock()
        if now < self.until:
            return
        self.blocks += 1
        delay = min(self.backoff * 2 ** (self.blocks - 1), self.backoff_max)
        if error.retry_after:
            delay = min(max(delay, error.retry_after), self.backoff_max)
        self.until = now + delay
        self.delay = delay
        self._probe_until = 0.0
        self.reason = error.message
        if self.blocks == 1:
            self.episodes += 1
            self.blocked_since = time.time()
            log.warning(
                "%s. ds2a sends nothing upstream for %g s, then tries once, waiting twice as long after each "
                "block (up to %g s); clients get 503 meanwhile. Logging in again would not help and is not "
                "done. See README 'For personal use'.",
                error.message, delay, self.backoff_max,
            )
        else:
            log.debug("still blocked by DeepSeek's CDN/WAF (%d in a row); next try in %g s", self.blocks, delay)

    def passed(self) -> None:
        """A call got an answer that was not a block: the host is let through again."""
        if not self.blocks:
            return
        lasted = time.time() - (self.blocked_since or time.time())
        log.warning("DeepSeek answers requests from this host again (blocked for %.0f s)", lasted)
        self.blocks = 0
        self.until = 0.0
        self.delay = 0.0
        self._probe_until = 0.0
        self.blocked_since = None

    # --- asked by the pool -------------------------------------------------------------

    def closed(self) -> bool:
        """True while no call may go out (a backoff, or a probe still out)."""
        if not self.blocks:
            return False
        now = self._clock()
        return now < self.until or now < self._probe_until

    def reopens_at(self) -> float:
        """Monotonic time when a call may go out again."""
        return max(self.until, self._probe_until)

    def check(self) -> None:
        """Refuse a request at once while the gate is closed."""
        if self.closed():
            now = self._clock()
            raise self.refusal(now)

    def refusal(self, now: float | None = None) -> PoolBlocked:
        now = self._clock() if now is None else now
        return PoolBlocked(self.message(now), code="upstream_blocked", retry_after=self.retry_in(now))

    def retry_in(self, now: float) -> float:
        return max(1.0, math.ceil(max(self.reopens_at() - now, 0.0)))

    def message(self, now: float) -> str:
        return (
            "DeepSeek is blocking requests from this host (its CDN/WAF asks for a browser challenge or "
            f"captcha, which ds2a does not solve); ds2a is backing off, next try in {self.retry_in(now):g} s"
        )

    def snapshot(self) -> dict[str, Any]:
        """For /admin/accounts: the upstream as a whole."""
        if not self.blocks:
            return {"status": "ok", "reason": None, "retry_in": None, "backoff": None, "blocks_in_a_row": 0,
                    "blocked_since": None, "episodes": self.episodes}
        now = self._clock()
        return {
            "status": "blocked",
            "reason": self.reason,
            "retry_in": round(max(self.reopens_at() - now, 0.0), 1),
            "backoff": self.delay,
            "blocks_in_a_row": self.blocks,
            "blocked_since": self.blocked_since,
            "episodes": self.episodes,
        }
