"""The load generator: concurrent streaming clients, each request recorded raw.

A client only timestamps and keeps the bytes of every network read while it runs;
decoding and checking happen after the timed part (bench/decode.py), so the load
generator spends as little CPU as possible on a machine it shares with the
simulator and the gateway.

Two targets get the same load:

* ``GatewayTarget``: ``POST /v1/chat/completions`` (stream) to the gateway;
* ``DirectTarget``: what the gateway would do, done by the client itself against
  the simulator. Each account's login, chat session and solved challenge are made
  outside the timed part (the next one is prepared while the current answer
  streams, as the gateway's pool does), then ``POST /api/v0/chat/completion`` and
  the stream is read until its final status. Reading the tail, deleting the
  session and freeing the account happen in the background, again as the gateway
  does, so a client's next request may wait for its account exactly as it would
  in the gateway's queue.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from ds2a.config import DeepSeekConfig
from ds2a.deepseek import pow as pow_
from ds2a.deepseek.client import DeepSeekClient
from ds2a.deepseek.errors import DeepSeekError
from ds2a.deepseek.stream import StreamParser

REQUEST_TIMEOUT = 120.0  # one request, first byte to end: bounds every run
TERMINAL_MARKERS = (b'"response/status"', b"event: close")
COMPLETION_PATH = "/api/v0/chat/completion"

perf = time.perf_counter


@dataclass(slots=True)
class Sample:
    """One request as the client saw it: when it was wanted, and every read with its arrival time."""

    client: int
    prompt: str
    issued: float = 0.0  # perf_counter when the client wanted an answer: origin of TTFT
    issued_wall: float = 0.0  # time.time() of the same moment, to compare with the simulator's stamps
    account: str | None = None  # simulator account key ("email:..."), once known
    status: int = 0
    error: str | None = None
    reads: list[tuple[float, bytes]] = field(default_factory=list)
    ended: float = 0.0


class Target(Protocol):
    kind: str

    async def stream(self, sample: Sample) -> None: ...


def new_session(limit: int = 0) -> aiohttp.ClientSession:
    # No total timeout: REQUEST_TIMEOUT bounds each request; limit 0 = as many
    # connections as there are clients (1000 idle streams need 1000).
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=90))


def stamp(sample: Sample) -> None:
    sample.issued = perf()
    sample.issued_wall = time.time()


async def run_request(target: Target, sample: Sample) -> None:
    """One request, bounded in time; every failure becomes ``sample.error``, never an exception."""
    stamp(sample)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await target.stream(sample)
    except TimeoutError:
        sample.error = f"timed out after {REQUEST_TIMEOUT:g} s"
    except (aiohttp.ClientError, OSError, DeepSeekError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    if not sample.ended:
        sample.ended = perf()


# --- the gateway ------------------------------------------------------------------


class GatewayTarget:
    kind = "gateway"

    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: str, model: str) -> None:
        self.session = session
        self.url = f"{base_url}/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.model = model

    def body(self, prompt: str) -> bytes:
        return json.dumps(
            {"model": self.model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
        ).encode()

    async def stream(self, sample: Sample) -> None:
        async with self.session.post(self.url, data=self.body(sample.prompt), headers=self.headers) as resp:
            sample.status = resp.status
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            readany = resp.content.readany
            reads = sample.reads
            while chunk := await readany():
                reads.append((perf(), chunk))
        sample.ended = perf()


# --- the simulator (or DeepSeek) directly -----------------------------------------------


@dataclass(slots=True)
class Ticket:
    session_id: str
    pow_response: str


class DirectAccount:
    __slots__ = ("key", "credentials", "token", "preparing")

    def __init__(self, credentials: dict[str, str]) -> None:
        self.key = _key(credentials)
        self.credentials = credentials
        self.token: str | None = credentials.get("token")
        self.preparing: asyncio.Task[Ticket] | None = None


class DirectPool:
    """Accounts for the direct run: one answer at a time each, least recently freed first."""

    def __init__(self, config: DeepSeekConfig, accounts: list[dict[str, str]],
                 pow_cpus: frozenset[int] | None = None) -> None:
        self.client = DeepSeekClient(config)
        # The proof of work is gateway work: it runs on the CPU the gateway gets in the
        # gateway run, not on the one the simulator and this client share. As many
        # threads as asyncio's default executor, which the gateway's solve_async uses.
        self.executor = ThreadPoolExecutor(
            max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="direct-pow",
            initializer=self._pow_thread_started, initargs=(pow_cpus,),
        )
        self.pow_tids: set[int] = set()  # their CPU time is read apart from the client's
        self.config = config
        self.accounts = [DirectAccount(a) for a in accounts]
        self.free: asyncio.Queue[DirectAccount] = asyncio.Queue()
        self.cleanups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.client.start()
        await asyncio.gather(*(self._login(a) for a in self.accounts))
        for account in self.accounts:
            account.preparing = asyncio.create_task(self._prepare(account))
            self.free.put_nowait(account)

    async def _login(self, account: DirectAccount) -> None:
        if account.token:
            return
        creds = account.credentials
        account.token = await self.client.login(
            email=creds.get("email"), mobile=creds.get("mobile"), area_code=creds.get("area_code"),
            password=creds.get("password", ""),
        )

    async def _prepare(self, account: DirectAccount) -> Ticket:
        assert account.token is not None
        session_id = await self.client.create_session(account.token)
        challenge = await self.client.create_pow_challenge(account.token, pow_.COMPLETION_PATH)
        answer = await asyncio.get_running_loop().run_in_executor(self.executor, pow_.solve, challenge)
        return Ticket(session_id, pow_.pow_header(challenge, answer))

    async def acquire(self) -> tuple[DirectAccount, Ticket]:
        account = await self.free.get()
        assert account.preparing is not None
        ticket = await account.preparing
        # The next ticket is made while this answer streams, as the gateway's pool does.
        account.preparing = asyncio.create_task(self._prepare(account))
        return account, ticket

    def finish(self, account: DirectAccount, ticket: Ticket, response: aiohttp.ClientResponse | None) -> None:
        task = asyncio.create_task(self._cleanup(account, ticket, response))
        self.cleanups.add(task)
        task.add_done_callback(self.cleanups.discard)

    async def _cleanup(self, account: DirectAccount, ticket: Ticket, response: aiohttp.ClientResponse | None) -> None:
        """Best effort, as the gateway's: read the tail, delete the session, free the account."""
        try:
            if response is not None:
                try:
                    async with asyncio.timeout(5):
                        while await response.content.readany():
                            pass
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                response.release()
            if account.token:
                await self.client.delete_session(account.token, ticket.session_id)
        except (DeepSeekError, RuntimeError):  # RuntimeError: the run is being torn down
            pass
        finally:
            self.free.put_nowait(account)

    async def wait_ready(self) -> None:
        """Until every account is free with its next ticket solved (the gateway's 'idle and ready')."""
        while self.cleanups:
            await asyncio.gather(*list(self.cleanups), return_exceptions=True)
        for account in self.accounts:
            if account.preparing is not None:
                await asyncio.shield(account.preparing)

    async def close(self) -> None:
        await self.wait_ready()
        unused = []
        for account in self.accounts:
            task, account.preparing = account.preparing, None
            if task is not None and task.done() and not task.exception() and account.token:
                unused.append(self.client.delete_session(account.token, task.result().session_id))
        await asyncio.gather(*unused, return_exceptions=True)
        await self.client.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _pow_thread_started(self, cpus: frozenset[int] | None) -> None:
        self.pow_tids.add(threading.get_native_id())
        if cpus:
            os.sched_setaffinity(0, cpus)  # 0 = the calling thread


