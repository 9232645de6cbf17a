"""The shared pool's rules, two replicas in one event loop over a real Redis, fake upstream.

Logins once per cluster, health seen by every replica, the one-at-a-time rule of a
direct token across replicas, a pool account's token as a bearer on another replica,
and Redis down at start: refused with a 503 naming Redis, then served once it is up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ds2a.config import Config
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.pool import AccountPool, Health
from ds2a.pool.errors import PoolError
from redis_server import RedisServer, free_port, require_redis_server, shared_url_or_skip, unique_prefix
from test_pool import FakeClient, make_config


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url, server = shared_url_or_skip()
    yield url
    if server is not None:
        server.close()


def shared_config(tmp_path: Path, url: str, prefix: str, n: int = 2, **pool: Any) -> Config:
    cfg = make_config(tmp_path, n=n, **pool)
    cfg.redis.url = url
    cfg.redis.prefix = prefix
    cfg.redis.lease_ttl = 3.0
    return cfg


@pytest.fixture
async def replicas(tmp_path: Path, redis_url: str) -> AsyncIterator[Any]:
    started: list[AccountPool] = []
    prefix = unique_prefix()

    async def make(n: int = 2, client: FakeClient | None = None, **pool: Any) -> tuple[AccountPool, FakeClient]:
        client = client or FakeClient()
        replica = AccountPool(shared_config(tmp_path, redis_url, prefix, n=n, **pool), client)  # type: ignore[arg-type]
        await replica.start()
        started.append(replica)
        return replica, client

    yield make
    for replica in started:
        await replica.close()


async def test_an_account_logs_in_once_for_the_whole_cluster(replicas: Any) -> None:
    client = FakeClient()
    one, _ = await replicas(n=1, client=client)
    two, _ = await replicas(n=1, client=client)
    first = await one.acquire()
    await first.ticket()
    first.release()
    second = await two.acquire()
    await second.ticket()  # the token the other replica's login stored
    second.release()
    assert client.logins == ["user0@example.com"]
    assert two.accounts[0].token == one.accounts[0].token


async def test_one_account_is_leased_to_one_replica_at_a_time(replicas: Any) -> None:
    one, _ = await replicas(n=1)
    two, _ = await replicas(n=1)
    held = await one.acquire()
    waiting = asyncio.create_task(two.acquire())
    await asyncio.sleep(0.1)
    assert not waiting.done(), "the other replica waits for the shared lease"
    held.release()
    lease = await asyncio.wait_for(waiting, 5)
    assert lease.account.key == held.account.key
    with pytest.raises(PoolError) as info:
        await one.acquire(timeout=0.2)
    assert info.value.status == 429
    lease.release()


async def test_health_reported_on_one_replica_rests_the_account_on_the_other(replicas: Any) -> None:
    one, _ = await replicas(n=2, cooldown=60)
    two, _ = await replicas(n=2, cooldown=60)
    lease = await one.acquire()
    lease.report(DeepSeekError(ErrorKind.RATE_LIMITED, "Messages too frequent."))
    limited = lease.account.key
    lease.release()

    def rested() -> bool:
        return any(a.key == limited and a.health is Health.COOLING for a in two.accounts)

    for _ in range(200):
        if rested():
            break
        await asyncio.sleep(0.01)
    assert rested(), "the other replica heard of the rest"
    leases = [await two.acquire(), ]
    assert leases[0].account.key != limited
    with pytest.raises(PoolError):
        await two.acquire(timeout=0.2)  # the rested account is not handed out anywhere
    for held in leases:
        held.release()


async def test_a_direct_token_runs_one_answer_at_a_time_across_replicas(replicas: Any) -> None:
    one, _ = await replicas(n=0)
    two, _ = await replicas(n=0)
    held = await one.acquire(direct_token="caller-token")
    waiting = asyncio.create_task(two.acquire(direct_token="caller-token"))
    other = await two.acquire(direct_token="another-token")  # another caller is independent
    await asyncio.sleep(0.1)
    assert not waiting.done()
    held.release()
    lease = await asyncio.wait_for(waiting, 5)
    assert lease.token == "caller-token" and lease.direct
    lease.release()
    other.release()


async def test_a_pool_accounts_token_waits_for_its_lease_on_another_replica(replicas: Any) -> None:
    one, client = await replicas(n=1)
    two, _ = await replicas(n=1, client=client)
    held = await one.acquire()
    await held.ticket()  # logs in on replica one; the token's owner is shared
    token = one.accounts[0].token
    assert token
    waiting = asyncio.create_task(two.acquire(direct_token=token))
    await asyncio.sleep(0.1)
    assert not waiting.done(), "the bearer is the pool account's own token: it waits for that lease"
    held.release()
    lease = await asyncio.wait_for(waiting, 5)
    assert lease.account.key == held.account.key and lease.direct and lease.token == token
    lease.release()


async def test_redis_down_at_start_is_a_clear_503_then_serves_once_it_is_up(tmp_path: Path) -> None:
    require_redis_server()
    port = free_port()
    cfg = shared_config(tmp_path, f"redis://127.0.0.1:{port}/0", unique_prefix(), n=1)
    pool = AccountPool(cfg, FakeClient())  # type: ignore[arg-type]
    await pool.start()
    try:
        with pytest.raises(PoolError) as info:
            await pool.acquire()
        assert info.value.status == 503 and "Redis" in info.value.message
        assert info.value.code == "redis_unavailable"
        server = RedisServer()
        server.port = port
        server.url = cfg.redis.url
        try:
            server.start()
            for _ in range(200):  # the listener reconnects with backoff
                try:
                    lease = await pool.acquire(timeout=1)
                    break
                except PoolError as exc:
                    assert exc.code == "redis_unavailable"
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("never recovered")
            lease.release()
        finally:
            await pool.close()
            server.close()
    except BaseException:
        if not pool.closing:
            await pool.close()
        raise


async def test_a_direct_token_is_not_held_up_by_the_pools_queue(replicas: Any) -> None:
    one, _ = await replicas(n=1)
    two, _ = await replicas(n=1)
    held = await one.acquire()
    queued = asyncio.create_task(two.acquire())  # the pool's queue is not empty now
    await asyncio.sleep(0.1)
    direct = await asyncio.wait_for(two.acquire(direct_token="someone-elses-token"), 2)
    assert direct.direct and not queued.done()
    direct.release()
    held.release()
    (await asyncio.wait_for(queued, 5)).release()


@pytest.mark.parametrize(
    "redis, pool, message",
    [
        ({"url": "http://localhost:6379"}, {}, "redis.url"),
        ({"url": "redis://x", "prefix": ""}, {}, "redis.prefix"),
        ({"url": "redis://x", "lease_ttl": 1}, {}, "redis.lease_ttl"),
        ({"url": "redis://x"}, {"max_inflight_per_account": 2}, "pool.max_inflight_per_account"),
    ],
)
def test_a_bad_redis_section_stops_start_up_naming_the_field(
    redis: dict[str, Any], pool: dict[str, Any], message: str
) -> None:
    from ds2a.config import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"redis": redis, "pool": pool})
    assert message in str(info.value)
    shared = load_config(None, env={"DS2A_REDIS_URL": "redis://redis:6379/0"})
    assert shared.redis.url == "redis://redis:6379/0" and shared.redis.prefix == "ds2a:"


async def test_a_direct_answer_begun_before_the_pool_learnt_the_token_holds_the_account(replicas: Any) -> None:
    one, _ = await replicas(n=1)
    two, _ = await replicas(n=1)
    direct = await one.acquire(direct_token="same-upstream-account")  # unknown to the pool yet
    two.set_token(two.accounts[0], "same-upstream-account")  # replica two's login returns it
    await asyncio.sleep(0.1)  # shared in the background
    waiting = asyncio.create_task(two.acquire())
    await asyncio.sleep(0.1)
    assert not waiting.done(), "the direct caller's answer runs on that account"
    direct.release()
    lease = await asyncio.wait_for(waiting, 5)
    assert lease.account.key == two.accounts[0].key
    lease.release()


async def test_an_account_removed_by_a_reload_leaves_the_shared_pool(replicas: Any) -> None:
    one, _ = await replicas(n=2)
    two, _ = await replicas(n=2)
    held = await one.acquire()
    kept = [c for c in one.config.accounts if f"email:{c.email}" != held.account.key]
    added, removed = await one.update_accounts(kept)  # the account in use is removed
    assert added == [] and removed == [held.account.label]
    other = await two.acquire()  # the kept account
    with pytest.raises(PoolError):
        await two.acquire(timeout=0.3)  # the removed one is no longer handed out anywhere...
    held.release()  # ...not even once its running answer has ended
    with pytest.raises(PoolError):
        await two.acquire(timeout=0.3)
    other.release()
    assert held.account not in one.accounts and not one.leaving


# --- stored Responses-API responses, shared by the replicas ----------------------------------


async def test_stored_responses_are_shared_and_bounded_for_the_cluster(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from ds2a.responses.redis_store import RedisResponseStore
    from ds2a.responses.store import StoredResponse

    prefix = unique_prefix()
    clients = [aioredis.Redis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    one, two = (RedisResponseStore(c, prefix, max_count=2, max_age=60, max_bytes=100) for c in clients)

    def record(i: int, size: int = 10) -> StoredResponse:
        return StoredResponse({"id": f"resp_{i}", "output": [{"n": i}]}, [{"in": i}], [], "owner", size)

    try:
        await one.put(record(1))
        got = await two.get("resp_1")  # stored on one replica, read on the other
        assert got is not None and got.conversation() == [{"in": 1}, {"n": 1}] and got.owner == "owner"
        await two.put(record(2))
        await one.put(record(3))  # a third: the oldest goes (max_count 2)
        assert await one.get("resp_1") is None and await two.get("resp_3") is not None
        await one.put(record(4, size=95))  # past max_bytes: older ones go until it fits
        assert await two.get("resp_2") is None and await two.get("resp_3") is None
        assert await one.get("resp_4") is not None
        await one.put(record(5, size=500))  # alone larger than the store: not kept
        assert await two.get("resp_5") is None
        assert await two.delete("resp_4") is True and await one.delete("resp_4") is False
    finally:
        for c in clients:
            await c.aclose()


async def test_a_response_store_without_redis_answers_503_naming_it() -> None:
    import redis.asyncio as aioredis

    from ds2a.responses.redis_store import RedisResponseStore
    from ds2a.server.errors import HTTPError

    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    store = RedisResponseStore(client, "x:", max_count=10, max_age=60, max_bytes=1000)
    with pytest.raises(HTTPError) as info:
        await store.get("resp_1")
    assert info.value.status == 503 and "Redis" in info.value.message
    await client.aclose()
