"""The lease broker: who may run a generation on which account, and who waits.

DeepSeek allows one generation per account at a time, and two at once can get an
account muted for a day (protocol doc §13). So a request holds a ``Lease`` on one
account from selection until its upstream stream has ended and been cleaned up;
every path releases it exactly once. When every account is busy, requests wait in
FIFO order; a full queue or an expired wait answers 429 with a ``Retry-After``
estimated from how long leases have lasted.

The identity of an upstream account is the account, whatever token reaches it: a
caller whose own bearer is a token of a pool account (configured, or obtained by
the pool's login) waits for that account's lease like everyone else.

``LeaseBroker`` is the interface; ``LocalBroker`` below keeps everything in this
process (the embedded default); ``ds2a/pool/redis_pool.py`` shares it through Redis.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import hashlib
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ds2a.config import AccountConfig
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool.account import Account, Health
from ds2a.pool.errors import PoolBusy, PoolClosing, PoolError, PoolResting, PoolUnavailable

if TYPE_CHECKING:
    from ds2a.pool.account import Ticket
    from ds2a.pool.pool import AccountPool

DEFAULT_LEASE_SECONDS = 20.0  # Retry-After estimate before any lease has finished
DIRECT_GROUPS_MAX = 1024  # direct-token callers remembered for their one-at-a-time guarantee


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Waiter:
    __slots__ = ("future", "exclude", "only", "token", "since")

    def __init__(
        self,
        future: asyncio.Future[Lease],
        exclude: frozenset[Account],
        only: Account | None = None,
        token: str | None = None,
    ) -> None:
        self.future = future
        self.exclude = exclude
        self.only = only  # a caller's own token of this pool account: nothing else will do
        self.token = token  # ...and that token, which the lease then uses
        self.since = time.monotonic()

    @property
    def restricted(self) -> bool:
        return bool(self.exclude) or self.only is not None

    def accepts(self, account: Account) -> bool:
        if self.only is not None:
            return account is self.only
        return account not in self.exclude


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

    __slots__ = ("pool", "group", "account", "started", "released", "direct_token", "fence", "lost")

    def __init__(
        self, pool: AccountPool, group: Group, account: Account, *, direct_token: str | None = None
    ) -> None:
        self.pool = pool
        self.group = group
        self.account = account
        self.started = time.monotonic()
        self.released = False
        self.direct_token = direct_token  # a caller's own token of a pool account
        self.fence: str | None = None  # the shared backend's ownership token
        self.lost = False  # the shared backend gave the account to someone else meanwhile

    @property
    def token(self) -> str:
        if self.direct_token is not None:
            return self.direct_token
        if self.account.token is None:
            raise DeepSeekError(ErrorKind.AUTH, f"account {self.account.label} has no token")
        return self.account.token

    @property
    def direct(self) -> bool:
        """The caller's own token: no failover to other accounts, its errors are the caller's."""
        return self.direct_token is not None or self.account.direct

    async def ticket(self) -> Ticket:
        """A session and a solved challenge for this lease's completion (prepared if possible)."""
        if self.direct_token is not None:
            return await self.pool.tickets.take_for_token(self.account, self.direct_token)
        return await self.pool.take_ticket(self.account)

    def report(self, error: DeepSeekError, *, token: str | None = None) -> None:
        self.pool.report(self.account, error, token=token)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.pool.broker.release(self)

    def __repr__(self) -> str:
        return f"Lease({self.account.label}, released={self.released})"


