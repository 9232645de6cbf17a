"""The account pool: one generation per account, a fair queue, prepared tickets.

DeepSeek allows one generation per account at a time, and two at once can get an
account muted for a day (protocol doc §13). So a request holds a ``Lease`` on one
account from selection until its upstream stream has ended and been cleaned up;
every path releases it exactly once. When every account is busy, requests wait in
FIFO order; a full queue or an expired wait answers 429 with a ``Retry-After``
estimated from how long leases have lasted.

Setup latency is taken off the request path: while an account is idle it keeps a
``Ticket`` (a fresh chat session and a solved proof-of-work challenge) ready, and
solves a new challenge before the old one expires. The scan runs in a thread.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from ds2a.config import AccountConfig, Config
from ds2a.deepseek import pow as pow_
from ds2a.deepseek.client import DeepSeekClient
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool.account import Account, Health, Ticket
from ds2a.pool.errors import PoolBusy, PoolClosing, PoolResting, PoolUnavailable
from ds2a.pool.gate import UpstreamGate
from ds2a.pool.tokens import TokenStore

log = logging.getLogger(__name__)

SESSION_MAX_AGE = 3600.0  # recycle an unused prepared session after an hour (upstream TTL: 3 days)
DEFAULT_LEASE_SECONDS = 20.0  # Retry-After estimate before any lease has finished
DIRECT_GROUPS_MAX = 1024  # direct-token callers remembered for their one-at-a-time guarantee
PREPARE_RETRY = 5.0  # after a failed preparation, try again this much later
# Start-up preparation (a login for accounts without a stored token) in waves: with
# thousands of accounts, all logins at once would look like an attack to DeepSeek.
# A request never waits for its wave: an unprepared account is prepared on demand.
STARTUP_WAVE = 10  # accounts prepared at once
STARTUP_WAVE_GAP = 0.5  # seconds between two waves (20 accounts/s)


class Waiter:
    __slots__ = ("future", "exclude", "since")

    def __init__(self, future: asyncio.Future[Lease], exclude: frozenset[Account]) -> None:
        self.future = future
        self.exclude = exclude
        self.since = time.monotonic()


class Group:
    """Accounts that share one FIFO queue: the configured pool, or one direct token."""

    def __init__(self, accounts: list[Account], *, direct: bool = False) -> None:
        self.accounts = accounts
        self.direct = direct
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.lease_seconds = DEFAULT_LEASE_SECONDS  # moving average, for Retry-After
        self.wakeup: asyncio.TimerHandle | None = None
        self.wakeup_at = math.inf


class Lease:
    """The right to run one generation on one account. Release exactly once."""

    __slots__ = ("pool", "group", "account", "started", "released")

    def __init__(self, pool: AccountPool, group: Group, account: Account) -> None:
        self.pool = pool
        self.group = group
        self.account = account
        self.started = time.monotonic()
        self.released = False

    @property
    def token(self) -> str:
        if self.account.token is None:
            raise DeepSeekError(ErrorKind.AUTH, f"account {self.account.label} has no token")
        return self.account.token

    @property
    def direct(self) -> bool:
        return self.account.direct

    async def ticket(self) -> Ticket:
        """A session and a solved challenge for this lease's completion (prepared if possible)."""
        return await self.pool.take_ticket(self.account)

    def report(self, error: DeepSeekError, *, token: str | None = None) -> None:
        self.pool.report(self.account, error, token=token)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.pool.release(self)

    def __repr__(self) -> str:
        return f"Lease({self.account.label}, released={self.released})"