def _key(account: dict[str, str]) -> str:
    """The simulator's name for an account (its records say the same)."""
    if account.get("email"):
        return "email:" + account["email"].strip().lower()
    if account.get("mobile"):
        return "mobile:" + account["mobile"].strip()
    return "token:" + account.get("token", "")


class DirectTarget:
    kind = "direct"

    def __init__(self, session: aiohttp.ClientSession, pool: DirectPool, *, thinking: bool,
                 parse_terminal: bool = False) -> None:
        self.session = session
        self.pool = pool
        self.url = pool.config.base_url.rstrip("/") + COMPLETION_PATH
        cfg = pool.config
        self.headers = {
            "User-Agent": cfg.user_agent, "Accept": "application/json", "x-client-version": cfg.client_version,
            "x-client-platform": cfg.client_platform, "x-client-locale": cfg.client_locale, **cfg.extra_headers,
            "Content-Type": "application/json",
        }
        self.thinking = thinking
        # Against the real service the end is found with the real parser; against the
        # simulator a byte search finds its final status frame at a fraction of the cost.
        self.parse_terminal = parse_terminal

    def body(self, prompt: str, session_id: str) -> bytes:
        return json.dumps({
            "chat_session_id": session_id, "parent_message_id": None, "model_type": self.pool.config.model_type,
            "prompt": prompt, "ref_file_ids": [], "thinking_enabled": self.thinking, "search_enabled": False,
            "preempt": False,
        }, ensure_ascii=False).encode()

    async def stream(self, sample: Sample) -> None:
        account, ticket = await self.pool.acquire()
        sample.account = account.key
        response: aiohttp.ClientResponse | None = None
        try:
            headers = {**self.headers, "Authorization": f"Bearer {account.token}",
                       "x-ds-pow-response": ticket.pow_response}
            response = await self.session.post(self.url, data=self.body(sample.prompt, ticket.session_id),
                                               headers=headers)
            sample.status = response.status
            if response.status != 200 or response.content_type != "text/event-stream":
                sample.error = f"HTTP {response.status} {response.content_type}: {(await response.text())[:200]}"
                return
            await self._read_answer(response, sample)
            sample.ended = perf()
        finally:
            self.pool.finish(account, ticket, response)

    async def _read_answer(self, response: aiohttp.ClientResponse, sample: Sample) -> None:
        readany = response.content.readany
        reads = sample.reads
        parser = StreamParser() if self.parse_terminal else None
        tail = b""
        while chunk := await readany():
            reads.append((perf(), chunk))
            if parser is not None:
                parser.feed(chunk)
                if parser.finished:
                    return
                continue
            window = tail + chunk
            if TERMINAL_MARKERS[0] in window or TERMINAL_MARKERS[1] in window:
                return
            tail = chunk[-32:]


