"""Account pool logic: leases, FIFO queue, health, re-login, prepared tickets, token store.

These use a fake upstream client so each rule is checked in isolation; the
end-to-end pool tests over real sockets against the simulator are in
test_pool_sim.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ds2a.pool.errors import PoolError
from ds2a.config import Config, load_config
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.deepseek.pow import Challenge, deepseek_hash_v1
from ds2a.pool import AccountPool, Health
from ds2a.pool.tokens import TokenStore, write_atomic


class FakeClient:
    """Enough of DeepSeekClient for the pool: login, sessions, real (tiny) challenges."""

    def __init__(self) -> None:
        self.logins: list[str] = []
        self.sessions: list[str] = []
        self.deleted: list[str] = []
        self.challenges = 0
        self.valid_tokens: set[str] = set()
        self.wrong_passwords: set[str] = set()
        self.expire_in_ms = 300_000
        self.fail_session: DeepSeekError | None = None

    async def login(self, *, email: str | None, mobile: str | None, area_code: str | None, password: str) -> str:
        who = email or mobile or ""
        self.logins.append(who)
        if who in self.wrong_passwords:
            raise DeepSeekError(ErrorKind.LOGIN_FAILED, "PASSWORD_OR_USER_NAME_IS_WRONG", biz_code=2)
        token = f"tok-{who}-{len(self.logins)}"
        self.valid_tokens.add(token)
        return token

    def _check(self, token: str) -> None:
        if token not in self.valid_tokens:
            raise DeepSeekError(ErrorKind.AUTH, "Authorization Failed (invalid token)", code=40003)

    async def create_session(self, token: str) -> str:
        self._check(token)
        if self.fail_session is not None:
            raise self.fail_session
        session_id = f"s{len(self.sessions)}"
        self.sessions.append(session_id)
        return session_id

    async def delete_session(self, token: str, session_id: str) -> None:
        self.deleted.append(session_id)

    async def create_pow_challenge(self, token: str, target_path: str) -> Challenge:
        self._check(token)
        self.challenges += 1
        salt = secrets.token_hex(10)
        expire_at = int(time.time() * 1000) + self.expire_in_ms
        answer = 3
        digest = deepseek_hash_v1(f"{salt}_{expire_at}_{answer}".encode()).hex()
        return Challenge.from_json(
            {
                "algorithm": "DeepSeekHashV1",
                "challenge": digest,
                "salt": salt,
                "signature": "s" * 64,
                "difficulty": 10,
                "expire_at": expire_at,
                "expire_after": self.expire_in_ms,
                "target_path": target_path,
            }
        )


def make_config(tmp_path: Path, n: int = 2, **pool: Any) -> Config:
    accounts = [{"email": f"user{i}@example.com", "password": "pw"} for i in range(n)]
    settings = {"token_store": str(tmp_path / "tokens.json"), "prepare": False, **pool}
    return load_config(env={}, overrides={"accounts": accounts, "pool": settings})


async def started_pool(cfg: Config, client: FakeClient | None = None) -> tuple[AccountPool, FakeClient]:
    client = client or FakeClient()
    pool = AccountPool(cfg, client)  # type: ignore[arg-type]
    await pool.start()
    return pool, client


async def test_spreads_load_to_the_account_idle_longest(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=3))
    seen = []
    for _ in range(6):
        lease = await pool.acquire()
        seen.append(lease.account)
        lease.release()
    assert seen[:3] == seen[3:]
    assert len(set(seen[:3])) == 3


async def test_one_generation_per_account_and_fifo_order(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=2))
    first = [await pool.acquire(), await pool.acquire()]
    assert {lease.account for lease in first} == set(pool.accounts)
    order: list[int] = []

    async def wait(i: int) -> None:
        lease = await pool.acquire()
        order.append(i)
        assert lease.account.inflight == 1
        await asyncio.sleep(0)
        lease.release()

    tasks = [asyncio.create_task(wait(i)) for i in range(6)]
    await asyncio.sleep(0.01)
    assert order == [] and len(pool.group.waiters) == 6
    for lease in first:
        lease.release()
    await asyncio.gather(*tasks)
    assert order == list(range(6))
    assert all(a.inflight == 0 for a in pool.accounts)


async def test_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1, queue_max=2))
    held = await pool.acquire()
    waiting = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(PoolError) as info:
        await pool.acquire()
    assert info.value.status == 429
    retry = str(int(info.value.retry_after))
    assert int(retry) >= 1
    held.release()
    for task in waiting:
        (await task).release()


async def test_expired_wait_answers_429(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    held = await pool.acquire()
    with pytest.raises(PoolError) as info:
        await pool.acquire(timeout=0.05)
    assert info.value.status == 429 and info.value.retry_after is not None
    assert not pool.group.waiters
    held.release()


async def test_cancelled_waiter_leaves_the_queue_at_once(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    held = await pool.acquire()
    gone = asyncio.create_task(pool.acquire())
    stays = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0)
    assert len(pool.group.waiters) == 1
    held.release()
    lease = await stays
    assert lease.account.inflight == 1
    lease.release()
    assert pool.accounts[0].inflight == 0


async def test_lease_handed_over_while_cancelled_goes_back(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    held.release()  # resolves the waiter's future in this very turn...
    waiter.cancel()  # ...and the caller goes away before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.accounts[0].inflight == 0
    assert not pool.leases


async def test_release_is_idempotent(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    lease = await pool.acquire()
    lease.release()
    lease.release()
    assert pool.accounts[0].inflight == 0


async def test_direct_tokens_get_one_generation_each(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=0))
    a1 = await pool.acquire(direct_token="token-a")
    b1 = await pool.acquire(direct_token="token-b")  # another token is independent
    a2 = asyncio.create_task(pool.acquire(direct_token="token-a"))
    await asyncio.sleep(0.01)
    assert not a2.done()
    a1.release()
    lease = await a2
    assert lease.token == "token-a" and lease.direct
    lease.release()
    b1.release()


async def test_no_accounts_is_a_clear_503(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=0))
    with pytest.raises(PoolError) as info:
        await pool.acquire()
    assert info.value.status == 503 and "no DeepSeek accounts" in info.value.message


async def test_rate_limited_account_cools_down_then_returns(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=2, cooldown=0.2))
    lease = await pool.acquire()
    limited = lease.account
    lease.report(DeepSeekError(ErrorKind.RATE_LIMITED, "Messages too frequent."))
    lease.release()
    assert limited.health is Health.COOLING
    other = await pool.acquire()
    assert other.account is not limited
    blocked = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    assert not blocked.done()  # the cooling account is not handed out...
    back = await blocked  # ...until it recovers, without anyone releasing
    assert back.account is limited and limited.health is Health.READY
    back.release()
    other.release()


async def test_all_resting_beyond_the_wait_answers_at_once(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1, cooldown=600))
    lease = await pool.acquire()
    lease.report(DeepSeekError(ErrorKind.RATE_LIMITED, "Messages too frequent."))
    lease.release()
    with pytest.raises(PoolError) as info:
        await pool.acquire(timeout=5)
    assert info.value.status == 429
    assert 590 <= int(info.value.retry_after) <= 600


async def test_muted_until_upstream_time(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    lease = await pool.acquire()
    mute_until = time.time() + 3600
    lease.report(DeepSeekError(ErrorKind.MUTED, "user is muted", biz_code=5, mute_until=mute_until))
    lease.release()
    snap = pool.snapshot()["accounts"][0]
    assert snap["status"] == "muted" and snap["mute_until"] == mute_until
    assert 3500 < snap["retry_in"] <= 3600


async def test_wrong_password_disables_without_a_login_loop(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, n=1)
    client = FakeClient()
    client.wrong_passwords.add("user0@example.com")
    pool, _ = await started_pool(cfg, client)
    lease = await pool.acquire()
    with pytest.raises(DeepSeekError) as info:
        await lease.ticket()
    lease.report(info.value)
    lease.release()
    assert pool.accounts[0].health is Health.LOGIN_FAILED
    assert "PASSWORD_OR_USER_NAME_IS_WRONG" in pool.accounts[0].reason
    with pytest.raises(PoolError) as info2:
        await pool.acquire()
    assert info2.value.status == 503 and "disabled" in info2.value.message
    assert client.logins == ["user0@example.com"]


async def test_dead_token_logs_in_again_once_then_cools(tmp_path: Path) -> None:
    pool, client = await started_pool(make_config(tmp_path, n=1, cooldown=60))
    account = pool.accounts[0]
    account.token = "stale"
    account.relogged_at = -1e9
    lease = await pool.acquire()
    ticket = await lease.ticket()  # stale token -> AUTH -> log in again -> ticket
    assert ticket.session_id and client.logins == ["user0@example.com"]
    lease.release()
    # The fresh token dies at once: no second login, the account rests instead.
    client.valid_tokens.clear()
    lease = await pool.acquire()
    with pytest.raises(DeepSeekError) as info:
        await lease.ticket()
    lease.report(info.value)
    lease.release()
    assert client.logins == ["user0@example.com"]
    assert account.health is Health.COOLING and "token invalid" in account.reason


async def test_login_token_is_persisted_and_reused_after_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, n=1)
    pool, client = await started_pool(cfg)
    lease = await pool.acquire()
    await lease.ticket()
    lease.release()
    await pool.close()
    stored = json.loads((tmp_path / "tokens.json").read_text())
    token = stored["tokens"]["email:user0@example.com"]["token"]
    assert token in client.valid_tokens
    assert oct((tmp_path / "tokens.json").stat().st_mode & 0o777) == "0o600"
    again, client2 = await started_pool(cfg, client)
    lease = await again.acquire()
    await lease.ticket()
    lease.release()
    assert client.logins == ["user0@example.com"]  # no second login after the restart
    await again.close()


async def test_prepared_tickets_are_ready_and_never_reused(tmp_path: Path) -> None:
    pool, client = await started_pool(make_config(tmp_path, n=1, prepare=True))
    account = pool.accounts[0]
    await asyncio.wait_for(_until(lambda: account.ticket is not None), 5)
    ready = account.ticket
    lease = await pool.acquire()
    ticket = await lease.ticket()
    assert ticket is ready  # the prepared one, no setup on the request path
    await asyncio.sleep(0.05)
    # Nothing is prepared while the answer may still be starting: it would compete with it...
    assert account.ticket is None and account.preparing is None
    pool.schedule_prepare(account)  # ...but once the first text is on its way (dispatch does this)
    await asyncio.wait_for(_until(lambda: account.ticket is not None), 5)
    assert account.ticket is not None and account.ticket.pow_response != ticket.pow_response
    lease.release()
    await pool.close()
    assert account.ticket is None
    assert client.deleted  # the unused prepared session was cleaned up


async def test_challenge_is_refreshed_before_it_expires(tmp_path: Path) -> None:
    client = FakeClient()
    client.expire_in_ms = 1_300  # expires 0.3 s after the 1 s margin below
    pool, _ = await started_pool(make_config(tmp_path, n=1, prepare=True, refresh_margin=1.0), client)
    account = pool.accounts[0]
    await asyncio.wait_for(_until(lambda: account.ticket is not None), 5)
    first = account.ticket
    await asyncio.wait_for(_until(lambda: account.ticket is not None and account.ticket is not first), 5)
    assert account.ticket is not None
    assert account.ticket.pow_response != first.pow_response  # a new challenge...
    assert account.ticket.session_id == first.session_id  # ...on the same unused session
    assert client.challenges >= 2
    await pool.close()


async def test_min_gap_spaces_generations_on_one_account(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1, min_gap=0.2))
    lease = await pool.acquire()
    lease.release()
    nxt = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    assert not nxt.done()  # free, but too soon after the last start
    (await nxt).release()


async def test_lease_handed_over_as_the_wait_expires_goes_back(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire(timeout=0.05))
    await asyncio.sleep(0.01)
    assert len(pool.group.waiters) == 1
    time.sleep(0.06)  # the wait's deadline passes while the loop is blocked...
    # ...so in the next turn the release runs first (handing the lease over), then the timeout.
    asyncio.get_running_loop().call_soon(held.release)
    with pytest.raises(PoolError) as info:
        await waiter
    assert info.value.status == 429
    assert pool.accounts[0].inflight == 0 and not pool.leases


async def test_wrong_password_found_by_the_preparation_is_not_tried_again_by_the_request(tmp_path: Path) -> None:
    class SlowLogin(FakeClient):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def login(self, **kwargs: Any) -> str:
            await self.gate.wait()
            return await super().login(**kwargs)

    client = SlowLogin()
    client.wrong_passwords.add("user0@example.com")
    pool, _ = await started_pool(make_config(tmp_path, n=1, prepare=True), client)
    lease = await pool.acquire()  # while the background login is still out
    ticket = asyncio.create_task(lease.ticket())
    await asyncio.sleep(0.01)
    client.gate.set()
    with pytest.raises(DeepSeekError) as info:
        await ticket
    assert info.value.kind is ErrorKind.LOGIN_FAILED
    lease.release()
    assert client.logins == ["user0@example.com"]
    assert pool.accounts[0].health is Health.LOGIN_FAILED
    await pool.close()


async def test_first_token_dying_logs_in_again_once(tmp_path: Path) -> None:
    pool, client = await started_pool(make_config(tmp_path, n=1, cooldown=60))
    account = pool.accounts[0]
    lease = await pool.acquire()
    await lease.ticket()  # the first login
    lease.release()
    client.valid_tokens.clear()  # that token dies, long before it could be called "fresh"
    lease = await pool.acquire()
    await lease.ticket()  # replaced by logging in again
    lease.release()
    assert client.logins == ["user0@example.com"] * 2 and account.health is Health.READY
    client.valid_tokens.clear()  # the replacement dies at once: rest, no third login
    lease = await pool.acquire()
    with pytest.raises(DeepSeekError) as info:
        await lease.ticket()
    lease.report(info.value)
    lease.release()
    assert client.logins == ["user0@example.com"] * 2
    assert account.health is Health.COOLING


async def test_auth_error_about_an_already_replaced_token_changes_nothing(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    account = pool.accounts[0]
    lease = await pool.acquire()
    await lease.ticket()
    used = lease.token
    account.token = "replaced-meanwhile"  # a preparation beside this answer logged in again
    account.relogged_at = time.monotonic()
    lease.report(DeepSeekError(ErrorKind.AUTH, "Authorization Failed (invalid token)"), token=used)
    assert account.health is Health.READY and account.token == "replaced-meanwhile"
    lease.report(DeepSeekError(ErrorKind.AUTH, "Authorization Failed (invalid token)"), token=account.token)
    assert account.health is Health.COOLING, "the same error about the current token does count"
    lease.release()


async def test_challenge_due_on_arrival_is_not_fetched_again_in_a_loop(tmp_path: Path) -> None:
    client = FakeClient()
    client.expire_in_ms = 500  # shorter than the 1 s margin: every ticket is born due
    pool, _ = await started_pool(make_config(tmp_path, n=1, prepare=True, refresh_margin=1.0), client)
    await asyncio.sleep(0.2)
    assert client.challenges <= 1
    lease = await pool.acquire()
    ticket = await lease.ticket()  # made on the request's time instead, on the kept session
    assert ticket.session_id == client.sessions[0]
    lease.release()
    await pool.close()


async def test_failed_background_preparation_is_not_left_unretrieved(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        client = FakeClient()
        client.fail_session = DeepSeekError(ErrorKind.UNAVAILABLE, "connection refused")
        pool, _ = await started_pool(make_config(tmp_path, n=1, prepare=True), client)
        await asyncio.wait_for(_until(lambda: not pool.tasks), 5)
        assert pool.accounts[0].health is Health.COOLING
        gc.collect()
        await asyncio.sleep(0)
        # Only what this pool left behind: garbage of earlier tests (an SDK client closing on
        # a loop that is gone) may be collected here too and is not the pool's.
        ours = [c for c in reported if isinstance(c.get("exception"), DeepSeekError) or "ds2a" in repr(c.get("future"))]
        assert not ours, ours
        await pool.close()
    finally:
        loop.set_exception_handler(None)


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


# --- token store ---------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_replace_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens.json"
    write_atomic(path, b'{"format": 1, "tokens": {}}')

    def broken(*args: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert json.loads(path.read_text()) == {"format": 1, "tokens": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.json"]  # no temp file left


def test_unreadable_store_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    store = TokenStore(path)
    store.load()
    assert store.get("email:x") is None


WRITER = """
import sys
from pathlib import Path
from ds2a.pool.tokens import write_atomic
path = Path(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    i += 1
    write_atomic(path, ('{"format": 1, "tokens": {"k": {"token": "%d", "pad": "%s"}}}' % (i, "x" * (i % 5000))).encode())
"""


def test_crash_during_writes_leaves_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.03 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = json.loads(path.read_text())  # old or new, never torn
        assert int(data["tokens"]["k"]["token"]) >= 1
        store = TokenStore(path)
        store.load()
        assert store.get("k") == data["tokens"]["k"]["token"]


# --- one generation per upstream account, whatever token reaches it ---------------------------


async def test_a_pool_accounts_token_as_bearer_waits_for_that_accounts_lease(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    account = pool.accounts[0]
    lease = await pool.acquire()
    await lease.ticket()  # logs in: the pool now knows the account's token
    assert account.token is not None
    mine = asyncio.create_task(pool.acquire(direct_token=account.token))
    await asyncio.sleep(0.01)
    assert not mine.done(), "the caller's token is the pool account's: it waits for its lease"
    lease.release()
    direct = await mine
    assert direct.account is account and direct.direct and direct.token == account.token
    with pytest.raises(PoolError):  # and the pool waits for the direct caller's answer
        await pool.acquire(timeout=0.05)
    direct.release()
    await pool.close()


async def test_a_direct_answer_begun_before_the_pool_learnt_the_token_holds_the_account(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    account = pool.accounts[0]
    direct = await pool.acquire(direct_token="same-upstream-account")  # unknown to the pool yet
    pool.set_token(account, "same-upstream-account")  # the pool's login returns that very token
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    assert not waiting.done(), "the direct caller's answer runs on that account"
    direct.release()
    lease = await waiting
    assert lease.account is account
    lease.release()
    await pool.close()
