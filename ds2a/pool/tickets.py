"""Prepared tickets: a fresh chat session and a solved challenge, ready per idle account.

Setup latency is taken off the request path: while an account is idle it keeps a
``Ticket`` ready, and solves a new challenge before the old one expires (never
reusing one). The proof-of-work scan runs in a thread. Tickets are local to the
process that made them, in every backend: a session or a challenge is used by the
one request that took it, so no replica ever uses one another replica consumed.

Logging in lives here too, because a ticket is where a token is first needed: an
account logs in under its token store's lock, once (once per cluster with a shared
store), and a token another process stored meanwhile is used instead of a new login.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ds2a.deepseek import pow as pow_
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool.account import Account, Health, Ticket

if TYPE_CHECKING:
    from ds2a.pool.pool import AccountPool

log = logging.getLogger(__name__)

SESSION_MAX_AGE = 3600.0  # recycle an unused prepared session after an hour (upstream TTL: 3 days)
PREPARE_RETRY = 5.0  # after a failed preparation, try again this much later


class TicketCache:
    def __init__(self, pool: AccountPool) -> None:
        self.pool = pool
        self.pcfg = pool.pcfg
        self.client = pool.client
        self.store = pool.store
        self.observer = pool.observer
        self.spare_sessions: dict[Account, tuple[str, float]] = {}  # unused sessions to reuse
        self.dead_tokens: dict[Account, str] = {}  # the last token that died, never taken back

    async def close(self, accounts: list[Account], timeout: float) -> None:
        """Delete every unused session (ready tickets and spares)."""
        for account in accounts:
            if account.refresh_timer:
                account.refresh_timer.cancel()
            if account.preparing:
                account.preparing.cancel()
        unused = [(a, a.ticket.session_id) for a in accounts if a.ticket and a.token]
        unused += [(a, session_id) for a, (session_id, _) in self.spare_sessions.items() if a.token]
        if unused and self.pool.config.deepseek.delete_sessions:
            deletions = [asyncio.ensure_future(self.delete_quietly(a.token or "", s)) for a, s in unused]
            await asyncio.wait(deletions, timeout=timeout)
        for account in accounts:
            account.ticket = None
        self.spare_sessions.clear()

    def forget(self, account: Account) -> None:
        """An account leaves the pool (reload): delete what was prepared for it."""
        if account.refresh_timer:
            account.refresh_timer.cancel()
            account.refresh_timer = None
        # A preparation under way is left to finish: it deletes its own session (it may
        # have created one already, which a cancellation would leak).
        sessions = [account.ticket.session_id] if account.ticket else []
        spare = self.spare_sessions.pop(account, None)
        if spare:
            sessions.append(spare[0])
        account.ticket = None
        if account.token and self.pool.config.deepseek.delete_sessions:
            for session_id in sessions:
                self.pool.spawn(self.delete_quietly(account.token, session_id))

    def schedule_prepare(self, account: Account) -> None:
        """Get a ticket ready in the background for an idle, healthy account."""
        if (
            self.pool.closing
            or not self.pcfg.prepare
            or account.direct
            or account.preparing is not None
            or self.pool.is_leaving(account)
            or (account.ticket is not None and account.ticket.usable(time.monotonic()))
        ):
            return
        if not account.usable(time.monotonic()):
            at = account.recovers_at()
            if at is not None:
                asyncio.get_running_loop().call_at(at + 0.01, self.schedule_prepare, account)
            return
        gate = self.pool.gate
        if gate.closed():  # blocked by the CDN/WAF: prepare once the backoff ends
            asyncio.get_running_loop().call_at(gate.reopens_at() + 0.01, self.schedule_prepare, account)
            return
        account.preparing = self.pool.spawn(self._prepare_in_background(account))

    async def _prepare_in_background(self, account: Account) -> Ticket:
        try:
            ticket = await self.prepare(account, background=True)
        except DeepSeekError as exc:
            self.pool.report(account, exc)
            log.info("preparing account %s failed: %s", account.label, exc.message)
            if account.health is Health.READY and not self.pool.closing:
                asyncio.get_running_loop().call_later(PREPARE_RETRY, self.schedule_prepare, account)
            raise
        finally:
            account.preparing = None
        if self.pool.is_leaving(account):
            if account.token and self.pool.config.deepseek.delete_sessions:
                self.pool.spawn(self.delete_quietly(account.token, ticket.session_id))
            return ticket
        if not ticket.usable(time.monotonic()):
            # The challenge is due as it arrives (it lives shorter than refresh_margin, or the
            # clocks disagree): keeping one ready would fetch and solve challenges in a loop.
            # Keep the session; a request then solves its own challenge.
            log.warning(
                "challenges for %s expire within pool.refresh_margin (%g s); not keeping one ready",
                account.label,
                self.pcfg.refresh_margin,
            )
            self.spare_sessions[account] = (ticket.session_id, ticket.created_at)
            return ticket
        account.ticket = ticket
        self._arm_refresh(account, ticket)
        return ticket

    def _arm_refresh(self, account: Account, ticket: Ticket) -> None:
        if account.refresh_timer:
            account.refresh_timer.cancel()
        account.refresh_timer = asyncio.get_running_loop().call_at(ticket.expires_at, self._refresh, account, ticket)

    def _refresh(self, account: Account, ticket: Ticket) -> None:
        """A ready challenge is about to expire unused: solve a new one (never reuse)."""
        account.refresh_timer = None
        if account.ticket is not ticket:
            return
        account.ticket = None
        if time.monotonic() - ticket.created_at < SESSION_MAX_AGE:
            self.spare_sessions[account] = (ticket.session_id, ticket.created_at)
        elif self.pool.config.deepseek.delete_sessions and account.token:
            self.pool.spawn(self.delete_quietly(account.token, ticket.session_id))
        self.schedule_prepare(account)

    async def take(self, account: Account) -> Ticket:
        """Consume the prepared ticket, or wait for / make one."""
        ticket = account.ticket
        if ticket is None or not ticket.usable(time.monotonic()):
            ticket = None
            if account.preparing is not None:
                try:
                    # Shielded: if this request is cancelled the ticket is still useful later.
                    ticket = await asyncio.shield(account.preparing)
                except DeepSeekError:
                    if not account.usable(time.monotonic()):
                        # Reported already, and it disabled or rested the account (a wrong
                        # password must not be tried twice): fail over instead.
                        raise
                    # Still usable (e.g. a dead token to replace): one more try on the request's time.
            if ticket is None or not ticket.usable(time.monotonic()) or ticket.claimed:
                # (claimed: another lease of this account waited on the same preparation)
                ticket = await self.prepare(account)
        ticket.claimed = True  # one challenge, one completion: never sent twice
        if account.ticket is ticket:
            account.ticket = None
            if account.refresh_timer:
                account.refresh_timer.cancel()
                account.refresh_timer = None
        # The next ticket is prepared once this answer's first text is on its way (dispatch
        # calls schedule_prepare then), not now: a burst of preparations would compete with
        # a burst of first tokens.
        return ticket

    async def take_for_token(self, account: Account, token: str) -> Ticket:
        """A ticket made with a caller's own token of a pool account (another token than the
        pool's: the ready ticket was made with the pool's and is kept for it)."""
        if token == account.token:
            return await self.take(account)
        return await self.make(account, token, background=False, spare=False)

    async def prepare(self, account: Account, *, background: bool = False) -> Ticket:
        """Log in if needed, create a session, get a challenge and solve it off the loop."""
        for attempt in (1, 2):
            token = await self.ensure_token(account)
            try:
                return await self.make(account, token, background=background)
            except DeepSeekError as exc:
                if attempt == 1 and exc.kind is ErrorKind.AUTH and self._may_log_in_again(account):
                    self.token_died(account, token)
                    account.drop_token()
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def token_died(self, account: Account, token: str) -> None:
        """Never take this token back from the store; forget it there unless replaced."""
        self.dead_tokens[account] = token
        self.pool.spawn(self.store.drop(account.key, token))

    def _may_log_in_again(self, account: Account) -> bool:
        """Log in again once after a dead token, not in a loop."""
        return (
            account.can_login
            and not account.direct
            and time.monotonic() - account.relogged_at >= self.pcfg.cooldown
        )

    async def make(self, account: Account, token: str, *, background: bool, spare: bool = True) -> Ticket:
        began = time.monotonic()
        session = self.spare_sessions.pop(account, None) if spare else None
        if session is not None:
            session_id, created = session
        else:
            created = time.monotonic()
            session_id = await self.client.create_session(token)
        asked = time.monotonic()  # the server issues the challenge after this
        challenge = await self.client.create_pow_challenge(token, pow_.COMPLETION_PATH)
        solving = time.monotonic()
        try:
            answer = await pow_.solve_async(challenge, background=background)
        except pow_.PowError as exc:
            raise DeepSeekError(ErrorKind.POW, str(exc)) from exc
        header = pow_.pow_header(challenge, answer)
        now = time.monotonic()
        self.observer.ticket_made(now - began, now - solving)
        # Valid for expire_after from its issue, counted on this host's monotonic clock from
        # when it was asked for (solving time included), less a margin for the request still
        # to be sent. The server's expire_at is never compared with this host's wall clock:
        # a clock skew would keep a stale challenge, or drop every fresh one.
        expires_at = asked + challenge.expire_after / 1000 - self.pcfg.refresh_margin
        return Ticket(session_id=session_id, pow_response=header, expires_at=expires_at, created_at=created)

    async def ensure_token(self, account: Account) -> str:
        """The account's token, logging in (once, under the store's lock) when it has none."""
        if account.token:
            return account.token
        if not account.can_login:
            raise DeepSeekError(ErrorKind.AUTH, f"account {account.label} has no valid token and no password")
        async with self.store.login_lock(account.key):
            if account.token:
                return account.token
            stored = await self.store.fetch(account.key)
            if stored and stored != self.dead_tokens.get(account):
                # Another replica logged this account in meanwhile: one login serves all.
                self.pool.set_token(account, stored)
                account.replacing_token = False
                return stored
            cfg = account.config
            login = await self.client.login(
                email=cfg.email, mobile=cfg.mobile, area_code=cfg.area_code, password=cfg.password or ""
            )
            token = str(login)
            self.pool.set_token(account, token)
            if account.replacing_token:
                # Only a login that replaced a dead token counts: if this one dies at once too,
                # the account rests instead of logging in again in a loop.
                account.relogged_at = time.monotonic()
                account.replacing_token = False
            log.info("logged in account %s", account.label)
            await self.store.put(account.key, token)
            if getattr(login, "muted", False):
                # A login succeeds for a muted user and says so (§16.3): muted from this moment,
                # not after a refused generation. The token stays for when the mute ends.
                raise DeepSeekError(
                    ErrorKind.MUTED, "muted by DeepSeek (said at login)", mute_until=getattr(login, "mute_until", None)
                )
            return token

    async def delete_quietly(self, token: str, session_id: str) -> None:
        try:
            await self.client.delete_session(token, session_id)
        except DeepSeekError as exc:
            log.debug("could not delete session: %s", exc.message)
