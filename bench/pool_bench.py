"""What leasing an account costs on the request path: the embedded pool against the
Redis-shared one (one EVALSHA round trip), beside a bare PING for scale.

    .venv/bin/python -m bench.pool_bench                 # starts its own redis-server
    .venv/bin/python -m bench.pool_bench --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid

import redis.asyncio as aioredis

from ds2a.config import load_config
from ds2a.pool import AccountPool

ACCOUNTS = [{"token": f"bench-token-{i}"} for i in range(4)]


class _NoClient:
    upstream_gate = None


async def lease_times(url: str, n: int) -> tuple[float, float]:
    """Median and p99 milliseconds of ``acquire`` (the release runs between two, as after an answer)."""
    settings = {"pool": {"prepare": False, "token_store": ""}, "accounts": ACCOUNTS}
    if url:
        settings["redis"] = {"url": url, "prefix": f"pool-bench-{uuid.uuid4().hex[:8]}:"}
    # No upstream: tokens are configured and nothing is prepared, so no call is made.
    pool = AccountPool(load_config(None, env={}, overrides=settings), _NoClient())  # type: ignore[arg-type]
    await pool.start()
    times = []
    try:
        for _ in range(n):
            began = time.perf_counter()
            lease = await pool.acquire()
            times.append(time.perf_counter() - began)
            lease.release()
            await asyncio.sleep(0.0005)  # the release reaches Redis in the background
    finally:
        await pool.close()
    times.sort()
    return statistics.median(times) * 1e3, times[int(len(times) * 0.99)] * 1e3


async def ping_time(url: str, n: int) -> float:
    client = aioredis.Redis.from_url(url)
    began = time.perf_counter()
    for _ in range(n):
        await client.ping()
    elapsed = time.perf_counter() - began
    await client.aclose()
    return elapsed / n * 1e3


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH: pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tempfile.gettempdir()],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0"


async def run(url: str, n: int) -> None:
    embedded = await lease_times("", n)
    shared = await lease_times(url, n)
    ping = await ping_time(url, n)
    print(f"acquire, embedded pool      p50 {embedded[0]:.4f} ms   p99 {embedded[1]:.4f} ms")
    print(f"acquire, Redis-shared pool  p50 {shared[0]:.4f} ms   p99 {shared[1]:.4f} ms")
    print(f"PING round trip (redis-py asyncio)    {ping:.4f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pool_bench", description=__doc__)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    proc = None
    url = args.redis_url
    if not url:
        proc, url = start_redis()
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            asyncio.run(run(url, args.n))
        else:
            uvloop.run(run(url, args.n))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
