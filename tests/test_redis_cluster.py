"""Replicas sharing one account pool through a real Redis, as real processes.

Two or three ``python -m ds2a`` processes, one simulator (which counts generations per
account), one ``redis-server``: the one-generation-per-account rule across replicas,
a replica killed or paused mid-answer, Redis stopped and started again under load, and
one queue for the whole cluster.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from cluster import KEY, Cluster, answer_text, call, chat
from ds2a.sim import SimConfig, expected
from redis_server import RedisServer, own_server_or_skip, shared_url_or_skip, unique_prefix

TTL = 3.0  # redis.lease_ttl in these tests (the smallest allowed), so expiries come quickly
COMPLETION = "/api/v0/chat/completion"


@pytest.fixture
def redis_url() -> Iterator[str]:
    url, server = shared_url_or_skip()
    yield url
    if server is not None:
        server.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may stop and start again."""
    server = own_server_or_skip()
    yield server
    server.close()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Any]:
    clusters: list[Cluster] = []

    def make(url: str, **kwargs: Any) -> Cluster:
        config = kwargs.pop("config", {})
        config.setdefault("redis", {})["lease_ttl"] = TTL
        cluster = Cluster(tmp_path, url, unique_prefix(), config=config, **kwargs)
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        cluster.stop()


def assert_one_generation_per_account(cluster: Cluster) -> dict[str, Any]:
    c = cluster.sim.counters()
    assert c["parallel_violations"] == 0, cluster.logs()
    assert c["max_active_per_account"] == 1, cluster.logs()
    return c


def upstream_order(cluster: Cluster) -> list[str | None]:
    """Prompts of the completion calls the simulator received, in arrival order."""
    return cluster.sim.call(lambda: [r.prompt for r in cluster.sim.sim.requests if r.path == COMPLETION])


