"""From a prompt to a running upstream answer: failover, continuation, cleanup.

``open_stream`` leases an account and starts the completion. Anything that goes
wrong before the first text arrives (login, session, proof of work, the call, an
in-stream hint such as a rate limit) moves the request to another account, within
``pool.max_attempts`` and ``pool.failover_budget``: the client sees one clean answer
or one clean error. After that, ``UpstreamStream`` relays event batches; an
``INCOMPLETE`` answer is continued with ``chat/continue`` so the client receives it
whole, once. ``close()`` stops the upstream if needed, deletes the session and
releases the lease, in the background, exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ds2a.api.errors import ApiError
from ds2a.deepseek.client import Completion
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.deepseek.events import AnswerDelta, Event, Finish, ReasoningDelta, StreamError
from ds2a.deepseek.stream import StreamParser

if TYPE_CHECKING:
    from ds2a.pool.account import Account
    from ds2a.pool.pool import AccountPool, Lease

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0  # reading the tail (finish/update_session/close) of an ended answer
STOP_TIMEOUT = 10.0  # waiting for a message id before stopping a generation
_TEXT = (ReasoningDelta, AnswerDelta)


class UpstreamStream:
    """One answer on one leased account."""

    def __init__(self, pool: AccountPool, lease: Lease) -> None:
        self.pool = pool
        self.client = pool.client
        self.lease = lease
        self.session_id: str | None = None
        self.completion: Completion | None = None
        self.parser = StreamParser()
        self.pending: list[Event] = []
        self.terminal: Event | None = None
        self.done = False
        self.closed = False
        self.rounds_left = pool.pcfg.continue_rounds

    @property
    def account(self) -> Account:
        return self.lease.account

    async def start(self, *, prompt: str, thinking: bool, search: bool) -> None:
        """Open the completion and read until the first text (or end): nothing is sent yet."""
        ticket = await self.lease.ticket()
        self.session_id = ticket.session_id
        self.completion = await self.client.completion(
            self.lease.token,
            session_id=ticket.session_id,
            pow_response=ticket.pow_response,
            prompt=prompt,
            thinking=thinking,
            search=search,
        )
        while not self.done:
            events = await self.next_batch()
            self.pending.extend(events)
            for event in events:
                if type(event) is StreamError:
                    raise DeepSeekError(event.kind, event.message)
            if any(type(e) in _TEXT for e in events):
                return

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self.batches()

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Event batches, one per upstream read, until the answer has ended."""
        if self.pending:
            pending, self.pending = self.pending, []
            yield pending
        while not self.done:
            events = await self.next_batch()
            if events:
                yield events

    async def next_batch(self) -> list[Event]:
        assert self.completion is not None
        data = await self.completion.read()
        events = self.parser.feed(data) if data else self.parser.close()
        if self.parser.finished:
            events = await self._on_terminal(events)
        return events

    async def _on_terminal(self, events: list[Event]) -> list[Event]:
        terminal = next((e for e in reversed(events) if type(e) in (Finish, StreamError)), None)
        if type(terminal) is Finish and terminal.reason == "incomplete" and self.rounds_left > 0:
            # Swallow this end and carry on where the upstream stopped (protocol doc §8).
            self.rounds_left -= 1
            await self._continue()
            return [e for e in events if e is not terminal]
        self.terminal = terminal
        self.done = True
        return events

    async def _continue(self) -> None:
        old = self.completion
        message_id = self.parser.response_message_id
        if old is not None:
            self.pool.spawn(_drain(old))
        if message_id is None or self.session_id is None:
            raise DeepSeekError(ErrorKind.PROTOCOL, "cannot continue an answer without its message id")
        log.info("continuing an incomplete answer on %s (%d rounds left)", self.account.label, self.rounds_left)
        self.completion = await self.client.continue_stream(
            self.lease.token, session_id=self.session_id, message_id=message_id
        )
        self.parser = StreamParser(resume_from=self.parser)

    def close(self, *, stop: bool | None = None) -> None:
        """End this answer; cleanup and the lease release happen in the background, once."""
        if self.closed:
            return
        self.closed = True
        self.pool.spawn(self._cleanup(stop=not self.done if stop is None else stop))

    async def _cleanup(self, *, stop: bool) -> None:
        try:
            completion = self.completion
            if completion is not None:
                if stop:
                    await self._stop_generation(completion)
                else:
                    await _drain(completion)
            if self.session_id and self.pool.config.deepseek.delete_sessions:
                try:
                    await self.client.delete_session(self.lease.token, self.session_id)
                except DeepSeekError as exc:
                    log.debug("could not delete session on %s: %s", self.account.label, exc.message)
        except Exception:  # cleanup must never keep a lease
            log.exception("cleanup failed on %s", self.account.label)
        finally:
            self.lease.release()

    async def _stop_generation(self, completion: Completion) -> None:
        """Make sure the upstream is no longer generating before the account is reused."""
        if self.parser.response_message_id is None and not self.parser.finished:
            # No message id yet: read on until `ready` names it, or the stream ends.
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    while self.parser.response_message_id is None and not self.parser.finished:
                        data = await completion.read()
                        if not data:
                            break
                        self.parser.feed(data)
            except (DeepSeekError, TimeoutError):
                pass
        completion.close()
        message_id = self.parser.response_message_id
        if message_id is not None and self.session_id and not self.parser.finished:
            try:
                await self.client.stop_stream(self.lease.token, session_id=self.session_id, message_id=message_id)
            except DeepSeekError as exc:
                log.info("stop_stream failed on %s: %s", self.account.label, exc.message)


async def _drain(completion: Completion) -> None:
    """Read the tail of an ended answer so its connection can be reused."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            while await completion.read():
                pass
        completion.release()
    except (DeepSeekError, TimeoutError):
        completion.close()


async def open_stream(
    pool: AccountPool, *, prompt: str, thinking: bool, search: bool, direct_token: str | None = None
) -> UpstreamStream:
    """Start an answer, failing over between accounts until the first text arrives."""
    cfg = pool.pcfg
    tried: list[Account] = []
    last_error: DeepSeekError | None = None
    deadline: float | None = None
    for _attempt in range(cfg.max_attempts):
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
        try:
            lease = await pool.acquire(direct_token=direct_token, exclude=tried, timeout=timeout)
        except ApiError as exc:
            if last_error is not None and exc.status in (429, 503):
                break  # out of accounts to fail over to: report what the upstream said
            raise
        if deadline is None:
            deadline = time.monotonic() + cfg.failover_budget
        stream = UpstreamStream(pool, lease)
        try:
            await stream.start(prompt=prompt, thinking=thinking, search=search)
            return stream
        except DeepSeekError as exc:
            lease.report(exc)
            stream.close(stop=True)
            last_error = exc
            log.info("attempt on %s failed (%s): %s", lease.account.label, exc.kind.value, exc.message)
            if not exc.retryable or lease.direct:
                raise
            if exc.kind is not ErrorKind.INVALID_SESSION:
                tried.append(lease.account)  # a dead session is no reason to avoid the account
        except BaseException:
            stream.close(stop=True)
            raise
    assert last_error is not None
    raise last_error