# --- load shapes ----------------------------------------------------------------


async def run_continuous(
    target: Target, *, clients: int, duration: float, max_requests: int, prompt: Callable[[int], str]
) -> list[Sample]:
    """``clients`` clients, each sending its next request when its answer ended, until time or count runs out."""
    samples: list[Sample] = []
    numbers = itertools.count()
    deadline = perf() + duration

    async def client(i: int) -> None:
        while perf() < deadline:
            n = next(numbers)
            if n >= max_requests:
                return
            sample = Sample(client=i, prompt=prompt(n))
            samples.append(sample)
            await run_request(target, sample)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return samples


async def run_waves(
    target: Target, *, clients: int, waves: int, prompt: Callable[[int], str],
    between: Callable[[], Awaitable[None]], ramp: float = 0.0,
) -> list[Sample]:
    """``waves`` times: wait for ``between()`` (accounts idle and ready), then all clients at once."""
    samples: list[Sample] = []
    numbers = itertools.count()
    for _ in range(waves):
        await between()
        wave = [Sample(client=i, prompt=prompt(next(numbers))) for i in range(clients)]
        samples.extend(wave)
        await asyncio.gather(*(_delayed(target, s, ramp * s.client / clients) for s in wave))
    return samples


async def _delayed(target: Target, sample: Sample, delay: float) -> None:
    if delay:
        await asyncio.sleep(delay)
    await run_request(target, sample)
