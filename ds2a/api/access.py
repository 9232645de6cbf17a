"""What every dialect tells the access log about a relayed answer, in one place.

The server's ``AccessRecord`` (``responder.log``) knows HTTP; these helpers add what
only the relay path knows: the model, the account, when the first token came, the
tokens, and an outcome for failures the status alone would not name.
"""

from __future__ import annotations

from ds2a.deepseek.errors import DeepSeekError
from ds2a.pool.errors import PoolClosing, PoolError
from ds2a.relay.answer import Outcome
from ds2a.relay.core import Generation, Relay, RelayAnswer
from ds2a.server.access import SHUTDOWN, UNAVAILABLE, UPSTREAM_ERROR, AccessRecord


async def open_answer(relay: Relay, generation: Generation, record: AccessRecord, model: str) -> RelayAnswer:
    """``relay.open``, noted in the record; DeepSeekError and PoolError pass through."""
    record.model = model
    try:
        answer = await relay.open(generation)
    except DeepSeekError:
        record.outcome = UPSTREAM_ERROR
        raise
    except PoolError as exc:
        if isinstance(exc, PoolClosing):
            record.outcome = SHUTDOWN
        elif exc.status == 503:
            record.outcome = UNAVAILABLE  # (429: "busy", from the status)
        raise
    record.first_token()  # the upstream's first text is in; it leaves now (stream) or with the body
    record.account = answer.account_label
    return answer


def note_outcome(record: AccessRecord, outcome: Outcome) -> None:
    record.tokens = outcome.completion_tokens
    if outcome.error is not None:
        record.outcome = UPSTREAM_ERROR
