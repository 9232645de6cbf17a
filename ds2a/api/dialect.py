"""What every API dialect does around the relay, in one place.

A dialect parses its request and encodes its answer; opening the answer, noting it
in the access log, and ending a stream that broke (shutdown, a bug of ours) are the
same for all of them, with the dialect's own error mapping and failure event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ds2a.deepseek.errors import DeepSeekError
from ds2a.metrics import answered
from ds2a.pool.errors import PoolClosing, PoolError
from ds2a.relay.answer import AnswerSink, Outcome
from ds2a.relay.core import Generation, Relay, RelayAnswer
from ds2a.server import HTTPError, Responder
from ds2a.server.access import SHUTDOWN, UNAVAILABLE, UPSTREAM_ERROR

log = logging.getLogger(__name__)

UpstreamMapper = Callable[..., HTTPError]  # (DeepSeekError, *, direct: bool) -> the dialect's error
PoolMapper = Callable[[PoolError], HTTPError]


async def open_answer(
    relay: Relay,
    generation: Generation,
    responder: Responder,
    model: str,
    *,
    upstream_error: UpstreamMapper,
    pool_error: PoolMapper,
) -> RelayAnswer:
    """``relay.open``, noted in the access log; a failure is raised as the dialect's error."""
    record = responder.log
    record.model = model
    try:
        answer = await relay.open(generation)
    except DeepSeekError as exc:
        record.outcome = UPSTREAM_ERROR
        raise upstream_error(exc, direct=generation.direct_token is not None) from None
    except PoolError as exc:
        if isinstance(exc, PoolClosing):
            record.outcome = SHUTDOWN
        elif exc.status == 503:
            record.outcome = UNAVAILABLE  # (429: "busy", from the status)
        raise pool_error(exc) from None
    record.first_token()  # the upstream's first text is in; it leaves now (stream) or with the body
    record.account = answer.account_label
    return answer


async def run_answer(answer: RelayAnswer, sink: AnswerSink, responder: Responder) -> Outcome:
    """``answer.run(sink)``, its tokens and outcome noted in the access log."""
    outcome = await answer.run(sink)
    answered(outcome)  # for /metrics: the reasoning / answer split of the tokens
    responder.log.tokens = outcome.completion_tokens
    if outcome.error is not None:
        responder.log.outcome = UPSTREAM_ERROR
        log.info("answer on %s failed mid-stream: %s", answer.account_label, outcome.error.message)
    return outcome


SHUTTING_DOWN = "shutting_down"
INTERNAL_ERROR = "internal_error"


async def run_stream(
    answer: RelayAnswer, sink: AnswerSink, responder: Responder, fail: Callable[[str, str], object]
) -> Outcome | None:
    """``run_answer`` for a stream that has begun. When it breaks, ``fail(code, message)``
    writes the dialect's failure event (``code``: ``SHUTTING_DOWN`` or ``INTERNAL_ERROR``)
    and the stream is ended: None is returned, or the cancellation goes on."""
    try:
        return await run_answer(answer, sink, responder)
    except asyncio.CancelledError:
        if responder.shutting_down and not responder.disconnected.is_set():
            fail(SHUTTING_DOWN, "the gateway is shutting down")
            responder.end_stream()
        raise
    except Exception:
        # A bug of ours mid-answer: still a visible error for the client, not a silent cut.
        log.exception("relaying an answer failed")
        fail(INTERNAL_ERROR, "internal error while relaying the answer")
        responder.end_stream()
        return None
