"""The shared pool: replicas lease accounts, queue and share health and tokens in Redis.

One generation per account across every replica: a lease is a Redis key holding a
fence token, with a short TTL (``redis.lease_ttl``) this replica renews while the
answer lives. Only the holder of the fence can release or renew it (checked inside
Redis, atomically), so a replica that was paused or cut off past the TTL can never
release or extend a lease that has since gone to someone else. A replica killed
outright frees its accounts when their TTL runs out.

One queue for the cluster: when every account is busy, a request is added to a
Redis queue in arrival order; whoever releases an account hands it to the oldest
waiter that can use it, inside the same atomic step, and wakes that waiter's
replica by pub/sub. Resting accounts and leases of dead replicas wake the queue by
timers at the known recovery time and by Redis's expiry notifications.

Redis down: new generations are refused at once with a 503 naming Redis (fail
closed: never local leases behind the cluster's back); running answers go on and
give their leases back once Redis is reachable again; this replica reconnects with
backoff and serves again without a restart.

The atomic steps are Lua scripts, in ``redis_scripts.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from ds2a.config import RedisConfig
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool.account import Account, Health
from ds2a.pool.broker import Lease, LeaseBroker, token_digest
from ds2a.pool.errors import PoolClosing, PoolUnavailable
from ds2a.pool.redis_scripts import SCRIPTS

if TYPE_CHECKING:
    from ds2a.pool.pool import AccountPool

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
LOGIN_LOCK_SECONDS = 60.0  # a replica that dies while logging in holds the lock this long at most


def connect(config: RedisConfig) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        config.url,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=max(config.connect_timeout, 2.0),
        health_check_interval=0,
        retry_on_timeout=False,
        decode_responses=True,
    )


def describe(url: str) -> str:
    """The Redis address for messages, without a password."""
    rest = url.split("://", 1)[-1]
    return rest.rsplit("@", 1)[-1]


class Scripts:
    """The Lua scripts registered once; EVALSHA, loaded again after a Redis restart."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._scripts = {name: redis.register_script(body) for name, body in SCRIPTS.items()}

    async def __call__(self, name: str, *args: Any) -> Any:
        return await self._scripts[name](args=list(args))


