"""What the pool tells whoever listens (metrics, logs): a hook with no-op defaults.

The pool calls these at the moments that matter to operators and never waits on
them: a listener must be cheap and must not raise. Gauges (accounts per state,
generations in flight, queue depth) are not pushed here; a listener reads them
from ``AccountPool.gauges()`` when it is asked for them (at scrape time).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class PoolObserver:
    """Subclass and override what you need; every method defaults to doing nothing."""

    def queue_waited(self, seconds: float) -> None:
        """A request got its lease after waiting ``seconds`` (0 when an account was free)."""

    def ticket_made(self, setup_seconds: float, pow_seconds: float) -> None:
        """A session and a solved challenge are ready: how long it took, the proof of work alone."""

    def upstream_setup(self, seconds: float) -> None:
        """On a request's path: from its lease to the upstream answer's response head."""

    def upstream_error(self, kind: str) -> None:
        """An upstream call failed with this ``ErrorKind`` value and was reported to the pool."""

    def failover(self) -> None:
        """A request moved to another account before its first text."""

    def health_changed(self, account: str, state: str) -> None:
        """An account's health changed (its label and the new state)."""


class Observers(PoolObserver):
    """Fan-out to every subscribed observer; one failing listener never breaks the pool."""

    def __init__(self) -> None:
        self.listeners: list[PoolObserver] = []

    def subscribe(self, observer: PoolObserver) -> None:
        self.listeners.append(observer)

    def _each(self, name: str, *args: object) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, name)(*args)
            except Exception:  # a listener's bug must not cost an answer
                log.exception("pool observer %r failed in %s", listener, name)

    def queue_waited(self, seconds: float) -> None:
        self._each("queue_waited", seconds)

    def ticket_made(self, setup_seconds: float, pow_seconds: float) -> None:
        self._each("ticket_made", setup_seconds, pow_seconds)

    def upstream_setup(self, seconds: float) -> None:
        self._each("upstream_setup", seconds)

    def upstream_error(self, kind: str) -> None:
        self._each("upstream_error", kind)

    def failover(self) -> None:
        self._each("failover")

    def health_changed(self, account: str, state: str) -> None:
        self._each("health_changed", account, state)
