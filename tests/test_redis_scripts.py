"""Each atomic step of the shared pool (a Lua script) against a real Redis, on its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from ds2a.pool.redis_scripts import SCRIPTS
from redis_server import RedisServer, shared_url_or_skip, unique_prefix

TTL = 5000


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url, server = shared_url_or_skip()
    yield url
    if server is not None:
        server.close()


class Steps:
    def __init__(self, url: str) -> None:
        self.r = redis_sync.Redis.from_url(url, decode_responses=True)
        self.p = unique_prefix()
        self.scripts = {name: self.r.register_script(body) for name, body in SCRIPTS.items()}

    def __call__(self, name: str, *args: Any) -> Any:
        return self.scripts[name](args=[self.p, *args])

    def acquire(self, wid: str, *, replica: str = "r1", digest: str = "", exclude: str = "", qmax: int = 10,
                timeout_ms: int = 60_000, gap: int = 0) -> list[Any]:
        return self("acquire", wid, replica, digest, exclude, TTL, qmax, timeout_ms, gap)

    def close(self) -> None:
        for key in self.r.scan_iter(self.p + "*"):
            self.r.delete(key)
        self.r.close()


@pytest.fixture
def steps(redis_url: str) -> Iterator[Steps]:
    s = Steps(redis_url)
    yield s
    s.close()


def test_register_keeps_history_and_acquire_picks_the_account_idle_longest(steps: Steps) -> None:
    assert steps("register", "a", "b") == 2
    steps.r.zadd(steps.p + "order", {"a": 200, "b": 100})
    steps("register", "a", "b")  # joining again keeps the order (NX)
    granted = steps.acquire("w1")
    assert granted[:2] == ["granted", "b"] and granted[2].endswith(":r1")
    assert steps.r.get(steps.p + "lease:b") == granted[2]
    assert 0 < steps.r.pttl(steps.p + "lease:b") <= TTL
    assert steps.acquire("w2")[:2] == ["granted", "a"]
    queued = steps.acquire("w3")
    assert queued[0] == "queued" and queued[1] == 1
    assert steps.r.zrange(steps.p + "queue", 0, -1) == ["w3"]


def test_fences_are_unique_and_only_the_holder_releases(steps: Steps) -> None:
    steps("register", "a")
    first = steps.acquire("w1")[2]
    assert steps("release", "a", "1:someone-else", TTL, 0, "r1") == [0]
    assert steps.r.get(steps.p + "lease:a") == first, "a wrong fence changes nothing"
    assert steps("release", "a", first, TTL, 0, "r1") == [1]
    second = steps.acquire("w2")[2]
    assert second != first
    assert steps("release", "a", first, TTL, 0, "r1") == [0], "a stale fence never releases a newer lease"
    assert steps.r.get(steps.p + "lease:a") == second


def test_release_hands_the_account_to_the_oldest_waiter_that_can_use_it(steps: Steps) -> None:
    steps("register", "a", "b")
    fa = steps.acquire("h1")[2]
    steps.acquire("h2")
    assert steps.acquire("w-excludes-a", exclude="a")[0] == "queued"
    assert steps.acquire("w-any", replica="r2")[0] == "queued"
    sub = steps.r.pubsub()
    sub.subscribe(steps.p + "grants:r2")
    sub.get_message(timeout=1)
    assert steps("release", "a", fa, TTL, 0, "r1") == [1]
    # The first waiter excludes `a`: the second one gets it, by mailbox and pub/sub.
    granted = steps.r.get(steps.p + "grant:w-any")
    assert granted and granted.startswith("a ")
    message = sub.get_message(timeout=2)
    assert message and message["data"] == "w-any"
    assert steps.r.zrange(steps.p + "queue", 0, -1) == ["w-excludes-a"]
    sub.close()


def test_a_full_queue_is_refused_and_expired_or_orphaned_waiters_are_dropped(steps: Steps) -> None:
    steps("register", "a")
    fence = steps.acquire("h")[2]
    steps.r.set(steps.p + "replica:r1", "1")
    assert steps.acquire("w1", qmax=2)[0] == "queued"
    assert steps.acquire("w2", qmax=2, replica="dead", timeout_ms=60_000)[0] == "queued"
    steps.r.delete(steps.p + "replica:dead")  # that replica died: its heartbeat is gone
    assert steps.acquire("w3", qmax=2, timeout_ms=1)[0] == "full"
    time.sleep(0.01)
    steps.r.set(steps.p + "replica:r1", "1")
    assert steps("release", "a", fence, TTL, 0, "r9") == [1]
    assert steps.r.get(steps.p + "grant:w1"), "the live waiter got it"
    assert steps.r.zcard(steps.p + "queue") == 0, "the dead replica's waiter was dropped, not served"


def test_cancel_leaves_the_queue_and_gives_back_a_lease_handed_over_meanwhile(steps: Steps) -> None:
    steps("register", "a")
    fence = steps.acquire("h")[2]
    steps.acquire("w1")
    assert steps("cancel", "w1", TTL, 0) == 0
    assert steps.r.zcard(steps.p + "queue") == 0
    steps.acquire("w2")
    steps("release", "a", fence, TTL, 0, "r9")  # handed to w2 (of another replica)...
    assert steps.r.exists(steps.p + "grant:w2")
    assert steps("cancel", "w2", TTL, 0) == 1  # ...which left before taking it: it goes back
    assert not steps.r.exists(steps.p + "lease:a")
    assert steps.acquire("w3")[0] == "granted"


def test_renew_extends_its_own_takes_back_a_lost_key_and_reports_a_stolen_one(steps: Steps) -> None:
    steps("register", "a", "b", "c")
    fa, fb, fc = (steps.acquire(f"w{i}")[2] for i in range(3))
    steps.r.pexpire(steps.p + "lease:a", 100)
    steps.r.delete(steps.p + "lease:b")  # Redis restarted and lost it
    steps.r.set(steps.p + "lease:c", "99:other")  # expired meanwhile and went to someone else
    assert steps("renew", "r1", TTL, "a", fa, "b", fb, "c", fc) == [1, 2, 0]
    assert steps.r.pttl(steps.p + "lease:a") > 1000
    assert steps.r.get(steps.p + "lease:b") == fb
    assert steps.r.get(steps.p + "lease:c") == "99:other"
    assert steps.r.exists(steps.p + "replica:r1"), "the renewal is the replica's heartbeat too"


def test_health_rests_an_account_for_every_replica_and_read_health_reports_it(steps: Steps) -> None:
    steps("register", "a", "b")
    sub = steps.r.pubsub()
    sub.subscribe(steps.p + "health")
    sub.get_message(timeout=1)
    assert steps("health", "a", "cooling", 60, "rate limited", "", TTL, 0) == 1
    assert steps("health", "b", "login_failed", -1, "wrong password", "", TTL, 0) == 1
    assert sub.get_message(timeout=2)["data"] == "a"
    assert steps.acquire("w1")[0] == "queued", "neither account is usable"
    rows = steps("read_health", "a", "b")
    assert rows[0][:3] == ["cooling", "rate limited", ""] and 55_000 < int(rows[0][3]) <= 60_000
    assert rows[1] == ["login_failed", "wrong password", "", "-1"]
    steps("health", "a", "ready", 0, "", "", TTL, 0)  # recovered: the waiter is served at once
    assert steps.r.get(steps.p + "grant:w1").startswith("a ")
    sub.close()


def test_min_gap_and_pinned_slots(steps: Steps) -> None:
    steps("register", "a")
    fence = steps.acquire("w1", gap=60_000)[2]
    steps("release", "a", fence, TTL, 60_000, "r1")
    assert steps.acquire("w2", gap=60_000, timeout_ms=10)[0] == "queued", "too soon after the last start"
    steps("cancel", "w2", TTL, 0)
    # A token the pool knows goes to its account; an unknown one to its own slot.
    steps.r.hset(steps.p + "owners", "d1", "a")
    assert steps.acquire("w3", digest="d1")[:2] == ["granted", "a"]
    assert steps.acquire("w4", digest="d1")[0:3] == ["queued", 1, 1]
    # A direct token has a queue of its own: pool waiters ahead never hold it up.
    assert steps.acquire("w5", digest="d2")[:2] == ["granted", "direct:d2"]
    assert steps.acquire("w6", digest="d2")[:4] == ["queued", 1, 0, "direct:d2"]
    assert steps.r.zrange(steps.p + "dq:direct:d2", 0, -1) == ["w6"]


def test_tokens_drop_only_the_dead_one_and_the_login_lock_only_by_its_holder(steps: Steps) -> None:
    steps("put_token", "email:x", "t1", "dig1")
    assert steps.r.hget(steps.p + "owners", "dig1") == "email:x"
    assert steps("drop_token", "email:x", "t0") == 0  # an older token: the newer one stays
    assert steps.r.hget(steps.p + "tokens", "email:x") == "t1"
    assert steps("drop_token", "email:x", "t1") == 1
    steps.r.set(steps.p + "login:email:x", "holder-1")
    assert steps("unlock", "email:x", "holder-2") == 0
    assert steps("unlock", "email:x", "holder-1") == 1
    assert not steps.r.exists(steps.p + "login:email:x")
    assert steps("unregister", "a") == 1


def test_dispatch_reports_when_the_next_resting_account_recovers(steps: Steps) -> None:
    steps("register", "a")
    steps("health", "a", "cooling", 30, "rate limited", "", TTL, 0)
    left = steps("dispatch", TTL, 0, "r1", "")[0]
    assert 25_000 < left <= 30_000
    steps("health", "a", "ready", 0, "", "", TTL, 0)
    assert steps("dispatch", TTL, 0, "r1", "") == [-1]


def test_a_waiter_of_the_releasing_replica_gets_its_grant_in_the_reply(steps: Steps) -> None:
    steps("register", "a")
    fence = steps.acquire("h", replica="r1")[2]
    steps.acquire("mine", replica="r1")
    reply = steps("release", "a", fence, TTL, 0, "r1")
    assert reply[:3] == [1, "mine", "a"] and reply[3].endswith(":r1")
    assert not steps.r.exists(steps.p + "grant:mine"), "no mailbox: the reply carries it"
    assert steps.r.get(steps.p + "lease:a") == reply[3]


_ = RedisServer  # the module-scoped fixture may start one


def test_a_direct_lease_on_a_token_later_known_as_the_accounts_holds_the_account(steps: Steps) -> None:
    steps("register", "a")
    direct = steps.acquire("d", digest="dig")  # a caller's token, not known to the pool yet
    assert direct[:2] == ["granted", "direct:dig"]
    assert steps("own", "a", "dig") == 1  # the pool's login returns that very token
    assert steps.acquire("w1")[0] == "queued", "the account is generating for the direct caller"
    reply = steps("release", "direct:dig", direct[2], TTL, 0, "r1")
    assert reply[:3] == [1, "w1", "a"], "its release hands the account to the pool's waiter"