class AccountPool:
    def __init__(self, config: Config, client: DeepSeekClient) -> None:
        self.config = config
        self.pcfg = config.pool
        self.client = client
        store_path = config.resolve(self.pcfg.token_store) if self.pcfg.token_store else None
        self.store = TokenStore(store_path)
        self.accounts = [Account(a) for a in config.accounts]
        self.group = Group(self.accounts)
        self.direct_groups: collections.OrderedDict[str, Group] = collections.OrderedDict()
        self.leases: set[Lease] = set()
        self.spare_sessions: dict[Account, tuple[str, float]] = {}  # unused sessions to reuse
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        # One backoff for the whole upstream while its CDN/WAF blocks this host (gate.py).
        self.gate = UpstreamGate(config.deepseek.block_backoff, config.deepseek.block_backoff_max)
        client.upstream_gate = self.gate

    # --- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        self.store.load()
        loop = asyncio.get_running_loop()
        for i, account in enumerate(self.accounts):
            stored = self.store.get(account.key)
            if stored and account.can_login:
                account.token = stored  # a token from an earlier login beats logging in again
            if i < STARTUP_WAVE:
                self.schedule_prepare(account)
            else:
                loop.call_later(i // STARTUP_WAVE * STARTUP_WAVE_GAP, self.schedule_prepare, account)

    def stop_queue(self) -> None:
        """Shutdown has begun: waiting and new requests are refused now (running answers go on)."""
        self.closing = True
        for group in [self.group, *self.direct_groups.values()]:
            if group.wakeup:
                group.wakeup.cancel()
            while group.waiters:
                waiter = group.waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(PoolClosing("the gateway is shutting down", code="shutting_down"))

    async def close(self, timeout: float = 10.0) -> None:
        """Stop preparing, fail the queue, wait for cleanups, delete unused sessions."""
        self.stop_queue()
        for account in self.accounts:
            if account.refresh_timer:
                account.refresh_timer.cancel()
            if account.preparing:
                account.preparing.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        unused = [(a, a.ticket.session_id) for a in self.accounts if a.ticket and a.token]
        unused += [(a, session_id) for a, (session_id, _) in self.spare_sessions.items() if a.token]
        if unused and self.config.deepseek.delete_sessions:
            deletions = [asyncio.ensure_future(self._delete_quietly(a.token or "", s)) for a, s in unused]
            await asyncio.wait(deletions, timeout=timeout)
        for account in self.accounts:
            account.ticket = None
        self.spare_sessions.clear()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run background work the pool must wait for on shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so asyncio does not report it again at GC
        if exc is not None and not isinstance(exc, DeepSeekError):  # upstream errors are reported where they occur
            log.error("background task %s failed", task.get_coro().__name__, exc_info=exc)

    # --- leasing --------------------------------------------------------------

    async def acquire(
        self,
        *,
        direct_token: str | None = None,
        exclude: Iterable[Account] = (),
        timeout: float | None = None,
    ) -> Lease:
        """Lease an account, waiting in FIFO order when all are busy."""
        if self.closing:
            raise PoolClosing("the gateway is shutting down", code="shutting_down")
        group = self.direct_group(direct_token) if direct_token else self.group
        excluded = frozenset(exclude)
        now = time.monotonic()
        if not group.waiters:  # FIFO: only jump straight in when nobody is waiting
            account = self._pick(group, excluded, now)
            if account is not None:
                return self._lease(group, account, now)
        timeout = self.pcfg.queue_timeout if timeout is None else timeout
        self._check_feasible(group, excluded, now, timeout)
        if len(group.waiters) >= self.pcfg.queue_max:
            raise self._too_busy(group, "all DeepSeek accounts are busy and the queue is full")
        waiter = Waiter(asyncio.get_running_loop().create_future(), excluded)
        group.waiters.append(waiter)
        self._arm_wakeup(group, now)
        try:
            async with asyncio.timeout(timeout):
                return await waiter.future
        except BaseException as exc:
            # The caller went away or the wait expired, possibly in the very turn a lease was
            # handed over (the result is set, then the cancellation lands): give it back.
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()
            if isinstance(exc, TimeoutError):
                raise self._too_busy(group, f"no DeepSeek account became free within {timeout:g} s") from None
            raise
        finally:
            try:
                group.waiters.remove(waiter)
            except ValueError:
                pass

    def _pick(self, group: Group, exclude: frozenset[Account], now: float) -> Account | None:
        """The usable account idle longest, so load spreads evenly."""
        best: Account | None = None
        limit = self.pcfg.max_inflight_per_account
        gap = self.pcfg.min_gap
        for account in group.accounts:
            if account.inflight >= limit or account in exclude or not account.usable(now):
                continue
            if gap and account.last_started and now - account.last_started < gap:
                continue
            if best is None or account.last_released < best.last_released:
                best = account
        return best

    def _lease(self, group: Group, account: Account, now: float) -> Lease:
        account.inflight += 1
        account.last_started = now
        account.generations += 1
        lease = Lease(self, group, account)
        self.leases.add(lease)
        return lease

    def release(self, lease: Lease) -> None:
        """Called by ``Lease.release`` only: capacity back, next waiter served."""
        self.leases.discard(lease)
        account = lease.account
        account.inflight -= 1
        now = time.monotonic()
        account.last_released = now
        group = lease.group
        group.lease_seconds = 0.8 * group.lease_seconds + 0.2 * (now - lease.started)
        self.schedule_prepare(account)
        self._dispatch(group)
        if group.direct:
            self._evict_direct_groups()

    def _dispatch(self, group: Group) -> None:
        """Hand free accounts to waiters, oldest first."""
        now = time.monotonic()
        for waiter in list(group.waiters):
            if waiter.future.done():
                continue
            account = self._pick(group, waiter.exclude, now)
            if account is None:
                if not waiter.exclude:
                    break  # nothing free for anyone: later waiters cannot do better
                continue  # this waiter excludes the free accounts; a later one may take them
            group.waiters.remove(waiter)
            waiter.future.set_result(self._lease(group, account, now))
        if group.waiters:
            self._arm_wakeup(group, now)

    def _arm_wakeup(self, group: Group, now: float) -> None:
        """Wake the queue when a resting account recovers or a min_gap ends."""
        soonest = math.inf
        for account in group.accounts:
            if account.inflight >= self.pcfg.max_inflight_per_account:
                continue
            at = account.recovers_at()
            if at is None:
                continue
            if self.pcfg.min_gap and account.last_started:
                at = max(at, account.last_started + self.pcfg.min_gap)
            if at > now:
                soonest = min(soonest, at)
        if soonest is math.inf or soonest >= group.wakeup_at:
            return
        if group.wakeup:
            group.wakeup.cancel()
        group.wakeup_at = soonest
        group.wakeup = asyncio.get_running_loop().call_at(soonest, self._wake, group)

    def _wake(self, group: Group) -> None:
        group.wakeup = None
        group.wakeup_at = math.inf
        self._dispatch(group)

    def _check_feasible(self, group: Group, exclude: frozenset[Account], now: float, timeout: float) -> None:
        """Answer at once when waiting cannot help, instead of after the whole timeout."""
        candidates = [a for a in group.accounts if a not in exclude]
        if not candidates:
            if not group.accounts:
                raise PoolUnavailable(
                    "no DeepSeek accounts are configured: add accounts to config.json or send your "
                    "own DeepSeek user token as the bearer",
                    code="no_accounts",
                )
            raise PoolUnavailable("every DeepSeek account was tried for this request", code="accounts_exhausted")
        recoveries = [a.recovers_at() for a in candidates]
        live = [r for r in recoveries if r is not None]
        if not live:
            reasons = "; ".join(sorted({a.reason for a in candidates if a.reason}))
            raise PoolUnavailable(f"every DeepSeek account is disabled ({reasons})", code="accounts_disabled")
        soonest = min(live)
        if soonest > now + timeout:
            wait = str(math.ceil(soonest - now))
            if all(a.health is Health.MUTED for a in candidates if a.recovers_at() is not None):
                # Restricted for hours by DeepSeek: the service is unavailable, not merely busy.
                raise PoolUnavailable(
                    f"every DeepSeek account is muted by DeepSeek; the first is back in {wait} s",
                    code="accounts_muted",
                    retry_after=float(wait),
                )
            raise PoolResting(
                f"every DeepSeek account is resting (rate limited); try again in {wait} s",
                code="accounts_resting",
                retry_after=float(wait),
            )

    def _too_busy(self, group: Group, message: str) -> PoolBusy:
        return PoolBusy(message, code="rate_limit_exceeded", retry_after=float(self.retry_after(group)))

    def retry_after(self, group: Group) -> int:
        """Seconds until a new request would likely get an account."""
        now = time.monotonic()
        capacity = sum(self.pcfg.max_inflight_per_account for a in group.accounts if a.usable(now))
        if capacity == 0:
            live = [r for a in group.accounts if (r := a.recovers_at()) is not None]
            return max(1, math.ceil(min(live) - now)) if live else 60
        rounds = len(group.waiters) // capacity + 1
        return max(1, min(3600, math.ceil(group.lease_seconds * rounds)))

    # --- direct tokens --------------------------------------------------------

    def direct_group(self, token: str) -> Group:
        """One group per caller token: the same one-generation-at-a-time guarantee."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        group = self.direct_groups.get(digest)
        if group is None:
            group = Group([Account(AccountConfig(token=token, name="direct:" + digest[:8]), direct=True)], direct=True)
            self.direct_groups[digest] = group
            self._evict_direct_groups()
        else:
            self.direct_groups.move_to_end(digest)
        return group

    def _evict_direct_groups(self) -> None:
        while len(self.direct_groups) > DIRECT_GROUPS_MAX:
            for digest, group in self.direct_groups.items():
                if not group.waiters and not any(a.inflight for a in group.accounts):
                    del self.direct_groups[digest]
                    break
            else:
                return  # all in use; let it grow rather than break a guarantee

    # --- health ---------------------------------------------------------------

    def report(self, account: Account, error: DeepSeekError, *, token: str | None = None) -> None:
        """Update health after ``error``; ``token``: the token the failed call used, if known."""
        if error.kind is ErrorKind.AUTH and token is not None and token != account.token:
            # A concurrent preparation already dropped or replaced that token (and logged in
            # again): blaming the fresh token would cool a healthy account.
            account.errors += 1
            return
        before = account.health
        account.report(error, cooldown=self.pcfg.cooldown)
        if error.kind in (ErrorKind.AUTH, ErrorKind.INVALID_SESSION, ErrorKind.POW):
            account.ticket = None  # built on a dead token or session
        if error.kind is ErrorKind.AUTH and account.token is None and not account.direct:
            self.spawn(self.store.drop(account.key))
        if account.health is not before:
            log.warning("account %s is now %s: %s", account.label, account.health.value, account.reason)
        if account.health is not Health.READY:
            self._arm_wakeup(self.group, time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        limit = self.pcfg.max_inflight_per_account
        return {
            "accounts": [a.snapshot(now, limit) for a in self.accounts],
            "queued": len(self.group.waiters),
            "direct_tokens": len(self.direct_groups),
            "upstream": self.gate.snapshot(),
        }

    # --- tickets: sessions and solved challenges ------------------------------

    def schedule_prepare(self, account: Account) -> None:
        """Get a ticket ready in the background for an idle, healthy account."""
        if (
            self.closing
            or not self.pcfg.prepare
            or account.direct
            or account.preparing is not None
            or (account.ticket is not None and account.ticket.usable(time.monotonic()))
        ):
            return
        if not account.usable(time.monotonic()):
            at = account.recovers_at()
            if at is not None:
                asyncio.get_running_loop().call_at(at + 0.01, self.schedule_prepare, account)
            return
        if self.gate.closed():  # blocked by the CDN/WAF: prepare once the backoff ends
            asyncio.get_running_loop().call_at(self.gate.reopens_at() + 0.01, self.schedule_prepare, account)
            return
        account.preparing = self.spawn(self._prepare_in_background(account))

    async def _prepare_in_background(self, account: Account) -> Ticket:
        try:
            ticket = await self.prepare(account, background=True)
        except DeepSeekError as exc:
            self.report(account, exc)
            log.info("preparing account %s failed: %s", account.label, exc.message)
            if account.health is Health.READY and not self.closing:
                asyncio.get_running_loop().call_later(PREPARE_RETRY, self.schedule_prepare, account)
            raise
        finally:
            account.preparing = None
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
        elif self.config.deepseek.delete_sessions and account.token:
            self.spawn(self._delete_quietly(account.token, ticket.session_id))
        self.schedule_prepare(account)

    async def take_ticket(self, account: Account) -> Ticket:
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

    async def prepare(self, account: Account, *, background: bool = False) -> Ticket:
        """Log in if needed, create a session, get a challenge and solve it off the loop."""
        for attempt in (1, 2):
            token = await self.ensure_token(account)
            try:
                return await self._make_ticket(account, token, background=background)
            except DeepSeekError as exc:
                if attempt == 1 and exc.kind is ErrorKind.AUTH and self._may_log_in_again(account):
                    account.drop_token()
                    self.spawn(self.store.drop(account.key))
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _may_log_in_again(self, account: Account) -> bool:
        """Log in again once after a dead token, not in a loop."""
        return (
            account.can_login
            and not account.direct
            and time.monotonic() - account.relogged_at >= self.pcfg.cooldown
        )

    async def _make_ticket(self, account: Account, token: str, *, background: bool) -> Ticket:
        spare = self.spare_sessions.pop(account, None)
        if spare is not None:
            session_id, created = spare
        else:
            created = time.monotonic()
            session_id = await self.client.create_session(token)
        asked = time.monotonic()  # the server issues the challenge after this
        challenge = await self.client.create_pow_challenge(token, pow_.COMPLETION_PATH)
        try:
            answer = await pow_.solve_async(challenge, background=background)
        except pow_.PowError as exc:
            raise DeepSeekError(ErrorKind.POW, str(exc)) from exc
        header = pow_.pow_header(challenge, answer)
        # Valid for expire_after from its issue, counted on this host's monotonic clock from
        # when it was asked for (solving time included), less a margin for the request still
        # to be sent. The server's expire_at is never compared with this host's wall clock:
        # a clock skew would keep a stale challenge, or drop every fresh one.
        expires_at = asked + challenge.expire_after / 1000 - self.pcfg.refresh_margin
        return Ticket(session_id=session_id, pow_response=header, expires_at=expires_at, created_at=created)

    async def ensure_token(self, account: Account) -> str:
        """The account's token, logging in (once, under a lock) when it has none."""
        if account.token:
            return account.token
        if not account.can_login:
            raise DeepSeekError(ErrorKind.AUTH, f"account {account.label} has no valid token and no password")
        async with account.login_lock:
            if account.token:
                return account.token
            cfg = account.config
            login = await self.client.login(
                email=cfg.email, mobile=cfg.mobile, area_code=cfg.area_code, password=cfg.password or ""
            )
            token = str(login)
            account.token = token
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

    async def _delete_quietly(self, token: str, session_id: str) -> None:
        try:
            await self.client.delete_session(token, session_id)
        except DeepSeekError as exc:
            log.debug("could not delete session: %s", exc.message)
