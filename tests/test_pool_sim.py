"""The account pool's promises, end to end: raw clients -> gateway -> simulator, over loopback.

Each test starts its own simulator and gateway (``harness.Stack``, a few ms) so account
health from one scenario never leaks into another. Clients are raw sockets on the test's
own event loop, so a test can abandon a request at any point (queued, during setup,
mid-stream) exactly as a real client that goes away would. State is read from the
stack's loop (``on_loop``), never from the test thread directly.

Unit-level rules (FIFO with exclusions, races between a hand-over and a cancellation,
token store atomicity) are in test_pool.py with a fake client.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ds2a.app import Gateway
from ds2a.deepseek import pow as pow_
from ds2a.sim import SimConfig, expected
from ds2a.sim.bodies import BUSY_HINT, INPUT_TOO_LONG_HINT, RATE_LIMIT_HINT
from harness import KEY, Stack

T = TypeVar("T")
COMPLETION = "/api/v0/chat/completion"
TEXT_CHUNK = re.compile(rb'"(?:reasoning_)?content":"[^"]')  # not the role chunk's empty content
CONTINUE = "/api/v0/chat/continue"


# --- plumbing -----------------------------------------------------------------


async def on_loop(stack: Stack, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the stack's loop without blocking the test's loop (its clients keep reading)."""

    async def wrapper() -> T:
        return fn()

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wrapper(), stack.loop))


async def until(stack: Stack, predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """A bounded wait for a condition on the stack's loop; fails with the pool's state."""
    deadline = time.monotonic() + timeout
    while not await on_loop(stack, predicate):
        if time.monotonic() > deadline:
            snapshot = await on_loop(stack, stack.gateway.pool.snapshot)
            pytest.fail(f"timed out waiting for {what}; pool: {snapshot}")
        await asyncio.sleep(0.002)


def settled(stack: Stack) -> Callable[[], bool]:
    """No lease, no background work, and a ready ticket on every usable account."""
    pool = stack.gateway.pool

    def check() -> bool:
        now = time.monotonic()
        if pool.leases or any(not t.done() for t in pool.tasks):
            return False
        return all(a.ticket is not None and a.ticket.usable(now) for a in pool.accounts if a.usable(now))

    return check


def idle(stack: Stack) -> Callable[[], bool]:
    """Every lease back, nobody queued, every cleanup finished (harness.Stack.wait_idle, awaitable)."""
    pool = stack.gateway.pool

    def check() -> bool:
        cleanups = [t for t in pool.tasks if t.get_coro().__name__ == "_cleanup" and not t.done()]
        return not pool.leases and not pool.group.waiters and not cleanups

    return check


async def counters(stack: Stack) -> dict[str, Any]:
    return await on_loop(stack, stack.sim.counters.snapshot)


async def snapshot(stack: Stack) -> list[dict[str, Any]]:
    """Account health as /admin/accounts shows it, in config order (user0, user1, ...)."""
    return (await on_loop(stack, stack.gateway.pool.snapshot))["accounts"]


async def completions(stack: Stack, path: str = COMPLETION) -> list[tuple[str | None, str | None]]:
    """(account, prompt) of every completion call the simulator received, in arrival order."""
    return await on_loop(stack, lambda: [(r.account, r.prompt) for r in stack.sim.requests if r.path == path])


def inject(stack: Stack, fault: str, account: str | None = None, count: int = 1, **params: Any) -> None:
    stack.inject(fault, account=account, count=count, **params)


def chat(prompt: str, *, stream: bool = False, model: str = "deepseek-chat") -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}