class RedisBroker(LeaseBroker):
    def __init__(self, pool: AccountPool, redis: aioredis.Redis) -> None:
        super().__init__(pool)
        self.cfg = pool.config.redis
        self.redis = redis
        self.prefix = self.cfg.prefix
        self.scripts = Scripts(redis)
        self.replica = secrets.token_hex(6)
        self.ttl_ms = int(self.cfg.lease_ttl * 1000)
        self.up = False
        self.closing = False
        self.where = describe(self.cfg.url)
        self.waiting: dict[str, tuple[asyncio.Future[tuple[str, str]], float]] = {}
        self.pending_releases: list[tuple[str, str]] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.wake_timer: asyncio.TimerHandle | None = None
        self.reconnected = asyncio.Event()
        self._seq = 0
        self.recovering: asyncio.Task[None] | None = None
        self.abandoned: list[str] = []  # waiters failed while Redis was away: leave the queue on return
        self.direct_queues: dict[str, str] = {}  # waiter -> the direct token's slot it waits in
        self.token_events: dict[str, asyncio.Event] = {}

    # --- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._on_connected()
        except REDIS_ERRORS as exc:
            log.error("Redis at %s is unreachable (%s): new answers get 503 until it is back", self.where, exc)
            self._lost(exc)
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self._listen()))
        self.tasks.append(loop.create_task(self._renew_forever()))
        await asyncio.sleep(0)

    async def _on_connected(self) -> None:
        """(Re)connected: join the pool, take back what Redis may have lost, read health."""
        await self.redis.ping()
        await self._enable_expiry_events()
        await self._register(self.pool.accounts)
        await self._renew()
        await self._load_health()
        if self.pending_releases:
            pending, self.pending_releases = self.pending_releases, []
            for slot, fence in pending:
                await self._release(slot, fence)
        while self.abandoned:
            await self.scripts("cancel", self.prefix, self.abandoned[-1], self.ttl_ms, self._gap_ms())
            self.abandoned.pop()
        for account in self.pool.accounts:
            if account.token:
                await self.scripts("own", self.prefix, account.key, token_digest(account.token))
        if not self.up:
            log.info("Redis at %s is reachable: the shared pool serves again", self.where)
        self.up = True

    def stop_queue(self) -> None:
        self.closing = True
        super().stop_queue()
        for wid, (future, _) in list(self.waiting.items()):
            if not future.done():
                future.set_exception(PoolClosing("the gateway is shutting down", code="shutting_down"))

    async def stop(self) -> None:
        if self.wake_timer:
            self.wake_timer.cancel()
        if self.recovering is not None:
            self.tasks.append(self.recovering)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.pending_releases and self.up:
            with contextlib.suppress(*REDIS_ERRORS):
                for slot, fence in self.pending_releases:
                    await self.scripts("release", self.prefix, slot, fence, self.ttl_ms, self._gap_ms(), "")
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.delete(self.prefix + "replica:" + self.replica)
        await self.redis.aclose()

    async def _enable_expiry_events(self) -> None:
        """Ask Redis to announce expired keys (a dead replica's lease wakes the queue at once).
        A managed Redis may refuse CONFIG: then a timer at the lease TTL does it."""
        try:
            flags = (await self.redis.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
            if not ("E" in flags and ("x" in flags or "A" in flags)):
                await self.redis.config_set("notify-keyspace-events", "".join(sorted(set(flags + "Ex"))))
        except redis_errors.ResponseError as exc:
            log.info("Redis refused to announce expired keys (%s): dead replicas' leases wake the queue by timer", exc)

    # --- Redis up and down ----------------------------------------------------

    def redis_down(self) -> PoolUnavailable:
        return PoolUnavailable(
            f"the shared account pool's Redis at {self.where} is unreachable: new answers are refused "
            "until it is back (running answers go on)",
            code="redis_unavailable",
            retry_after=5.0,
        )

    def _lost(self, exc: BaseException) -> None:
        """Redis went away: fail the waiters (nobody can hand them an account), keep the answers."""
        if self.up:
            log.error("lost Redis at %s (%s): refusing new answers until it is back", self.where, exc)
        self.up = False
        for wid, (future, _) in list(self.waiting.items()):
            if not future.done():
                future.set_exception(self.redis_down())
                self.abandoned.append(wid)
        if not self.closing and (self.recovering is None or self.recovering.done()):
            self.recovering = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Reconnect with backoff until Redis answers again (the listener may still be connected)."""
        backoff = BACKOFF_FIRST
        while not self.up and not self.closing:
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)
            try:
                await self._on_connected()
            except REDIS_ERRORS as exc:
                log.debug("Redis at %s still unreachable: %s", self.where, exc)

    async def _listen(self) -> None:
        """Grants, health and token news from other replicas; reconnects with backoff."""
        backoff = BACKOFF_FIRST
        channels = [f"{self.prefix}grants:{self.replica}", f"{self.prefix}health", f"{self.prefix}tokens"]
        while not self.closing:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                db = self.redis.connection_pool.connection_kwargs.get("db", 0)
                await pubsub.subscribe(*channels, f"__keyevent@{db}__:expired")
                if not self.up:
                    await self._on_connected()
                backoff = BACKOFF_FIRST
                await self._claim_missed_grants()
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._on_message(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self._lost(exc)
            except Exception:
                log.exception("the shared pool's listener failed; reconnecting")
                self._lost(RuntimeError("listener failed"))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    def _on_message(self, channel: str, data: str) -> None:
        p = self.prefix
        if channel.startswith(p + "grants:"):
            self.pool.spawn(self._claim(data))
        elif channel == p + "health":
            self.pool.spawn(self._refresh_health([data]))
        elif channel == p + "tokens":
            event = self.token_events.get(data)
            if event is not None:
                event.set()
        elif data.startswith(p + "lease:"):
            # A lease ran out (its replica died): hand the account on.
            self._spawn(self._dispatch(data[len(p + "lease:") :]))

    async def _renew_forever(self) -> None:
        """Renew this replica's leases and heartbeat every third of the TTL."""
        while True:
            await asyncio.sleep(self.cfg.lease_ttl / 3)
            if not self.up:
                continue
            try:
                await self._renew()
            except REDIS_ERRORS as exc:
                self._lost(exc)

    async def _renew(self) -> None:
        leases = [lease for lease in self.leases if lease.fence and not lease.lost]
        args: list[Any] = [self.prefix, self.replica, self.ttl_ms]
        for lease in leases:
            args += [self._slot(lease), lease.fence]
        results = await self.scripts("renew", *args)
        for lease, result in zip(leases, results):
            if int(result) == 0:
                lease.lost = True
                log.warning(
                    "the lease on %s ran out (this replica was paused or cut off) and is someone else's now: "
                    "it will not be released or renewed from here",
                    lease.account.label,
                )
            elif int(result) == 2:
                log.info("took back the lease on %s, which Redis had lost", lease.account.label)

    # --- leasing --------------------------------------------------------------

    def _slot(self, lease: Lease) -> str:
        return lease.account.key if not lease.account.direct else "direct:" + token_digest(lease.account.token or "")

    def _gap_ms(self) -> int:
        return int(self.pcfg.min_gap * 1000)

    async def acquire(
        self, *, direct_token: str | None = None, exclude: Iterable[Account] = (), timeout: float | None = None
    ) -> Lease:
        if self.pool.closing:
            raise PoolClosing("the gateway is shutting down", code="shutting_down")
        if not self.up:
            raise self.redis_down()
        timeout = self.pcfg.queue_timeout if timeout is None else timeout
        excluded = frozenset(exclude)
        now = time.monotonic()
        if not direct_token:
            eligible = [a for a in self.group.accounts if a not in excluded]
            if not any(a.usable(now) for a in eligible):
                self.check_feasible(self.group, eligible, now, timeout)
        self._seq += 1
        wid = f"{self.replica}:{self._seq}"
        future: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self.waiting[wid] = (future, now)  # before the script: a grant may be published at once
        try:
            reply = await self.scripts(
                "acquire",
                self.prefix,
                wid,
                self.replica,
                token_digest(direct_token) if direct_token else "",
                " ".join(a.key for a in excluded),
                self.ttl_ms,
                self.pcfg.queue_max,
                max(1, int(timeout * 1000)),
                self._gap_ms(),
            )
        except REDIS_ERRORS as exc:
            self.waiting.pop(wid, None)
            self._lost(exc)
            raise self.redis_down() from None
        except BaseException:
            self.waiting.pop(wid, None)
            raise
        kind = reply[0]
        if kind == "granted":
            self.waiting.pop(wid, None)
            self.pool.observer.queue_waited(time.monotonic() - now)
            return self._lease(reply[1], reply[2], direct_token, pinned=int(reply[3]) == 1)
        if kind == "full":
            self.waiting.pop(wid, None)
            self._deliver(reply[2:])
            group = self.group if not direct_token else self.direct_group(token_digest(direct_token), direct_token)
            raise self.too_busy(group, "all DeepSeek accounts are busy and the queue is full", int(reply[1]))
        pinned = int(reply[2]) == 1
        if reply[3].startswith("direct:"):
            self.direct_queues[wid] = reply[3]  # timers wake that token's own queue too
        self._deliver(reply[5:])  # our own waiter may be among them (served in this very step)
        if int(reply[4]) >= 0:
            self._dispatch_soon(int(reply[4]) / 1000 + 0.005)  # a resting account recovers then
        self._arm_safety()
        try:
            async with asyncio.timeout(timeout):
                slot, fence = await future
        except BaseException as exc:
            await self._give_up(wid, future)
            if isinstance(exc, TimeoutError):
                group = self.group if not direct_token else self.direct_group(token_digest(direct_token), direct_token)
                raise self.too_busy(group, f"no DeepSeek account became free within {timeout:g} s", int(reply[1]))
            raise
        finally:
            self.waiting.pop(wid, None)
            self.direct_queues.pop(wid, None)
        self.pool.observer.queue_waited(time.monotonic() - now)
        return self._lease(slot, fence, direct_token, pinned=pinned)

    async def _give_up(self, wid: str, future: asyncio.Future[tuple[str, str]]) -> None:
        """The caller left or the wait expired: leave the queue; a lease handed over meanwhile goes back."""
        self.waiting.pop(wid, None)
        if future.done() and not future.cancelled() and future.exception() is None:
            slot, fence = future.result()
            self._send_release(slot, fence)
            return
        if not self.up:
            if wid not in self.abandoned:
                self.abandoned.append(wid)  # leaves the queue once Redis is back
            return
        try:
            await asyncio.shield(self.scripts("cancel", self.prefix, wid, self.ttl_ms, self._gap_ms()))
        except REDIS_ERRORS as exc:
            self._lost(exc)
        except asyncio.CancelledError:
            pass

    def _lease(self, slot: str, fence: str, direct_token: str | None, *, pinned: bool) -> Lease:
        if slot.startswith("direct:"):
            assert direct_token is not None
            group = self.direct_group(slot[len("direct:") :], direct_token)
            account = group.accounts[0]
        else:
            group = self.group
            account = next((a for a in self.pool.accounts if a.key == slot), None)
            if account is None:
                # Another replica's config has this account and ours does not: replicas of one
                # prefix must share their account list.
                self._send_release(slot, fence)
                raise PoolUnavailable(
                    f"the shared pool handed out an account this replica does not know ({slot.split(':')[0]}); "
                    "replicas sharing a Redis prefix must have the same accounts",
                    code="accounts_differ",
                )
        lease = self.open_lease(group, account, time.monotonic(), direct_token if pinned else None)
        lease.fence = fence
        return lease

    def release(self, lease: Lease) -> None:
        self.close_lease(lease)
        if lease.fence and not lease.lost:
            self._send_release(self._slot(lease), lease.fence)
        if lease.group.direct:
            self.evict_direct_groups()

    def _send_release(self, slot: str, fence: str) -> None:
        if not self.up:
            self.pending_releases.append((slot, fence))  # sent once Redis is back (if still ours)
            return
        self._spawn(self._release(slot, fence))

    async def _release(self, slot: str, fence: str) -> None:
        try:
            reply = await self.scripts("release", self.prefix, slot, fence, self.ttl_ms, self._gap_ms(), self.replica)
        except REDIS_ERRORS as exc:
            self.pending_releases.append((slot, fence))
            self._lost(exc)
            return
        self._deliver(reply[1:])

    def _deliver(self, grants: list[Any]) -> None:
        """Leases a step handed to this replica's waiters, in its reply: no mailbox, no message."""
        for i in range(0, len(grants) - 2, 3):
            self._hand(grants[i], grants[i + 1], grants[i + 2])

    def _hand(self, wid: str, slot: str, fence: str) -> None:
        entry = self.waiting.get(wid)
        if entry is None or entry[0].done():
            self._send_release(slot, fence)  # the waiter left meanwhile: give it straight back
            return
        entry[0].set_result((slot, fence))

    async def _claim(self, wid: str) -> None:
        """A grant for one of our waiters was published: take it from its mailbox."""
        try:
            granted = await self.redis.getdel(f"{self.prefix}grant:{wid}")
        except REDIS_ERRORS as exc:
            self._lost(exc)
            return
        if not granted:
            return  # taken already (by a reconnect's sweep)
        slot, fence = granted.split(" ", 1)
        self._hand(wid, slot, fence)

    async def _claim_missed_grants(self) -> None:
        """After a reconnect: grants published while the subscription was down."""
        for wid in list(self.waiting):
            await self._claim(wid)

    def _dispatch_soon(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, delay)
        if self.wake_timer is not None and self.wake_timer.when() <= at:
            return
        if self.wake_timer is not None:
            self.wake_timer.cancel()
        self.wake_timer = loop.call_at(at, self._wake)

    def _arm_safety(self) -> None:
        """While this replica has waiters: one dispatch per lease TTL, should an expiry
        notification have been missed (a managed Redis that refuses keyspace events)."""
        self._dispatch_soon(self.cfg.lease_ttl)

    def _wake(self) -> None:
        self.wake_timer = None
        if self.up and not self.closing:
            self._spawn(self._dispatch())
            for slot in set(self.direct_queues.values()):
                self._spawn(self._dispatch(slot))

    async def _dispatch(self, slot: str = "") -> None:
        """Run the queue of ``slot`` ('' or a pool account: the pool's queue)."""
        try:
            reply = await self.scripts("dispatch", self.prefix, self.ttl_ms, self._gap_ms(), self.replica, slot)
        except REDIS_ERRORS as exc:
            self._lost(exc)
            return
        rest = reply[0]
        self._deliver(reply[1:])
        if self.waiting:
            if int(rest) >= 0:
                self._dispatch_soon(int(rest) / 1000 + 0.005)
            else:
                self._arm_safety()

    def _spawn(self, coro: Any) -> None:
        self.pool.spawn(coro)

    def queued(self) -> int:
        return len(self.waiting)

    def snapshot(self) -> dict[str, Any]:
        return {
            "queued": len(self.waiting),
            "direct_tokens": len(self.direct_groups),
            "shared": {"redis": self.where, "connected": self.up, "replica": self.replica},
        }

    # --- accounts and health --------------------------------------------------

    async def _register(self, accounts: list[Account]) -> None:
        if accounts:
            await self.scripts("register", self.prefix, *[a.key for a in accounts])

    async def accounts_updated(self, added: list[Account], removed: list[Account]) -> None:
        if not self.up:
            return  # joined on reconnect (register runs then); removed ones stay listed until then
        try:
            await self._register(added)
            if removed:
                await self.scripts("unregister", self.prefix, *[a.key for a in removed])
        except REDIS_ERRORS as exc:
            self._lost(exc)

    def register_token(self, account: Account, token: str) -> None:
        super().register_token(account, token)
        if self.up:
            self._spawn(self._share_owner(token_digest(token), account.key))

    async def _share_owner(self, digest: str, key: str) -> None:
        try:
            await self.scripts("own", self.prefix, key, digest)
        except REDIS_ERRORS as exc:
            self._lost(exc)

    def health_changed(self, account: Account) -> None:
        if not self.up:
            return
        now = time.monotonic()
        rest = -1.0 if account.recovers_at() is None else max(0.0, account.until - now)
        mute = "" if account.mute_until_epoch is None else repr(account.mute_until_epoch)
        self._spawn(self._share_health(account.key, account.health.value, rest, account.reason, mute))

    async def _share_health(self, slot: str, state: str, rest: float, reason: str, mute: str) -> None:
        try:
            await self.scripts("health", self.prefix, slot, state, rest, reason, mute, self.ttl_ms, self._gap_ms())
        except REDIS_ERRORS as exc:
            self._lost(exc)

    async def _load_health(self) -> None:
        await self._refresh_health([a.key for a in self.pool.accounts])

    async def _refresh_health(self, slots: list[str]) -> None:
        """Take the shared health of these accounts into this replica's view."""
        by_key = {a.key: a for a in self.pool.accounts}
        wanted = [s for s in slots if s in by_key]
        if not wanted:
            return
        try:
            rows = await self.scripts("read_health", self.prefix, *wanted)
        except REDIS_ERRORS as exc:
            self._lost(exc)
            return
        now = time.monotonic()
        for slot, (state, reason, mute, left) in zip(wanted, rows):
            _apply_health(by_key[slot], state, reason, mute, int(left), now)
        if self.waiting:
            self._dispatch_soon(0.0)


def _apply_health(account: Account, state: str, reason: str, mute: str, left_ms: int, now: float) -> None:
    """Another replica's word on an account's health, as this replica's own state."""
    if state == Health.READY.value or left_ms == 0:
        if account.health is not Health.READY and account.health is not Health.LOGIN_FAILED:
            account.set_ready()
        return
    if left_ms < 0:
        account.disable(reason)
        return
    until = now + left_ms / 1000
    if state == Health.MUTED.value:
        account.health = Health.MUTED
        account.mute_until_epoch = float(mute) if mute else None
    else:
        account.health = Health.COOLING
    account.reason = reason
    account.until = max(account.until, until) if account.health is not Health.READY else until


class RedisTokenStore:
    """Tokens shared by every replica: an account logs in once for the whole cluster."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.scripts = Scripts(redis)
        self.holder = secrets.token_hex(6)
        self.broker: RedisBroker | None = None  # set by the pool: token news arrive on its listener

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def fetch(self, key: str) -> str | None:
        try:
            return await self.redis.hget(self.prefix + "tokens", key)
        except REDIS_ERRORS as exc:
            raise _unreachable(exc) from None

    def get(self, key: str) -> str | None:  # pragma: no cover - the file store's synchronous read
        raise NotImplementedError("the shared token store is read with fetch()")

    async def put(self, key: str, token: str) -> None:
        try:
            await self.scripts("put_token", self.prefix, key, token, token_digest(token))
        except REDIS_ERRORS as exc:
            log.warning("could not share the token of %s through Redis: %s", key.split(":")[0], exc)

    async def drop(self, key: str, token: str | None = None) -> None:
        try:
            if token is None:
                await self.redis.hdel(self.prefix + "tokens", key)
            else:
                await self.scripts("drop_token", self.prefix, key, token)
        except REDIS_ERRORS as exc:
            log.warning("could not drop a dead token in Redis: %s", exc)

    @contextlib.asynccontextmanager
    async def login_lock(self, key: str) -> AsyncIterator[None]:
        """One login per account for the whole cluster: the others wait for its token."""
        lock = f"{self.prefix}login:{key}"
        deadline = time.monotonic() + LOGIN_LOCK_SECONDS
        while True:
            try:
                if await self.redis.set(lock, self.holder, nx=True, px=int(LOGIN_LOCK_SECONDS * 1000)):
                    break
            except REDIS_ERRORS as exc:
                raise _unreachable(exc) from None
            if time.monotonic() > deadline:
                raise DeepSeekError(ErrorKind.UNAVAILABLE, "another replica's login of this account did not finish")
            # Woken when the other replica's login ends (its unlock publishes), or after a while.
            event = self.broker.token_events.setdefault(key, asyncio.Event()) if self.broker else asyncio.Event()
            event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await event.wait()
        try:
            yield
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.scripts("unlock", self.prefix, key, self.holder)


def _unreachable(exc: BaseException) -> DeepSeekError:
    # A login cannot be coordinated without Redis: fail this attempt (the account rests
    # a few seconds) rather than log in behind the other replicas' backs.
    return DeepSeekError(ErrorKind.UNAVAILABLE, f"Redis unreachable, cannot coordinate logins: {exc}")
