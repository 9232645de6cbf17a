"""From a prompt to a running upstream answer: failover, continuation, cleanup.

``open_stream`` leases an account and starts the completion. Anything that goes
wrong before the first text arrives (login, session, proof of work, the call, an
in-stream hint such as a rate limit, a TIMEOUT status) moves the request to another
account, within ``pool.max_attempts`` and ``pool.failover_budget``: the client sees one
clean answer or one clean error. A rejected proof of work (40301) is retried with a
freshly solved challenge, on any account, the same one included. A CDN/WAF block is
not retried at all: the pool's gate closes for the whole upstream (``ds2a.pool.gate``).
After that, ``UpstreamStream.read_events`` hands out event batches; an ``INCOMPLETE``
answer the server cut is continued with ``chat/continue`` so the client receives it
whole, once (one a user stopped stays stopped). ``close()`` stops the upstream if
needed, deletes the session and releases the lease, in the background, exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ds2a.deepseek.client import Completion
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.deepseek.events import AnswerDelta, Event, Finish, ReasoningDelta, StreamError
from ds2a.deepseek.stream import StreamParser
from ds2a.pool.errors import PoolError

if TYPE_CHECKING:
    from ds2a.pool.account import Account
    from ds2a.pool.broker import Group, Lease
    from ds2a.pool.pool import AccountPool

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0  # reading the tail (finish/update_session/close) of an ended answer
STOP_TIMEOUT = 10.0  # waiting for a response head and a message id before stopping a generation
_TEXT = (ReasoningDelta, AnswerDelta)


class UpstreamStream:
    """One answer on one leased account."""

    def __init__(self, pool: AccountPool, lease: Lease) -> None:
        self.pool = pool
        self.client = pool.client
        self.lease = lease
        self.session_id: str | None = None
        self.token: str | None = None  # the one the generation runs on, to tell stale errors apart
        self.completion: Completion | None = None
        self.opening: asyncio.Future[Completion] | None = None  # a generation request still in flight
        self.parser = StreamParser()
        self.pending: list[Event] = []
        self.done = False
        self.closed = False
        self.rounds_left = pool.pcfg.continue_rounds
        self.continue_pending = False  # an INCOMPLETE end was swallowed; continue on the next read

    @property
    def account(self) -> Account:
        return self.lease.account

    async def start(self, *, prompt: str, thinking: bool, search: bool, model_type: str | None = None) -> None:
        """Open the completion and read until the first text (or end): nothing is sent yet."""
        began = time.monotonic()
        ticket = await self.lease.ticket()
        self.session_id = ticket.session_id
        self.token = self.lease.token
        await self._open(
            self.client.completion(
                self.token,
                session_id=ticket.session_id,
                pow_response=ticket.pow_response,
                prompt=prompt,
                thinking=thinking,
                search=search,
                model_type=model_type,
            )
        )
        self.pool.observer.upstream_setup(time.monotonic() - began)
        first: list[Event] = []
        while not self.done:
            events = await self.read_events()
            first.extend(events)
            for event in events:
                if type(event) is StreamError:
                    raise DeepSeekError(event.kind, event.message)
            if any(type(e) in _TEXT for e in events):
                break
        self.pending = first  # handed to the relay by the first read_events()

    async def read_events(self) -> list[Event]:
        """The events of the next upstream read; [] once the answer has ended.

        On the hot path: one awaited read, one parser feed. Flat on purpose (no async
        generator, no helper coroutine): each layer costs every read a coroutine frame.
        """
        if self.pending:
            pending, self.pending = self.pending, []
            # The first text is on its way to the client: from the next loop turn on, the
            # account's next ticket can be prepared without competing with it.
            asyncio.get_running_loop().call_soon(self.pool.schedule_prepare, self.account)
            return pending
        while not self.done:
            if self.continue_pending:
                self.continue_pending = False
                await self._continue()
            data = await self.completion.read()  # type: ignore[union-attr]
            events = self.parser.feed(data) if data else self.parser.close()
            if self.parser.finished:
                events = self._on_terminal(events)
            if events:
                return events
        return []

    def _on_terminal(self, events: list[Event]) -> list[Event]:
        terminal = next((e for e in reversed(events) if type(e) in (Finish, StreamError)), None)
        if type(terminal) is Finish and terminal.reason == "incomplete" and terminal.resumable and self.rounds_left > 0:
            # Swallow this end and carry on where the upstream stopped (protocol doc §8), on
            # the next read: the text of this batch goes to the client before that request.
            self.rounds_left -= 1
            self.continue_pending = True
            return [e for e in events if e is not terminal]
        self.done = True
        return events

    async def _open(self, request: Coroutine[Any, Any, Completion]) -> None:
        """Send a generation request. Should the caller go away meanwhile, the request is not
        abandoned: cleanup waits for its response head to learn the message id and stops the
        generation, which a dropped connection alone does not end upstream."""
        opening = asyncio.ensure_future(request)
        self.opening = opening
        try:
            self.completion = await asyncio.shield(opening)
        finally:
            if opening.done():
                self.opening = None
                if not opening.cancelled() and opening.exception() is None:
                    self.completion = opening.result()  # also when cancelled in the same turn

    async def _continue(self) -> None:
        message_id = self.parser.response_message_id
        if message_id is None or self.session_id is None:
            raise DeepSeekError(ErrorKind.PROTOCOL, "cannot continue an answer without its message id")
        if self.completion is not None:
            # The account is generating until the cut stream has ended, not at its INCOMPLETE
            # status: continuing during its tail would be a second generation at once (§13).
            await _drain(self.completion)
            self.completion = None
        log.info("continuing an incomplete answer on %s (%d rounds left)", self.account.label, self.rounds_left)
        # The resumed parser is in place before the request goes out, so a cleanup meanwhile
        # sees an unfinished message with a known id and stops it.
        self.parser = StreamParser(resume_from=self.parser)
        await self._open(
            self.client.continue_stream(self.lease.token, session_id=self.session_id, message_id=message_id)
        )

    def close(self, *, stop: bool | None = None) -> None:
        """End this answer; cleanup and the lease release happen in the background, once."""
        if self.closed:
            return
        self.closed = True
        if stop is None:
            # The parser gave up on a stream the upstream may still be writing (too large,
            # unreadable): that generation must be stopped too.
            stop = not self.done or self.parser.aborted
        self.pool.spawn(self._cleanup(stop=stop))

    async def _cleanup(self, *, stop: bool) -> None:
        try:
            if stop:
                await self._stop_generation()
            elif self.completion is not None:
                await _drain(self.completion)
            self.pool.schedule_prepare(self.account)  # if it was not prepared meanwhile
            if self.session_id and self.pool.config.deepseek.delete_sessions:
                try:
                    await self.client.delete_session(self.lease.token, self.session_id)
                except DeepSeekError as exc:
                    log.debug("could not delete session on %s: %s", self.account.label, exc.message)
        except Exception:  # cleanup must never keep a lease
            log.exception("cleanup failed on %s", self.account.label)
        finally:
            self.lease.release()

    async def _stop_generation(self) -> None:
        """Make sure the upstream is no longer generating before the account is reused."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                if self.opening is not None:
                    # The request is out (the caller left before its response head came back).
                    self.completion = await self.opening
                # No message id yet: read on until `ready` names it, or the stream ends.
                parser = self.parser
                while self.completion is not None and parser.response_message_id is None and not parser.finished:
                    data = await self.completion.read()
                    if not data:
                        break
                    parser.feed(data)
        except (DeepSeekError, TimeoutError):
            pass  # no stream (refused, unreachable, too slow): nothing more to learn from it
        self.opening = None
        if self.completion is not None:
            self.completion.close()
        message_id = self.parser.response_message_id
        if message_id is not None and self.session_id and (not self.parser.finished or self.parser.aborted):
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
    pool: AccountPool,
    *,
    prompt: str,
    thinking: bool,
    search: bool,
    direct_token: str | None = None,
    model_type: str | None = None,
) -> UpstreamStream:
    """Start an answer, failing over between accounts until the first text arrives.

    ``model_type``: the requested model's (``api.models[].model_type``); None sends
    ``deepseek.model_type``."""
    cfg = pool.pcfg
    tried: list[Account] = []
    last_error: DeepSeekError | None = None
    group: Group | None = None
    deadline: float | None = None
    for _attempt in range(cfg.max_attempts):
        pool.gate.check()  # the CDN/WAF blocks this host: answer at once, send nothing
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
        try:
            lease = await pool.acquire(direct_token=direct_token, exclude=tried, timeout=timeout)
        except PoolError:
            if last_error is not None:
                break  # out of accounts to fail over to: report what the upstream said
            raise
        if deadline is None:
            deadline = time.monotonic() + cfg.failover_budget
        stream = UpstreamStream(pool, lease)
        try:
            await stream.start(prompt=prompt, thinking=thinking, search=search, model_type=model_type)
            return stream
        except DeepSeekError as exc:
            lease.report(exc, token=stream.token)
            stream.close(stop=True)
            last_error = exc
            group = lease.group
            if exc.kind is ErrorKind.BLOCKED:
                raise pool.gate.refusal() from None  # the same 503 every request gets meanwhile
            log.info("attempt on %s failed (%s): %s", lease.account.label, exc.kind.value, exc.message)
            if not exc.retryable:
                raise
            if lease.direct and exc.kind is not ErrorKind.POW:
                _with_retry_hint(exc, pool, group)
                raise
            if exc.kind not in (ErrorKind.INVALID_SESSION, ErrorKind.POW):
                # A dead session or a rejected challenge is no reason to avoid the account:
                # the next attempt brings a new session or a freshly solved challenge.
                tried.append(lease.account)
            pool.observer.failover()
        except BaseException:
            stream.close(stop=True)
            raise
    assert last_error is not None and group is not None
    raise _with_retry_hint(last_error, pool, group)


def _with_retry_hint(error: DeepSeekError, pool: AccountPool, group: Group) -> DeepSeekError:
    """The failed attempts rested their accounts: the pool, not the last error alone, knows
    when one is usable again (e.g. pool.cooldown after a rate limit), so Retry-After says that."""
    error.retry_after = pool.retry_after(group)
    return error
