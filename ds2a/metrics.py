"""Prometheus metrics: what the gateway and its pool are doing, under stable names.

One ``Metrics`` per gateway (its own registry, so several gateways in one process,
as in the tests, never mix). The hot path pays nothing per token: a handler counts
an answer's tokens itself and calls ``observe_answer`` once at its end; label
children are bound once (per label value) and reused. Gauges (accounts per state,
generations in flight, queue depth) are read from the pool at scrape time.

Every route is wrapped once (``Metrics.route(name, handler)``, in ``app.py``): when a
request ends its status is counted (an ``HTTPError``'s, 499 when the client went
away, which also counts a disconnect), and for an answer its time to first token and
tokens are read from the access record the dialects fill (``responder.log``). The
relay's ``Outcome`` is handed over with ``answered(outcome)`` (``api/dialect.py``'s
``run_answer`` does it for every dialect) for the reasoning / answer split of the
tokens and a mid-answer upstream error; without it all tokens count as answer tokens. The plain calls underneath
(``observe_answer``, ``observe_request``, ``client_disconnected``, ``upstream_error``)
are there for a caller outside a route.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ds2a.pool.account import Health
from ds2a.pool.observer import PoolObserver
from ds2a.server.errors import HTTPError

if TYPE_CHECKING:
    from ds2a.pool import AccountPool
    from ds2a.relay.answer import Outcome
    from ds2a.server import Request, Responder

Handler = Callable[["Request", "Responder"], Awaitable[None]]
# The outcome a dialect handed over for the request running in this task.
_OUTCOME: contextvars.ContextVar[list[Outcome] | None] = contextvars.ContextVar("ds2a_outcome", default=None)


def answered(outcome: Outcome) -> None:
    """A dialect's answer ended with ``outcome`` (``api/dialect.run_answer`` calls this)."""
    slot = _OUTCOME.get()
    if slot is not None:
        slot.append(outcome)

# `*_created` series double the output and no dashboard here reads them.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
POW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Reported even at zero, so a dashboard's series exist from the first scrape.
ACCOUNT_STATES = ("ready", "busy", *(h.value for h in Health if h is not Health.READY))


class Metrics(PoolObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "ds2a_requests", "Requests answered, by route and HTTP status.", ["route", "status"], registry=r
        )
        self.ttft = Histogram(
            "ds2a_time_to_first_token_seconds",
            "From a request's arrival to its first answer text leaving the gateway.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "ds2a_queue_wait_seconds", "Time waited for a free account.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.upstream_setup_seconds = Histogram(
            "ds2a_upstream_setup_seconds",
            "On the request's path: from its lease to the upstream answer's response head.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pow_solve = Histogram(
            "ds2a_pow_solve_seconds", "Proof-of-work solves (mostly in the background).", buckets=POW_BUCKETS, registry=r
        )
        tokens = Counter("ds2a_tokens_relayed", "Text tokens relayed to clients.", ["kind"], registry=r)
        self.tokens_answer = tokens.labels("answer")
        self.tokens_reasoning = tokens.labels("reasoning")
        self.upstream_errors = Counter(
            "ds2a_upstream_errors", "Upstream failures, by kind.", ["kind"], registry=r
        )
        self.failovers = Counter("ds2a_failovers", "Requests moved to another account before their first text.", registry=r)
        self.disconnects = Counter(
            "ds2a_client_disconnects", "Clients gone before their answer ended.", registry=r
        )
        self._request_children: dict[tuple[str, str], Any] = {}
        self._error_children: dict[str, Any] = {}
        self._pool: AccountPool | None = None
        r.register(_PoolGauges(self))

    def watch(self, pool: AccountPool) -> None:
        """Subscribe to the pool's observer hook and read its gauges at scrape time."""
        self._pool = pool
        pool.observer.subscribe(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- around every route ----------------------------------------------------

    def route(self, name: str, handler: Handler) -> Handler:
        """``handler``, counted under ``route=name`` when each of its requests ends."""

        async def metered(request: Request, responder: Responder) -> None:
            outcomes: list[Outcome] = []
            token = _OUTCOME.set(outcomes)
            status = 200
            try:
                await handler(request, responder)
                status = responder.status if responder.started else 200
            except HTTPError as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:
                if responder.disconnected.is_set():
                    self.client_disconnected()
                    status = 499  # nginx's word for "the client closed the request"
                else:
                    status = 503  # cut by the shutdown
                raise
            except Exception:
                status = 500
                raise
            finally:
                _OUTCOME.reset(token)
                self._count(name, status, responder, outcomes[-1] if outcomes else None)

        return metered

    def _count(self, route: str, status: int, responder: Responder, outcome: Outcome | None) -> None:
        record = responder.log
        if record.ttft is None:  # no answer text was sent: an error, or not an answer route
            self.observe_request(route, status)
            return
        if outcome is not None:
            reasoning = outcome.reasoning_tokens
            total = outcome.completion_tokens
            if outcome.error is not None:
                self.upstream_error(outcome.error.kind.value)
        else:
            reasoning, total = 0, record.tokens or 0
        self.observe_answer(route, status, record.ttft, max(0, total - reasoning), reasoning)

    # --- what handlers call ---------------------------------------------------

    def observe_request(self, route: str, status: int | str) -> None:
        key = (route, str(status))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()

    def observe_answer(
        self, route: str, status: int | str, ttft: float | None, tokens_answer: int, tokens_reasoning: int
    ) -> None:
        self.observe_request(route, status)
        if ttft is not None:
            self.ttft.observe(ttft)
        if tokens_answer:
            self.tokens_answer.inc(tokens_answer)
        if tokens_reasoning:
            self.tokens_reasoning.inc(tokens_reasoning)

    def client_disconnected(self) -> None:
        self.disconnects.inc()

    # --- the pool's observer hook ---------------------------------------------

    def queue_waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def ticket_made(self, setup_seconds: float, pow_seconds: float) -> None:
        self.pow_solve.observe(pow_seconds)

    def upstream_setup(self, seconds: float) -> None:
        self.upstream_setup_seconds.observe(seconds)

    def upstream_error(self, kind: str) -> None:
        child = self._error_children.get(kind)
        if child is None:
            child = self._error_children[kind] = self.upstream_errors.labels(kind)
        child.inc()

    def failover(self) -> None:
        self.failovers.inc()


class _PoolGauges(Collector):
    """Gauges computed when scraped, so nothing is counted on the hot path."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        pool = self.metrics._pool
        gauges = pool.gauges() if pool is not None else {"accounts": {}, "inflight": 0, "queued": 0}
        accounts = GaugeMetricFamily("ds2a_accounts", "Configured accounts by state.", labels=["state"])
        states = gauges["accounts"]
        for state in (*ACCOUNT_STATES, *sorted(set(states) - set(ACCOUNT_STATES))):
            accounts.add_metric([state], states.get(state, 0))
        yield accounts
        yield GaugeMetricFamily(
            "ds2a_inflight_generations", "Generations running on this replica.", value=gauges["inflight"]
        )
        yield GaugeMetricFamily("ds2a_queue_depth", "Requests waiting for an account.", value=gauges["queued"])