async def until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def first_text(replica_url: str, prompt: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Start a stream and read until its first answer text: the account is generating."""
    host, port = replica_url.rsplit("/", 1)[-1].split(":")
    body = json.dumps({"model": "deepseek-chat", "stream": True, "messages": [{"role": "user", "content": prompt}]})
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    seen = b""
    while b'"content":"[' not in seen:  # the answer's first token starts with "[digest:len]"
        data = await asyncio.wait_for(reader.read(4096), 30)
        assert data, seen[-500:]
        seen += data
    return reader, writer


async def test_three_replicas_share_four_accounts_without_two_generations_on_one(
    make_cluster: Any, redis_url: str
) -> None:
    cluster = make_cluster(redis_url, replicas=3, accounts=4, sim=SimConfig(delay=0.002))
    prompts = [f"spread {i}" for i in range(18)]
    replies = await asyncio.gather(
        *(chat(cluster.replicas[i % 3].base_url, p, stream=i % 4 != 0) for i, p in enumerate(prompts))
    )
    for prompt, reply in zip(prompts, replies):
        assert answer_text(*reply) == expected(prompt, False, False, cluster.sim.config).answer
    c = assert_one_generation_per_account(cluster)
    assert c["completions"] == 18
    assert c["logins"] == 4, "each account logs in once for the whole cluster"
    assert c["max_active_streams"] == 4, "all four accounts were in use at once"
    served = cluster.sim.call(lambda: {r.account for r in cluster.sim.sim.requests if r.path == COMPLETION})
    assert len(served) == 4

    # A stored Responses-API response is there for every replica: read and continued elsewhere.
    one, two, three = (r.base_url for r in cluster.replicas)
    status, created = await call(one, "POST", "/v1/responses", {"model": "deepseek-chat", "input": "remember"})
    assert status == 200, created
    status, read = await call(two, "GET", f"/v1/responses/{created['id']}")
    assert status == 200 and read["id"] == created["id"] and read["output"] == created["output"]
    status, continued = await call(
        three, "POST", "/v1/responses",
        {"model": "deepseek-chat", "input": "and then?", "previous_response_id": created["id"]},
    )
    assert status == 200, continued
    assert (await call(two, "DELETE", f"/v1/responses/{created['id']}"))[0] == 200
    assert (await call(three, "GET", f"/v1/responses/{created['id']}"))[0] == 404


async def test_a_killed_replicas_account_is_free_again_after_the_lease_ttl(make_cluster: Any, redis_url: str) -> None:
    # The survivor waits at most a few TTLs for the account (then it would answer 429): the
    # dead replica's lease must run out by itself, nobody releases it.
    cluster = make_cluster(
        redis_url, replicas=2, accounts=1, sim=SimConfig(delay=0.005, answer_tokens=60),
        config={"pool": {"queue_timeout": TTL * 3}},
    )
    a, b = cluster.replicas
    reader, writer = await first_text(a.base_url, "on the replica that dies")
    a.kill()  # SIGKILL: no cleanup, no release; its lease lives on in Redis until the TTL
    writer.close()
    reply = await chat(b.base_url, "after the kill", stream=True)
    assert answer_text(*reply) == expected("after the kill", False, False, cluster.sim.config).answer
    assert_one_generation_per_account(cluster)


async def test_a_paused_replica_never_releases_a_lease_that_is_no_longer_its_own(
    make_cluster: Any, redis_url: str
) -> None:
    cluster = make_cluster(redis_url, replicas=2, accounts=1, sim=SimConfig(delay=0.005, answer_tokens=40))
    a, b = cluster.replicas
    r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    lease_key = f"{cluster.prefix}lease:email:user0@example.com"
    id_a, id_b = replica_id(a), replica_id(b)
    reader, writer = await first_text(a.base_url, "paused mid-answer")
    fence_a = r.get(lease_key)
    assert fence_a and fence_a.endswith(":" + id_a)
    a.signal(signal.SIGSTOP)
    # B queues; A's lease runs out (A cannot renew it while stopped), B gets the account.
    second = asyncio.create_task(chat(b.base_url, "[[sim:delay=0.1]] the new holder's answer", timeout=90))
    await until(lambda: (r.get(lease_key) or "").endswith(":" + id_b), "B to hold the lease", timeout=TTL * 4)
    fence_b = r.get(lease_key)
    a.signal(signal.SIGCONT)  # A wakes up, finishes its answer, and tries to give back its old lease
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 30):
        data += chunk
    writer.close()
    assert b"[DONE]" in data
    await until(lambda: "is someone else's now" in a.log(), "A's renewal to learn its lease is lost")
    await asyncio.sleep(0.2)  # A's answer has ended: its release (refused) has been sent
    assert r.get(lease_key) == fence_b, "A released or renewed B's lease"
    third = await chat(a.base_url, "after both")  # waits for B's answer through the shared queue
    assert answer_text(*third) == expected("after both", False, False, cluster.sim.config).answer
    assert answer_text(*(await second))
    assert upstream_order(cluster)[-1] is not None
    c = cluster.sim.counters()
    assert c["parallel_violations"] == 0 and c["max_active_per_account"] == 1, cluster.logs()


def replica_id(replica: Any) -> str:
    """The id a replica's fence tokens end with (it reports it in /admin/accounts)."""
    import urllib.request

    request = urllib.request.Request(replica.base_url + "/admin/accounts", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return str(json.loads(reply.read())["shared"]["replica"])


async def test_redis_stopped_and_started_again_mid_load(make_cluster: Any, redis_server: RedisServer) -> None:
    cluster = make_cluster(redis_server.url, replicas=2, accounts=2, sim=SimConfig(delay=0.01, answer_tokens=80))
    a, b = cluster.replicas
    running = [asyncio.create_task(chat(r.base_url, f"running {i}")) for i, r in enumerate((a, b))]
    await until(lambda: cluster.sim.counters()["active_streams"] == 2, "both answers streaming")
    redis_server.stop()
    refused = await chat(a.base_url, "while Redis is down", stream=False)
    assert refused[0] == 503, refused
    error = json.loads(refused[2])["error"]
    assert "Redis" in error["message"] and error["code"] == "redis_unavailable"
    for task in running:  # the answers that were running when Redis went away finish whole
        status, headers, body = await task
        assert answer_text(status, headers, body)
    redis_server.start()
    recovered = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, headers, body = await chat(b.base_url, "Redis is back", stream=False)
        if status == 200:
            recovered = answer_text(status, headers, body)
            break
        assert status == 503, body
        await asyncio.sleep(0.2)
    assert recovered == expected("Redis is back", False, False, cluster.sim.config).answer
    replies = await asyncio.gather(*(chat((a, b)[i % 2].base_url, f"after {i}") for i in range(6)))
    assert all(reply[0] == 200 for reply in replies)
    assert_one_generation_per_account(cluster)


async def test_one_queue_for_the_cluster_in_arrival_order(make_cluster: Any, redis_url: str) -> None:
    cluster = make_cluster(redis_url, replicas=2, accounts=1, sim=SimConfig(delay=0.002))
    a, b = cluster.replicas
    r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    reader, writer = await first_text(a.base_url, "[[sim:delay=0.05]] holding the only account")
    waiting = []
    for i in range(6):  # alternate replicas; each joins the queue before the next is sent
        replica = (a, b)[i % 2]
        waiting.append(asyncio.create_task(chat(replica.base_url, f"queued {i}")))
        await until(lambda: r.zcard(cluster.prefix + "queue") == i + 1, f"request {i} in the queue")
    writer.close()  # the holder goes away: its generation is stopped and the queue moves
    replies = await asyncio.gather(*waiting)
    assert all(reply[0] == 200 for reply in replies)
    order = [p for p in upstream_order(cluster) if p and p.startswith("queued")]
    assert order == [f"queued {i}" for i in range(6)]
    assert_one_generation_per_account(cluster)