class LeaseBroker(abc.ABC):
    """Queue, leases and health of one pool; the backends differ in where they live."""

    def __init__(self, pool: AccountPool) -> None:
        self.pool = pool
        self.pcfg = pool.pcfg
        self.group = Group(pool.accounts)
        self.direct_groups: collections.OrderedDict[str, Group] = collections.OrderedDict()
        self.owners: dict[str, Account] = {}  # token digest -> the pool account it belongs to
        self.leases: set[Lease] = set()

    async def start(self) -> None:
        pass

    def stop_queue(self) -> None:
        """Fail every waiter: the gateway is shutting down."""
        for group in [self.group, *self.direct_groups.values()]:
            if group.wakeup:
                group.wakeup.cancel()
            while group.waiters:
                waiter = group.waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(PoolClosing("the gateway is shutting down", code="shutting_down"))

    @abc.abstractmethod
    async def acquire(
        self, *, direct_token: str | None = None, exclude: Iterable[Account] = (), timeout: float | None = None
    ) -> Lease:
        """Lease an account, waiting in FIFO order when all are busy."""

    @abc.abstractmethod
    def release(self, lease: Lease) -> None:
        """Called by ``Lease.release`` only: capacity back, next waiter served."""

    def health_changed(self, account: Account) -> None:
        """An account's health changed here: wake the queue for when it recovers."""
        self.arm_wakeup(self.group, time.monotonic())

    def arm_wakeup(self, group: Group, now: float) -> None:
        pass

    async def stop(self) -> None:
        """After every lease is back and every background task has ended."""

    async def accounts_updated(self, added: list[Account], removed: list[Account]) -> None:
        """The configured accounts changed (reload); ``pool.accounts`` is the new list."""

    def queued(self) -> int:
        return len(self.group.waiters) + sum(len(g.waiters) for g in self.direct_groups.values())

    def snapshot(self) -> dict[str, Any]:
        return {"queued": len(self.group.waiters), "direct_tokens": len(self.direct_groups)}

    # --- whose account is it ------------------------------------------------

    def register_token(self, account: Account, token: str) -> None:
        """``token`` reaches ``account`` upstream: a caller bearing it waits for that account."""
        self.owners[token_digest(token)] = account

    def owner_of(self, token: str) -> tuple[str, Account | None]:
        digest = token_digest(token)
        owner = self.owners.get(digest)
        if owner is not None and owner not in self.pool.accounts:
            owner = None  # removed by a reload: no longer the pool's
        return digest, owner

    def direct_group(self, digest: str, token: str) -> Group:
        """One group per caller token: the same one-generation-at-a-time guarantee."""
        group = self.direct_groups.get(digest)
        if group is None:
            config = AccountConfig(token=token, name="direct:" + digest[:8])
            group = Group([Account(config, direct=True)], direct=True)
            self.direct_groups[digest] = group
            self.evict_direct_groups()
        else:
            self.direct_groups.move_to_end(digest)
        return group

    def evict_direct_groups(self) -> None:
        while len(self.direct_groups) > DIRECT_GROUPS_MAX:
            for digest, group in self.direct_groups.items():
                if not group.waiters and not any(a.inflight for a in group.accounts):
                    del self.direct_groups[digest]
                    break
            else:
                return  # all in use; let it grow rather than break a guarantee

    # --- shared refusals ------------------------------------------------------

    def check_feasible(self, group: Group, eligible: list[Account], now: float, timeout: float) -> None:
        """Answer at once when waiting cannot help, instead of after the whole timeout."""
        if not eligible:
            if not group.accounts:
                raise PoolUnavailable(
                    "no DeepSeek accounts are configured: add accounts to config.json or send your "
                    "own DeepSeek user token as the bearer",
                    code="no_accounts",
                )
            raise PoolUnavailable("every DeepSeek account was tried for this request", code="accounts_exhausted")
        live = [r for a in eligible if (r := a.recovers_at()) is not None]
        if not live:
            reasons = "; ".join(sorted({a.reason for a in eligible if a.reason}))
            raise PoolUnavailable(f"every DeepSeek account is disabled ({reasons})", code="accounts_disabled")
        soonest = min(live)
        if soonest > now + timeout:
            wait = str(math.ceil(soonest - now))
            if all(a.health is Health.MUTED for a in eligible if a.recovers_at() is not None):
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

    def too_busy(self, group: Group, message: str, queued: int | None = None) -> PoolBusy:
        return PoolBusy(message, code="rate_limit_exceeded", retry_after=float(self.retry_after(group, queued)))

    def retry_after(self, group: Group, queued: int | None = None) -> int:
        """Seconds until a new request would likely get an account."""
        now = time.monotonic()
        capacity = sum(self.pcfg.max_inflight_per_account for a in group.accounts if a.usable(now))
        if capacity == 0:
            live = [r for a in group.accounts if (r := a.recovers_at()) is not None]
            return max(1, math.ceil(min(live) - now)) if live else 60
        waiting = len(group.waiters) if queued is None else queued
        rounds = waiting // capacity + 1
        return max(1, min(3600, math.ceil(group.lease_seconds * rounds)))

    def note_lease_time(self, lease: Lease, now: float) -> None:
        group = lease.group
        group.lease_seconds = 0.8 * group.lease_seconds + 0.2 * (now - lease.started)

    def open_lease(self, group: Group, account: Account, now: float, direct_token: str | None = None) -> Lease:
        """What every backend records when it hands an account out."""
        account.inflight += 1
        account.last_started = now
        account.generations += 1
        lease = Lease(self.pool, group, account, direct_token=direct_token)
        self.leases.add(lease)
        return lease

    def close_lease(self, lease: Lease) -> None:
        """What every backend records when a lease comes back: capacity, timing, the pool's follow-ups."""
        self.leases.discard(lease)
        account = lease.account
        account.inflight -= 1
        now = time.monotonic()
        account.last_released = now
        self.note_lease_time(lease, now)
        self.pool.lease_ended(account)


