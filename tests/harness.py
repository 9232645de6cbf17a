"""The simulator and the gateway on loopback, for end-to-end tests over real sockets.

Both run in one background thread on their own uvloop, so a test can talk to the
gateway with blocking clients (the sync ``openai`` SDK, raw sockets) or from its
own event loop (``AsyncOpenAI``), exactly as an outside client would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai
import uvloop

from ds2a.app import Gateway
from ds2a.config import load_config
from ds2a.sim import SimConfig, Simulator

T = TypeVar("T")
KEY = "sk-test-key"


class Stack:
    def __init__(
        self,
        *,
        accounts: int = 2,
        sim: SimConfig | None = None,
        config: dict[str, Any] | None = None,
        keys: list[str] | None = None,
    ) -> None:
        self.sim_config = sim or SimConfig()
        self.accounts = [{"email": f"user{i}@example.com", "password": self.sim_config.password} for i in range(accounts)]
        self.overrides = config or {}
        self.keys = [KEY] if keys is None else keys
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ds2a-stack", daemon=True)
        self.sim: Simulator
        self.gateway: Gateway
        self.base_url = ""

    # --- life cycle -----------------------------------------------------------

    def start(self) -> Stack:
        self.thread.start()
        self.run(self._start)
        return self

    async def _start(self) -> None:
        self.sim = Simulator(self.sim_config)
        upstream = await self.sim.start(host="127.0.0.1", port=0)
        overrides: dict[str, Any] = {
            "keys": self.keys,
            "accounts": self.accounts,
            "server": {"host": "127.0.0.1", "port": 0, "access_log": False},
            "deepseek": {"base_url": upstream},
            "pool": {"token_store": ""},
        }
        for section, values in self.overrides.items():
            if isinstance(values, dict):
                overrides.setdefault(section, {}).update(values)
            else:
                overrides[section] = values
        self.config = load_config(None, env={}, overrides=overrides)
        self.gateway = Gateway(self.config)
        host, port = await self.gateway.start()
        self.base_url = f"http://{host}:{port}"

    def stop(self) -> None:
        try:
            self.run(self._stop, timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        await self.gateway.stop()
        await self.sim.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers --------------------------------------------------------------

    @property
    def api_base(self) -> str:
        return self.base_url + "/v1"

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def run(self, fn: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        """Run a coroutine function on the stack's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the stack's loop (to touch its objects safely)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper)

    def counters(self) -> dict[str, Any]:
        return self.call(self.sim.counters.snapshot)

    def inject(self, fault: str, account: str | None = None, count: int = 1, **params: Any) -> None:
        self.call(lambda: self.sim.inject(fault, account=account, count=count, **params))

    def wait_idle(self, timeout: float = 10) -> None:
        """Until every lease is back and every background cleanup has finished."""

        async def idle() -> None:
            pool = self.gateway.pool
            while pool.leases or any(not t.done() for t in pool.tasks if t.get_coro().__name__ == "_cleanup"):
                await asyncio.sleep(0.01)

        self.run(idle, timeout=timeout)

    def pool_snapshot(self) -> dict[str, Any]:
        return self.call(self.gateway.pool.snapshot)


def sdk(stack: Stack, key: str = KEY, *, base_url: str | None = None) -> openai.OpenAI:
    """The official openai client pointed at the stack's gateway, without retries."""
    return openai.OpenAI(base_url=base_url or stack.api_base, api_key=key, max_retries=0, timeout=30)


def http(
    stack: Stack,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    key: str | None = KEY,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request over a fresh socket; returns status, headers, de-chunked body."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    hdrs = {"Host": "localhost", "Connection": "close"}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(body))
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", stack.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + (body or b""))
        raw = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
    return parse_response(raw)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        rest = dechunk(rest)
    return status, headers, rest


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def sse_events(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [block[len("data: ") :] for block in body.decode().split("\n\n") if block.startswith("data: ")]
