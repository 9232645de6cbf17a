"""The account pool: one generation per account, a fair queue, prepared tickets.

``AccountPool`` is the one object the rest of the gateway talks to. It composes the
pool's parts, each behind its own seam so another backend is a new file, not a fork:

- the lease broker (``broker.py``): queue, leases, who may use which account;
  ``LocalBroker`` in this process, or ``RedisBroker`` shared between replicas;
- the prepared-ticket cache (``tickets.py``): sessions, solved challenges, logins;
- the token store (``tokens.py`` file store, or the Redis one);
- an observer hook (``observer.py``) that metrics and logs subscribe to.

Account health is plain state on each ``Account`` (``account.py``); the pool updates
it from upstream errors and tells the broker, which shares it where it is shared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from ds2a.config import AccountConfig, Config
from ds2a.deepseek.client import DeepSeekClient
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool.account import Account, Health, Ticket
from ds2a.pool.broker import Group, Lease, LeaseBroker, LocalBroker
from ds2a.pool.gate import UpstreamGate
from ds2a.pool.observer import Observers
from ds2a.pool.tickets import TicketCache
from ds2a.pool.tokens import TokenStore

log = logging.getLogger(__name__)

__all__ = ["AccountPool", "Group", "Lease"]

# Start-up preparation (a login for accounts without a stored token) in waves: with
# thousands of accounts, all logins at once would look like an attack to DeepSeek.
# A request never waits for its wave: an unprepared account is prepared on demand.
STARTUP_WAVE = 10  # accounts prepared at once
STARTUP_WAVE_GAP = 0.5  # seconds between two waves (20 accounts/s)


class AccountPool:
    def __init__(self, config: Config, client: DeepSeekClient) -> None:
        self.config = config
        self.pcfg = config.pool
        self.client = client
        self.observer = Observers()
        self.accounts = [Account(a) for a in config.accounts]
        self._members = set(self.accounts)
        self.leaving: set[Account] = set()  # removed by a reload, still finishing an answer
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        # One backoff for the whole upstream while its CDN/WAF blocks this host (gate.py).
        self.gate = UpstreamGate(config.deepseek.block_backoff, config.deepseek.block_backoff_max)
        client.upstream_gate = self.gate
        self.store: Any
        self.broker: LeaseBroker
        if config.redis.url:
            from ds2a.pool.redis_pool import RedisBroker, RedisTokenStore, connect

            redis = connect(config.redis)
            self.broker = RedisBroker(self, redis)
            self.store = RedisTokenStore(redis, config.redis.prefix)
            self.store.broker = self.broker
        else:
            store_path = config.resolve(self.pcfg.token_store) if self.pcfg.token_store else None
            self.store = TokenStore(store_path)
            self.broker = LocalBroker(self)
        self.tickets = TicketCache(self)

    # --- the parts, as the rest of the gateway (and the tests) see them -------

    @property
    def group(self) -> Group:
        return self.broker.group

    @property
    def leases(self) -> set[Lease]:
        return self.broker.leases

    @property
    def direct_groups(self) -> Any:
        return self.broker.direct_groups

    @property
    def spare_sessions(self) -> dict[Account, tuple[str, float]]:
        return self.tickets.spare_sessions

    # --- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        await self.broker.start()
        for i, account in enumerate(self.accounts):
            await self._adopt(account, delay=i // STARTUP_WAVE * STARTUP_WAVE_GAP)

    async def _adopt(self, account: Account, delay: float = 0.0) -> None:
        if account.token:
            self.broker.register_token(account, account.token)  # a configured token
        try:
            stored = await self.store.fetch(account.key) if account.can_login else None
        except DeepSeekError as exc:  # a shared store out of reach: the account logs in when it can
            log.warning("could not read the stored token of %s: %s", account.label, exc.message)
            stored = None
        if stored:
            self.set_token(account, stored)  # a token from an earlier login beats logging in again
        if delay:
            asyncio.get_running_loop().call_later(delay, self.schedule_prepare, account)
        else:
            self.schedule_prepare(account)

    def stop_queue(self) -> None:
        """Shutdown has begun: waiting and new requests are refused now (running answers go on)."""
        self.closing = True
        self.broker.stop_queue()

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
        await self.tickets.close(self.accounts, timeout)
        await self.broker.stop()
        await self.store.close()

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
        return await self.broker.acquire(direct_token=direct_token, exclude=exclude, timeout=timeout)

    def release(self, lease: Lease) -> None:
        lease.release()

    def lease_ended(self, account: Account) -> None:
        """A lease on ``account`` was given back (the broker calls this)."""
        if account in self.leaving and account.inflight == 0:
            self.leaving.discard(account)
            self.tickets.forget(account)
            log.info("account %s left the pool after its last answer", account.label)
            return
        self.schedule_prepare(account)

    def retry_after(self, group: Group) -> int:
        return self.broker.retry_after(group)

    def is_leaving(self, account: Account) -> bool:
        return not account.direct and account not in self._members

    def set_token(self, account: Account, token: str) -> None:
        account.token = token
        self.broker.register_token(account, token)

    # --- health ---------------------------------------------------------------

    def report(self, account: Account, error: DeepSeekError, *, token: str | None = None) -> None:
        """Update health after ``error``; ``token``: the token the failed call used, if known."""
        self.observer.upstream_error(error.kind.value)
        if error.kind is ErrorKind.AUTH and token is not None and token != account.token:
            # A concurrent preparation already dropped or replaced that token (and logged in
            # again): blaming the fresh token would cool a healthy account.
            account.errors += 1
            return
        before = account.health
        before_token = account.token
        account.report(error, cooldown=self.pcfg.cooldown)
        if error.kind in (ErrorKind.AUTH, ErrorKind.INVALID_SESSION, ErrorKind.POW):
            account.ticket = None  # built on a dead token or session
        if error.kind is ErrorKind.AUTH and account.token is None and before_token and not account.direct:
            self.tickets.token_died(account, before_token)
        if account.health is not before:
            log.warning("account %s is now %s: %s", account.label, account.health.value, account.reason)
            self.observer.health_changed(account.label, account.health.value)
        if account.health is not Health.READY and not account.direct:
            self.broker.health_changed(account)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        limit = self.pcfg.max_inflight_per_account
        return {
            "accounts": [a.snapshot(now, limit) for a in self.accounts],
            **self.broker.snapshot(),
            "upstream": self.gate.snapshot(),
        }

    def gauges(self) -> dict[str, Any]:
        """What metrics read at scrape time: accounts per state, generations, queue depth."""
        now = time.monotonic()
        limit = self.pcfg.max_inflight_per_account
        states: dict[str, int] = {}
        for account in self.accounts:
            state = account.status(now, limit)
            states[state] = states.get(state, 0) + 1
        return {"accounts": states, "inflight": len(self.leases), "queued": self.broker.queued()}

    # --- tickets: sessions and solved challenges ------------------------------

    def schedule_prepare(self, account: Account) -> None:
        self.tickets.schedule_prepare(account)

    async def take_ticket(self, account: Account) -> Ticket:
        return await self.tickets.take(account)

    async def prepare(self, account: Account, *, background: bool = False) -> Ticket:
        return await self.tickets.prepare(account, background=background)

    async def ensure_token(self, account: Account) -> str:
        return await self.tickets.ensure_token(account)

    # --- reload ---------------------------------------------------------------

    async def update_accounts(self, configs: list[AccountConfig]) -> tuple[list[str], list[str]]:
        """Take a new account list: new ones join, removed ones finish their answer and leave.

        An account is the same when its key (login or token) is; its health, token and
        prepared ticket are kept. Returns the labels added and removed.
        """
        by_key = {a.key: a for a in self.accounts}
        fresh: list[Account] = []
        added: list[Account] = []
        for cfg in configs:
            candidate = Account(cfg)
            kept = by_key.pop(candidate.key, None)
            if kept is not None:
                kept.config = cfg  # a new password or name applies from now on
                kept.label = cfg.label
                fresh.append(kept)
            else:
                fresh.append(candidate)
                added.append(candidate)
        removed = list(by_key.values())
        self.accounts[:] = fresh  # in place: every part holds this list
        self._members = set(fresh)
        for account in removed:
            if account.inflight:
                self.leaving.add(account)  # its running answer finishes; lease_ended lets it go
            else:
                self.tickets.forget(account)
        await self.broker.accounts_updated(added, removed)
        for account in added:
            await self._adopt(account)
        return [a.label for a in added], [a.label for a in removed]