def account_key(i: int) -> str:
    """The simulator's name for the harness's i-th account."""
    return f"email:user{i}@example.com"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[str]:
        return [b[len("data: ") :] for b in self.body.decode().split("\n\n") if b.startswith("data: ")]

    def answer(self) -> tuple[str, str, str | None]:
        """(reasoning, content, finish_reason) of a 200 answer, streamed or not."""
        assert self.status == 200, (self.status, self.body[:500])
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            events = self.events()
            assert events and events[-1] == "[DONE]", events[-3:]
            chunks = [json.loads(e) for e in events[:-1]]
            assert not [c for c in chunks if "error" in c]
            reasoning = content = ""
            finishes = []
            for chunk in chunks:
                for choice in chunk["choices"]:
                    reasoning += choice["delta"].get("reasoning_content") or ""
                    content += choice["delta"].get("content") or ""
                    if choice["finish_reason"]:
                        finishes.append(choice["finish_reason"])
            assert len(finishes) == 1, finishes
            return reasoning, content, finishes[0]
        choice = self.json()["choices"][0]
        return choice["message"].get("reasoning_content") or "", choice["message"]["content"], choice["finish_reason"]


class Call:
    """One request on its own connection, read at the test's pace so it can be abandoned anywhere."""

    def __init__(self, stack: Stack, body: dict[str, Any], *, key: str | None = KEY) -> None:
        self.stack = stack
        self.payload = json.dumps(body).encode()
        self.key = key
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []

    async def open(self) -> Call:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.stack.port)
        head = [
            "POST /v1/chat/completions HTTP/1.1",
            "Host: localhost",
            "Connection: close",
            "Content-Type: application/json",
            f"Content-Length: {len(self.payload)}",
        ]
        if self.key is not None:
            head.append(f"Authorization: Bearer {self.key}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + self.payload)
        await self.writer.drain()
        return self

    async def head(self) -> int:
        if self.status is None:
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    self.headers[name.strip().lower()] = value.strip()
        return self.status

    async def chunk(self) -> bytes:
        """The next piece of the body (one HTTP chunk when chunked), b"" at the end."""
        await self.head()
        if self.headers.get("transfer-encoding") != "chunked":
            data = await self.reader.read()
        else:
            size = int((await self.reader.readline()).strip() or b"0", 16)
            if size == 0:
                return b""
            data = await self.reader.readexactly(size)
            await self.reader.readexactly(2)
        if data:
            self.chunks.append(data)
        return data

    async def content_events(self, n: int) -> None:
        """Read until ``n`` chunks carrying answer or reasoning text have arrived."""
        while len(TEXT_CHUNK.findall(b"".join(self.chunks))) < n:
            if not await self.chunk():
                raise AssertionError(f"stream ended before {n} text chunks: {b''.join(self.chunks)[-300:]!r}")

    async def reply(self, timeout: float = 30.0) -> Reply:
        async with asyncio.timeout(timeout):
            while await self.chunk():
                pass
        self.kill()
        assert self.status is not None
        return Reply(self.status, self.headers, b"".join(self.chunks))

    def kill(self) -> None:
        """The client goes away (FIN; the gateway sees EOF or a reset on its next write)."""
        self.writer.close()


async def request_admin(stack: Stack) -> dict[str, Any]:
    """GET /admin/accounts, what an operator sees."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(
        f"GET /admin/accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", raw[:300]
    return json.loads(body)


async def request(stack: Stack, body: dict[str, Any], *, key: str | None = KEY) -> Reply:
    return await (await Call(stack, body, key=key).open()).reply()


async def assert_serves(stack: Stack, prompt: str, *, stream: bool = False, model: str = "deepseek-chat") -> Reply:
    """One request that must get exactly the simulator's whole answer."""
    reply = await request(stack, chat(prompt, stream=stream, model=model))
    want = expected(prompt, model.startswith("deepseek-reasoner"), False, stack.sim_config)
    reasoning, content, finish = reply.answer()
    assert (reasoning, content, finish) == (want.reasoning, want.answer, "stop")
    return reply


async def assert_every_account_serves(stack: Stack, label: str) -> None:
    """Sequential requests rotate over idle accounts (least recently used first): all must answer."""
    await on_loop(stack, lambda: stack.sim.configure(delay=0.0))  # pacing is not under test here
    n = len(stack.accounts)
    before = len(await completions(stack))
    for i in range(2 * n):
        await assert_serves(stack, f"{label} {i}", stream=i % 2 == 0)
    served = {account for account, _ in (await completions(stack))[before:]}
    assert served == {account_key(i) for i in range(n)}


async def assert_one_generation_per_account(stack: Stack) -> None:
    c = await counters(stack)
    assert c["parallel_violations"] == 0
    assert c["max_active_per_account"] == 1


async def assert_no_generation_running(stack: Stack) -> None:
    await until(stack, idle(stack), "every lease back and every cleanup done")
    # A stopped or cut generation ends at its next step upstream, an instant after the stop.
    await until(stack, lambda: not stack.sim.generations, "the upstream generations to end")
    for account in await snapshot(stack):
        assert account["inflight"] == 0, account
    assert (await on_loop(stack, stack.gateway.pool.snapshot))["queued"] == 0


# --- 1. fair queueing, one generation per account -------------------------------------


async def test_many_clients_on_few_accounts_are_served_in_arrival_order(make_stack: Callable[..., Stack]) -> None:
    accounts, clients = 3, 24
    # A small delay per frame so answers overlap and a real queue forms behind 3 accounts.
    stack = make_stack(accounts=accounts, sim=SimConfig(delay=0.003, answer_tokens=48))
    await until(stack, settled(stack), "tickets ready on every account")
    pool = stack.gateway.pool

    def arrived() -> int:
        # Every arrival is either waiting or has been given an account (no failover here).
        return len(pool.group.waiters) + sum(a.generations for a in pool.accounts)

    calls: list[Call] = []
    peak_queue = 0
    for i in range(clients):
        # Send the next only once this one reached the pool, so arrival order is known.
        calls.append(await Call(stack, chat(f"fifo {i:02d}", stream=i % 2 == 0)).open())
        await until(stack, lambda i=i: arrived() >= i + 1, f"request {i} to reach the pool")  # type: ignore[misc]
        peak_queue = max(peak_queue, await on_loop(stack, lambda: len(pool.group.waiters)))
    replies = await asyncio.gather(*(c.reply() for c in calls))
    for i, reply in enumerate(replies):
        want = expected(f"fifo {i:02d}", False, False, stack.sim_config)
        assert reply.answer() == ("", want.answer, "stop"), i
    assert peak_queue >= accounts, "the test needs a queue to check its order"

    await assert_no_generation_running(stack)
    started = [(account, int((prompt or "").split()[1])) for account, prompt in await completions(stack)]
    assert sorted(i for _, i in started) == list(range(clients)), "each request started exactly once"
    # Per account, leases follow each other, so FIFO means each account serves arrivals in order.
    for key in {account for account, _ in started}:
        served = [i for account, i in started if account == key]
        assert served == sorted(served), (key, served)
    # Across accounts, a request may only be overtaken by ones running beside it on the others.
    position = {i: p for p, (_, i) in enumerate(started)}
    overtaken = [(i, j) for i in range(clients) for j in range(i + accounts, clients) if position[j] < position[i]]
    assert not overtaken, overtaken
    await assert_one_generation_per_account(stack)


# --- 2. clients that go away ------------------------------------------------------------


async def test_clients_killed_queued_in_setup_and_mid_stream_give_every_lease_back(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(accounts=2, sim=SimConfig(delay=0.01))
    await until(stack, settled(stack), "tickets ready on every account")
    pool = stack.gateway.pool

    holders = [await Call(stack, chat(f"holder {i}", stream=True)).open() for i in range(2)]
    for holder in holders:
        await holder.content_events(2)  # both accounts are now mid-stream
    queued = [await Call(stack, chat(f"queued {i}", stream=i == 1)).open() for i in range(3)]
    await until(stack, lambda: len(pool.group.waiters) == 3, "three requests queued")
    queued[0].kill()
    queued[2].kill()
    await until(stack, lambda: len(pool.group.waiters) == 1, "the killed requests to leave the queue")

    stops = (await counters(stack))["stops"]
    for holder in holders:
        holder.kill()  # mid-stream: the accounts go to the one request still waiting, and back
    reply = await queued[1].reply()
    want = expected("queued 1", False, False, stack.sim_config)
    assert reply.answer() == ("", want.answer, "stop")
    await assert_no_generation_running(stack)
    assert (await counters(stack))["stops"] == stops + 2, "each abandoned generation is stopped upstream"

    # During setup: the completion call is out but not even its response head has come back.
    inject(stack, "slow_first_byte", seconds=1.0)
    setup = await Call(stack, chat("abandoned in setup", stream=True)).open()
    await until(
        stack, lambda: any(r.prompt == "abandoned in setup" for r in stack.sim.requests), "the completion call"
    )
    setup.kill()
    await assert_no_generation_running(stack)
    c = await counters(stack)
    assert c["stops"] == stops + 3, "a generation abandoned before its first byte is stopped too"

    prompts = {prompt for _, prompt in await completions(stack)}
    assert "queued 0" not in prompts and "queued 2" not in prompts, "a request killed in the queue costs nothing"
    await assert_one_generation_per_account(stack)
    await assert_every_account_serves(stack, "after kills")


async def test_clients_killed_at_random_points_leave_nothing_behind(make_stack: Callable[..., Stack]) -> None:
    seed = 20260917
    rng = random.Random(seed)
    stack = make_stack(accounts=3, sim=SimConfig(delay=0.004, answer_tokens=40))
    await until(stack, settled(stack), "tickets ready on every account")

    async def client(i: int) -> str:
        stream = rng.random() < 0.6
        plan = rng.choice(["finish", "at once", "after a while"] + (["mid-stream"] if stream else []))
        wait, events = rng.uniform(0.0, 0.3), rng.randint(1, 30)
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        prompt = f"random {i}"
        call = await Call(stack, chat(prompt, stream=stream)).open()
        if plan == "finish":
            want = expected(prompt, False, False, stack.sim_config)
            assert (await call.reply()).answer() == ("", want.answer, "stop")
        elif plan == "at once":
            call.kill()  # most likely still queued
        elif plan == "after a while":
            await asyncio.sleep(wait)  # queued, in setup, or streaming: whatever it is by then
            call.kill()
        else:
            try:
                await call.content_events(events)
            except AssertionError:
                pass  # the answer was shorter than the point picked
            call.kill()
        return plan

    plans = await asyncio.gather(*(client(i) for i in range(18)))
    assert plans.count("finish") >= 1, f"seed {seed}"
    await assert_no_generation_running(stack)
    await assert_one_generation_per_account(stack)
    await assert_every_account_serves(stack, "after random kills")


async def test_shutdown_mid_stream_stops_the_generation_and_frees_the_account(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(accounts=1, sim=SimConfig(delay=0.02), config={"server": {"shutdown_grace": 0.1}})
    await until(stack, settled(stack), "a ready ticket")
    call = await Call(stack, chat("cut by shutdown", stream=True)).open()
    await call.content_events(2)
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(stack.gateway.stop(), stack.loop))
    reply = await call.reply()
    assert reply.status == 200
    last = json.loads(reply.events()[-1])
    assert last["error"]["code"] == "shutting_down", "the client is told, not left with a fake stop"
    assert await on_loop(stack, lambda: not stack.gateway.pool.leases)
    assert await on_loop(stack, lambda: len(stack.sim.generations)) == 0
    assert (await counters(stack))["stops"] == 1


# --- 3. upstream conditions before the first byte ---------------------------------------


async def test_expired_token_logs_in_again_once_and_the_answer_succeeds(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=2)
    await until(stack, settled(stack), "both accounts logged in with tickets")
    assert (await counters(stack))["logins"] == 2
    inject(stack, "expired_token")  # the next authenticated call: this request's completion
    await assert_serves(stack, "token expired", stream=True)
    await until(stack, settled(stack), "the account logged in again with a new ticket")
    c = await counters(stack)
    # The completion and, at most, the next ticket's call being prepared beside it.
    assert 1 <= c["auth_failures"] <= 2
    assert c["logins"] == 3, "one login to replace the dead token"
    for account in await snapshot(stack):
        assert account["status"] == "ready" and account["logged_in"], account
    await assert_every_account_serves(stack, "after relogin")
    assert (await counters(stack))["logins"] == 3


async def test_wrong_password_disables_that_account_without_a_login_loop(make_stack: Callable[..., Stack]) -> None:
    # user0 is the first account a request picks (its login may still be in flight; the
    # unit test in test_pool.py pins that race down).
    stack = make_stack(accounts=2, sim=SimConfig(accounts={"user0@example.com": "another-password"}))
    await assert_serves(stack, "first request", stream=True)
    await until(stack, settled(stack), "user1 ready")
    admin = await request_admin(stack)
    bad, good = admin["accounts"]
    assert bad["status"] == "login_failed" and "PASSWORD_OR_USER_NAME_IS_WRONG" in (bad["reason"] or "")
    assert good["status"] == "ready"
    for i in range(4):
        await assert_serves(stack, f"served by the other account {i}")
    c = await counters(stack)
    assert c["login_failures"] == 1, "a wrong password is tried once, not in a loop"
    assert {account for account, _ in await completions(stack)} == {account_key(1)}


async def test_muted_account_rests_until_the_upstream_mute_until(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=2)
    await until(stack, settled(stack), "tickets ready")
    inject(stack, "muted", seconds=1.0)
    await assert_serves(stack, "hits a muted account", stream=True)
    muted = [a for a in (await snapshot(stack)) if a["status"] == "muted"]
    assert len(muted) == 1
    index = next(i for i, a in enumerate(await snapshot(stack)) if a["status"] == "muted")
    upstream_until = await on_loop(stack, lambda: stack.sim.account(f"user{index}@example.com").mute_until)
    assert muted[0]["mute_until"] == pytest.approx(upstream_until, abs=0.01)
    assert "user is muted" in muted[0]["reason"]
    before = len(await completions(stack))
    for i in range(3):
        await assert_serves(stack, f"while muted {i}")
    assert {a for a, _ in (await completions(stack))[before:]} == {account_key(1 - index)}
    assert (await counters(stack))["muted_rejections"] == 1, "a muted account is not tried again"
    await until(stack, lambda: stack.gateway.pool.snapshot()["accounts"][index]["status"] == "ready", "mute to end")
    await assert_every_account_serves(stack, "after the mute")


async def test_rate_limited_account_cools_for_the_cooldown_then_serves_again(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(accounts=2, config={"pool": {"cooldown": 0.5}})
    await until(stack, settled(stack), "tickets ready")
    inject(stack, "rate_limit")
    await assert_serves(stack, "hits a rate limit", stream=True)
    cooling = [a for a in await snapshot(stack) if a["status"] == "cooling"]
    assert len(cooling) == 1 and RATE_LIMIT_HINT["content"] in cooling[0]["reason"]
    assert 0 < cooling[0]["retry_in"] <= 0.5
    await until(stack, lambda: all(a["status"] == "ready" for a in stack.gateway.pool.snapshot()["accounts"]), "rest")
    await assert_every_account_serves(stack, "after the cooldown")
    assert (await counters(stack))["hints"] == 1


async def test_busy_account_hands_the_request_to_another(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=2)
    await until(stack, settled(stack), "tickets ready")
    inject(stack, "busy")
    reply = await assert_serves(stack, "hits a busy account")
    assert reply.status == 200
    cooling = [a for a in await snapshot(stack) if a["status"] == "cooling"]
    assert len(cooling) == 1 and BUSY_HINT["content"] in cooling[0]["reason"]
    c = await counters(stack)
    assert c["hints"] == 1 and c["completions"] == 1 and c["finished"] == 1
    await assert_one_generation_per_account(stack)


@pytest.mark.parametrize("stream", [True, False])
async def test_connection_dropped_before_the_first_text_fails_over(
    make_stack: Callable[..., Stack], stream: bool
) -> None:
    stack = make_stack(accounts=2)
    await until(stack, settled(stack), "tickets ready")
    inject(stack, "drop", frames=1)  # `ready`, then a TCP reset
    reply = await assert_serves(stack, "dropped early", stream=stream)
    if stream:
        roles = [e for e in reply.events()[:-1] if json.loads(e)["choices"][0]["delta"].get("role")]
        assert len(roles) == 1, "one clean answer: the failed attempt left no trace"
    c = await counters(stack)
    assert c["drops"] == 1 and c["completions"] == 2 and c["finished"] == 1
    assert [a["status"] for a in await snapshot(stack)].count("cooling") == 1
    await assert_no_generation_running(stack)


@pytest.mark.parametrize("stream", [True, False])
async def test_all_accounts_failing_give_one_clean_error_then_the_queue_waits_for_recovery(
    make_stack: Callable[..., Stack], stream: bool
) -> None:
    stack = make_stack(accounts=2, config={"pool": {"cooldown": 1.0}})
    await until(stack, settled(stack), "tickets ready")
    inject(stack, "rate_limit", count=2)
    reply = await request(stack, chat("everyone is limited", stream=stream))
    assert reply.status == 429
    assert reply.headers["content-type"].startswith("application/json"), "an error before streaming is plain JSON"
    error = reply.json()["error"]
    assert RATE_LIMIT_HINT["content"] in error["message"] and error["code"] == "upstream_rate_limited"
    # The accounts rest for pool.cooldown: that is when a retry can succeed.
    assert reply.headers["retry-after"] == "1"
    assert (await counters(stack))["hints"] == 2
    # Asked now, the request waits in the queue and is served once an account has rested.
    await assert_serves(stack, "waits for the rest", stream=stream)
    c = await counters(stack)
    assert c["hints"] == 2 and c["finished"] == 1


async def test_input_too_long_is_not_retried_on_other_accounts(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=2)
    await until(stack, settled(stack), "tickets ready")
    inject(stack, "input_too_long")
    reply = await request(stack, chat("far too long", stream=True))
    assert reply.status == 400 and INPUT_TOO_LONG_HINT["content"] in reply.json()["error"]["message"]
    assert (await counters(stack))["hints"] == 1
    assert [a["status"] for a in await snapshot(stack)] == ["ready", "ready"]


@pytest.mark.parametrize("stream", [True, False])
async def test_connection_dropped_after_streaming_began_is_a_visible_error(
    make_stack: Callable[..., Stack], stream: bool
) -> None:
    stack = make_stack(accounts=2)
    await until(stack, settled(stack), "tickets ready")
    inject(stack, "drop", frames=30)
    reply = await request(stack, chat("dropped late", stream=stream))
    if stream:
        assert reply.status == 200
        chunks = [json.loads(e) for e in reply.events()]
        assert "error" in chunks[-1] and chunks[-1]["error"]["code"] == "upstream_unavailable"
        assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks[:-1])
        assert not any(c.get("choices") and c["choices"][0]["finish_reason"] for c in chunks[:-1]), "no fake stop"
        assert b"[DONE]" not in reply.body
    else:
        assert reply.status == 502 and reply.json()["error"]["code"] == "upstream_unavailable"
    c = await counters(stack)
    assert c["drops"] == 1 and c["completions"] == 1, "no failover once text has been relayed"
    await assert_no_generation_running(stack)


# --- 4. unfinished answers ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_incomplete_answer_is_continued_and_arrives_whole_once(
    make_stack: Callable[..., Stack], stream: bool
) -> None:
    # Paced, so the cut stream's tail (finish, update_session, close) is still on its way
    # when the INCOMPLETE status arrives: continuing then would collide with it.
    stack = make_stack(accounts=1, sim=SimConfig(delay=0.002))
    await until(stack, settled(stack), "a ready ticket")
    inject(stack, "incomplete", count=3, tokens=15)  # the completion and two continuations are cut
    await assert_serves(stack, "a long story", stream=stream, model="deepseek-reasoner")
    await assert_no_generation_running(stack)  # the last tail is read before the lease goes back
    c = await counters(stack)
    assert c["continues"] == 3 and c["incomplete"] == 3 and c["finished"] == 1
    assert len(await completions(stack, CONTINUE)) == 3
    await assert_one_generation_per_account(stack)


async def test_continuation_rounds_are_bounded(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=1, config={"pool": {"continue_rounds": 2}})
    await until(stack, settled(stack), "a ready ticket")
    inject(stack, "incomplete", count=-1, tokens=10)  # never finishes by itself
    reply = await request(stack, chat("endless", stream=True, model="deepseek-reasoner"))
    reasoning, content, finish = reply.answer()
    want = expected("endless", True, False, stack.sim_config)
    assert finish == "length"
    assert want.reasoning.startswith(reasoning) and want.answer.startswith(content)
    assert len(reasoning) + len(content) > 0
    assert (await counters(stack))["continues"] == 2
    await assert_no_generation_running(stack)


async def test_client_gone_while_a_continuation_opens_stops_the_generation(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=1, sim=SimConfig(delay=0.005))
    await until(stack, settled(stack), "a ready ticket")
    # Faults go oldest first: the completion takes the no-op one, the continuation the slow one.
    inject(stack, "slow_first_byte", seconds=0)
    inject(stack, "slow_first_byte", seconds=1.0)
    call = await Call(stack, chat("[[sim:incomplete=20]] cut, then abandoned", stream=True)).open()
    await call.content_events(2)
    await until(stack, lambda: any(r.path == CONTINUE for r in stack.sim.requests), "the continuation call")
    stops = (await counters(stack))["stops"]
    call.kill()  # while the continuation's response head is held back
    await assert_no_generation_running(stack)
    c = await counters(stack)
    assert c["stops"] == stops + 1 and c["continues"] == 1
    assert c["finished"] == 0, "the continued generation was stopped, not left to run"
    await assert_one_generation_per_account(stack)
    await assert_serves(stack, "the account is free again")


# --- 5. direct tokens ------------------------------------------------------------------------


async def test_direct_tokens_run_one_generation_at_a_time_each(make_stack: Callable[..., Stack]) -> None:
    tokens = ("direct-token-aaaaaaaaaaaaaaaa", "direct-token-bbbbbbbbbbbbbbbb")
    stack = make_stack(accounts=0, sim=SimConfig(tokens=tokens, delay=0.002))

    async def ask(token: str, i: int) -> None:
        prompt = f"direct {token[-1]} {i}"
        reply = await request(stack, chat(prompt, stream=i % 2 == 0), key=token)
        assert reply.answer() == ("", expected(prompt, False, False, stack.sim_config).answer, "stop")

    await asyncio.gather(*(ask(tokens[0], i) for i in range(6)), *(ask(tokens[1], i) for i in range(3)))
    await assert_one_generation_per_account(stack)
    served = [a for a, _ in await completions(stack)]
    assert served.count(f"token:{tokens[0]}") == 6 and served.count(f"token:{tokens[1]}") == 3

    # A direct caller that goes away mid-stream gets its token's slot back too.
    call = await Call(stack, chat("direct, abandoned", stream=True), key=tokens[0]).open()
    await call.content_events(2)
    call.kill()
    await assert_no_generation_running(stack)
    reply = await request(stack, chat("direct again"), key=tokens[0])
    assert reply.status == 200
    await assert_one_generation_per_account(stack)


# --- 6. prepared tickets ------------------------------------------------------------------------


async def test_idle_account_answers_with_the_ticket_prepared_before_the_request(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(accounts=2)
    await until(stack, settled(stack), "tickets ready")
    pool = stack.gateway.pool
    ready = await on_loop(
        stack, lambda: {a.ticket.session_id: a.ticket.pow_response for a in pool.accounts if a.ticket}
    )
    c = await counters(stack)
    assert len(ready) == 2 and c["sessions_created"] == 2 and c["challenges_issued"] == 2
    await assert_serves(stack, "straight to the completion")
    used = await on_loop(stack, lambda: [r for r in stack.sim.requests if r.path == COMPLETION][-1])
    assert used.body is not None
    session_id = used.body["chat_session_id"]
    assert session_id in ready, "the session was made before the request arrived"
    assert used.headers["x-ds-pow-response"] == ready[session_id], "so was the solved challenge"


@pytest.mark.skipif(not pow_.NATIVE, reason="the pure-Python solver takes seconds per challenge at 144000")
async def test_no_challenge_is_used_twice_at_full_difficulty(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=3, sim=SimConfig(difficulty=144_000, answer_tokens=16))
    await until(stack, settled(stack), "tickets ready")

    async def ask(i: int) -> None:
        await assert_serves(stack, f"pow {i}", stream=i % 2 == 0)

    for wave in range(3):
        await asyncio.gather(*(ask(10 * wave + i) for i in range(10)))
    c = await counters(stack)
    assert c["pow_rejects"] == 0 and c["pow_reject_reasons"] == {}
    headers = await on_loop(
        stack, lambda: [r.headers["x-ds-pow-response"] for r in stack.sim.requests if r.path == COMPLETION]
    )
    salts = [pow_.parse_pow_header(h)["salt"] for h in headers]
    assert len(salts) == 30 and len(set(salts)) == 30


async def test_ready_challenge_is_resolved_before_it_expires_on_the_same_session(
    make_stack: Callable[..., Stack],
) -> None:
    # Challenges live 1.5 s; with a 1 s margin a ready one is replaced about every 0.5 s.
    stack = make_stack(accounts=2, sim=SimConfig(pow_expire_ms=1500), config={"pool": {"refresh_margin": 1.0}})
    await until(stack, lambda: stack.sim.counters.challenges_issued >= 6, "two refreshes per account")
    c = await counters(stack)
    assert c["sessions_created"] == 2, "an unused session is kept; only the challenge is new"
    for i in range(4):
        await assert_serves(stack, f"after refreshes {i}")
    assert (await counters(stack))["pow_rejects"] == 0


async def test_challenge_shorter_than_the_margin_is_not_resolved_in_a_loop(
    make_stack: Callable[..., Stack],
) -> None:
    # A challenge that is already "due" when it arrives (clock skew, or a margin longer
    # than its life) must not be replaced again and again while the account is idle.
    stack = make_stack(accounts=1, sim=SimConfig(pow_expire_ms=800), config={"pool": {"refresh_margin": 1.0}})
    for i in range(3):
        await assert_serves(stack, f"short challenge {i}")
    await asyncio.sleep(0.3)  # what a loop would fill with challenges
    c = await counters(stack)
    assert c["pow_rejects"] == 0
    assert c["challenges_issued"] <= 10, c["challenges_issued"]


# --- 7. token store --------------------------------------------------------------------------------


async def test_login_token_is_persisted_and_a_new_gateway_does_not_log_in_again(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    store = tmp_path / "data" / "tokens.json"
    stack = make_stack(accounts=2, config={"pool": {"token_store": str(store)}})
    await until(stack, settled(stack), "both accounts logged in")
    await assert_serves(stack, "before the restart")
    assert (await counters(stack))["logins"] == 2
    saved = json.loads(store.read_text())["tokens"]
    assert set(saved) == {account_key(0), account_key(1)}
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    assert all(os.path.basename(p) == "tokens.json" for p in os.listdir(store.parent))

    async def restart() -> None:
        await stack.gateway.stop()
        stack.gateway = Gateway(stack.config)
        host, port = await stack.gateway.start()
        stack.base_url = f"http://{host}:{port}"

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(restart(), stack.loop))
    await until(stack, settled(stack), "the new gateway ready")
    tokens = await on_loop(stack, lambda: [a.token for a in stack.gateway.pool.accounts])
    assert tokens == [saved[account_key(0)]["token"], saved[account_key(1)]["token"]]
    await assert_every_account_serves(stack, "after the restart")
    assert (await counters(stack))["logins"] == 2, "no login after the restart"
