"""The pool's side of the 2026 drift, as units: the upstream gate, account health for the
new answers, and why a solved challenge can never be rejected for ds2a's own doing.

The pool runs against test_pool.py's fake client; the gate against a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from ds2a.deepseek import pow as pow_
from ds2a.deepseek.client import LoginToken
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool import Health
from ds2a.pool.gate import PROBE_WINDOW, PoolBlocked, UpstreamGate
from test_pool import FakeClient, make_config, started_pool

BLOCK = DeepSeekError(ErrorKind.BLOCKED, "chat/completion: blocked (AWS WAF captcha, HTTP 405)", http_status=405)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the gate ------------------------------------------------------------------------------------


def test_gate_backs_off_with_a_doubling_delay_and_one_probe_at_a_time() -> None:
    clock = Clock()
    gate = UpstreamGate(10.0, 35.0, clock=clock)
    gate.admit()  # open: nothing happens
    gate.blocked(BLOCK)
    assert gate.closed() and gate.snapshot()["blocks_in_a_row"] == 1
    with pytest.raises(DeepSeekError) as refused:
        gate.admit()
    assert refused.value.kind is ErrorKind.BLOCKED and refused.value.retry_after == 10
    clock.now += 5
    gate.blocked(BLOCK)  # a call that was already in flight: the same block, not a new one
    assert gate.snapshot()["blocks_in_a_row"] == 1
    clock.now += 5
    gate.admit()  # the probe
    with pytest.raises(DeepSeekError):
        gate.admit()  # everyone else waits for it
    gate.blocked(BLOCK)
    assert gate.snapshot()["blocks_in_a_row"] == 2 and gate.snapshot()["retry_in"] == 20.0
    assert gate.snapshot()["backoff"] == 20.0
    clock.now += 20
    gate.admit()
    gate.blocked(BLOCK)
    assert gate.snapshot()["retry_in"] == 35.0  # capped at backoff_max
    clock.now += 35
    gate.admit()
    gate.passed()
    assert not gate.closed() and gate.snapshot()["status"] == "ok"
    gate.admit()
    gate.admit()


def test_a_probe_that_never_reports_back_does_not_keep_the_gate_shut() -> None:
    clock = Clock()
    gate = UpstreamGate(1.0, 10.0, clock=clock)
    gate.blocked(BLOCK)
    clock.now += 1
    gate.admit()
    with pytest.raises(DeepSeekError):
        gate.admit()
    clock.now += PROBE_WINDOW
    gate.admit()


def test_gate_honours_a_longer_retry_after_and_refuses_requests_with_one_message() -> None:
    clock = Clock()
    gate = UpstreamGate(5.0, 600.0, clock=clock)
    gate.blocked(DeepSeekError(ErrorKind.BLOCKED, "blocked", retry_after=120.0))
    assert gate.snapshot()["retry_in"] == 120.0
    with pytest.raises(PoolBlocked) as refused:
        gate.check()
    assert refused.value.status == 503 and refused.value.code == "upstream_blocked"
    assert refused.value.retry_after == 120 and "blocking requests from this host" in refused.value.message


# --- account health for the new answers -----------------------------------------------------------


async def test_a_block_changes_no_account_and_drops_no_token(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    account = pool.accounts[0]
    account.token = "tok"
    pool.report(account, BLOCK, token="tok")
    assert account.health is Health.READY and account.token == "tok" and not account.replacing_token


async def test_a_rejected_challenge_does_not_mark_the_account(tmp_path: Path) -> None:
    pool, _ = await started_pool(make_config(tmp_path, n=1))
    account = pool.accounts[0]
    pool.report(account, DeepSeekError(ErrorKind.POW, "INVALID_POW_RESPONSE", code=40301))
    assert account.health is Health.READY and account.usable(time.monotonic())


async def test_a_banned_login_bans_the_account_for_good(tmp_path: Path) -> None:
    class Banned(FakeClient):
        async def login(self, **kwargs: Any) -> str:
            self.logins.append(kwargs["email"])
            raise DeepSeekError(ErrorKind.BANNED, "DeepSeek has banned this account (USER_IS_BANNED)", biz_code=10)

    pool, client = await started_pool(make_config(tmp_path, n=1), Banned())
    lease = await pool.acquire()
    with pytest.raises(DeepSeekError) as info:
        await lease.ticket()
    lease.report(info.value)
    lease.release()
    account = pool.accounts[0]
    assert account.health is Health.BANNED and account.recovers_at() is None
    assert pool.snapshot()["accounts"][0]["status"] == "banned"
    with pytest.raises(Exception) as refused:
        await pool.acquire(timeout=0.1)
    assert "disabled" in str(refused.value) and client.logins == ["user0@example.com"]
    await pool.close()


async def test_a_muted_login_mutes_at_once_and_keeps_the_token(tmp_path: Path) -> None:
    until = time.time() + 600

    class MutedLogin(FakeClient):
        async def login(self, **kwargs: Any) -> str:
            token = LoginToken(await super().login(**kwargs))
            token.muted, token.mute_until = True, until
            return token

    pool, client = await started_pool(make_config(tmp_path, n=1, prepare=True), MutedLogin())
    account = pool.accounts[0]
    for _ in range(200):
        if account.health is Health.MUTED:
            break
        await asyncio.sleep(0.005)
    assert account.health is Health.MUTED and account.mute_until_epoch == until
    assert account.token and type(account.token) is str  # kept for when the mute ends
    assert client.sessions == [] and client.challenges == 0  # nothing prepared for a muted account
    await pool.close()


# --- a solved challenge is never stale or sent twice ---------------------------------------------------


async def test_two_leases_waiting_on_one_preparation_never_share_a_challenge(tmp_path: Path) -> None:
    pool, client = await started_pool(make_config(tmp_path, n=1, prepare=True, max_inflight_per_account=2))
    first, second = await pool.acquire(), await pool.acquire()
    assert pool.accounts[0].preparing is not None  # both wait on the preparation already running
    tickets = await asyncio.gather(first.ticket(), second.ticket())
    assert tickets[0].pow_response != tickets[1].pow_response
    assert client.challenges == 2
    first.release()
    second.release()
    await pool.close()


@pytest.mark.parametrize("skew", [-3600.0, 0.0, 3600.0])
async def test_a_challenges_lifetime_counts_from_when_it_was_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Solving takes time (seconds in pure Python) and clocks disagree: neither may make
    ds2a send a challenge the server already considers expired."""

    class Skewed(FakeClient):
        async def create_pow_challenge(self, token: str, target_path: str) -> pow_.Challenge:
            challenge = await super().create_pow_challenge(token, target_path)
            # The server's clock, `skew` seconds off this host's, stamps expire_at.
            return dataclasses.replace(challenge, expire_at=challenge.expire_at + int(skew * 1000))

    async def slow_solve(challenge: pow_.Challenge, background: bool = False) -> int:
        await asyncio.sleep(0.6)
        return 3

    monkeypatch.setattr(pow_, "solve_async", slow_solve)
    client = Skewed()
    client.expire_in_ms = 1000
    pool, _ = await started_pool(make_config(tmp_path, n=1, refresh_margin=0.2), client)
    account = pool.accounts[0]
    asked = time.monotonic()
    ticket = await pool.prepare(account)
    # Valid by the server until asked + 1.0 s at the latest; minus the margin.
    assert ticket.expires_at <= asked + 1.0 - 0.2 + 0.05
    assert ticket.expires_at >= asked + 1.0 - 0.2 - 0.5  # and not thrown away either
    await pool.close()