class LocalBroker(LeaseBroker):
    """Everything in this process: the embedded pool."""

    def __init__(self, pool: AccountPool) -> None:
        super().__init__(pool)
        # A direct token's group made before the pool learnt the token is its own: the
        # account must wait for that group's running answer too (account -> its shadow).
        self.shadows: dict[Account, Account] = {}

    def register_token(self, account: Account, token: str) -> None:
        digest = token_digest(token)
        super().register_token(account, token)
        group = self.direct_groups.get(digest)
        if group is not None:
            self.shadows[account] = group.accounts[0]

    async def acquire(
        self, *, direct_token: str | None = None, exclude: Iterable[Account] = (), timeout: float | None = None
    ) -> Lease:
        if self.pool.closing:
            raise PoolClosing("the gateway is shutting down", code="shutting_down")
        only: Account | None = None
        if direct_token:
            digest, only = self.owner_of(direct_token)
            group = self.group if only is not None else self.direct_group(digest, direct_token)
        else:
            group = self.group
        excluded = frozenset(exclude)
        now = time.monotonic()
        pinned = direct_token if only is not None else None
        if not group.waiters:  # FIFO: only jump straight in when nobody is waiting
            account = self._pick(group, excluded, only, now)
            if account is not None:
                self.pool.observer.queue_waited(0.0)
                return self.open_lease(group, account, now, pinned)
        timeout = self.pcfg.queue_timeout if timeout is None else timeout
        eligible = [only] if only is not None else [a for a in group.accounts if a not in excluded]
        self.check_feasible(group, eligible, now, timeout)
        if len(group.waiters) >= self.pcfg.queue_max:
            raise self.too_busy(group, "all DeepSeek accounts are busy and the queue is full")
        waiter = Waiter(asyncio.get_running_loop().create_future(), excluded, only, pinned)
        group.waiters.append(waiter)
        self.arm_wakeup(group, now)
        try:
            async with asyncio.timeout(timeout):
                lease = await waiter.future
        except BaseException as exc:
            # The caller went away or the wait expired, possibly in the very turn a lease was
            # handed over (the result is set, then the cancellation lands): give it back.
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()
            if isinstance(exc, TimeoutError):
                raise self.too_busy(group, f"no DeepSeek account became free within {timeout:g} s") from None
            raise
        finally:
            try:
                group.waiters.remove(waiter)
            except ValueError:
                pass
        self.pool.observer.queue_waited(time.monotonic() - waiter.since)
        return lease

    def _busy(self, account: Account) -> int:
        shadow = self.shadows.get(account) if self.shadows else None
        return account.inflight + (shadow.inflight if shadow is not None else 0)

    def _pick(self, group: Group, exclude: frozenset[Account], only: Account | None, now: float) -> Account | None:
        """The usable account idle longest, so load spreads evenly."""
        best: Account | None = None
        limit = self.pcfg.max_inflight_per_account
        gap = self.pcfg.min_gap
        for account in group.accounts if only is None else (only,):
            if self._busy(account) >= limit or account in exclude or not account.usable(now):
                continue
            if gap and account.last_started and now - account.last_started < gap:
                continue
            if best is None or account.last_released < best.last_released:
                best = account
        return best

    def release(self, lease: Lease) -> None:
        self.close_lease(lease)
        account = lease.account
        group = lease.group
        self._dispatch(group)
        if group.direct:
            if self.shadows:
                for owner, shadow in list(self.shadows.items()):
                    if shadow is account:
                        del self.shadows[owner]  # its answer is over: the owner's lease alone counts
                        self._dispatch(self.group)
            self.evict_direct_groups()

    def _dispatch(self, group: Group) -> None:
        """Hand free accounts to waiters, oldest first."""
        now = time.monotonic()
        for waiter in list(group.waiters):
            if waiter.future.done():
                continue
            account = self._pick(group, waiter.exclude, waiter.only, now)
            if account is None:
                if not waiter.restricted:
                    break  # nothing free for anyone: later waiters cannot do better
                continue  # this waiter excludes the free accounts; a later one may take them
            group.waiters.remove(waiter)
            waiter.future.set_result(self.open_lease(group, account, now, waiter.token))
        if group.waiters:
            self.arm_wakeup(group, now)

    def arm_wakeup(self, group: Group, now: float) -> None:
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

    async def accounts_updated(self, added: list[Account], removed: list[Account]) -> None:
        for waiter in list(self.group.waiters):
            if waiter.only is not None and waiter.only in removed and not waiter.future.done():
                self.group.waiters.remove(waiter)
                waiter.future.set_exception(
                    PoolUnavailable("that DeepSeek account was removed from the pool", code="account_removed")
                )
        self._dispatch(self.group)


__all__ = ["Group", "Lease", "LeaseBroker", "LocalBroker", "PoolError", "Waiter", "token_digest"]
