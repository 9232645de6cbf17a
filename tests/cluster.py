"""Several gateway replicas as real processes, one simulator, one Redis: a cluster on loopback.

The simulator runs in a thread of the test process (its counters are read directly);
each replica is ``python -m ds2a --config <file>`` on a port of its own, so a test can
SIGKILL, SIGSTOP and SIGCONT it like an operator's machine would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvloop

from ds2a.sim import SimConfig, Simulator
from redis_server import free_port

KEY = "sk-cluster-key"
ROOT = Path(__file__).resolve().parent.parent


class SimThread:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim", daemon=True)
        self.sim = Simulator(config)
        self.url = ""

    def start(self) -> SimThread:
        self.thread.start()
        self.url = self.run(self.sim.start(host="127.0.0.1", port=0))
        return self

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.run(wrapper())

    def counters(self) -> dict[str, Any]:
        return self.call(self.sim.counters.snapshot)

    def stop(self) -> None:
        try:
            self.run(self.sim.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Replica:
    def __init__(self, name: str, workdir: Path, config: dict[str, Any]) -> None:
        self.name = name
        self.port = free_port()
        self.config_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        config = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": self.port}}
        self.config_path.write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DS2A_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ds2a", "--config", str(self.config_path)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused one cannot handle SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """A simulator, ``n`` replicas sharing ``accounts`` simulator accounts through one Redis."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        prefix: str,
        *,
        replicas: int = 2,
        accounts: int = 4,
        sim: SimConfig | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.sim = SimThread(sim or SimConfig())
        self.workdir = workdir
        self.redis_url = redis_url
        self.prefix = prefix
        self.n = replicas
        self.accounts = [{"email": f"user{i}@example.com", "password": SimConfig().password} for i in range(accounts)]
        self.extra = config or {}
        self.replicas: list[Replica] = []

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "keys": [KEY],
            "accounts": self.accounts,
            "server": {"access_log": False, "shutdown_grace": 5},
            "deepseek": {"base_url": self.sim.url},
            "pool": {"token_store": ""},
            "redis": {"url": self.redis_url, "prefix": self.prefix},
        }
        for section, values in self.extra.items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        return cfg

    def start(self) -> Cluster:
        self.sim.start()
        self.replicas = [Replica(f"replica{i}", self.workdir, self.config()).start() for i in range(self.n)]
        for replica in self.replicas:
            wait_ready(replica)
        return self

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.sim.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}\n{r.log()[-4000:]}" for r in self.replicas)


def wait_ready(replica: Replica, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.proc is not None and replica.proc.poll() is not None:
            raise RuntimeError(f"{replica.name} exited:\n{replica.log()[-3000:]}")
        try:
            with urllib.request.urlopen(replica.base_url + "/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{replica.name} did not start:\n{replica.log()[-3000:]}")


async def chat(
    base_url: str, prompt: str, *, stream: bool = True, key: str = KEY, model: str = "deepseek-chat",
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    """One request over its own connection; (status, headers, de-chunked body)."""
    from harness import parse_response

    host, port = base_url.rsplit("/", 1)[-1].split(":")
    body = json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.read()
    finally:
        writer.close()
    return parse_response(raw)


def answer_text(status: int, headers: dict[str, str], body: bytes) -> str:
    """The answer content of a 200 reply, streamed or not."""
    assert status == 200, (status, body[:400])
    if headers.get("content-type", "").startswith("text/event-stream"):
        from harness import sse_events

        events = sse_events(body)
        assert events[-1] == "[DONE]", events[-3:]
        chunks = [json.loads(e) for e in events[:-1]]
        assert not [c for c in chunks if "error" in c], chunks[-1]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return json.loads(body)["choices"][0]["message"]["content"]


async def call(base_url: str, method: str, path: str, body: dict[str, Any] | None = None, key: str = KEY,
               timeout: float = 60) -> tuple[int, Any]:
    """One JSON request over its own connection; (status, parsed JSON body)."""
    from harness import parse_response

    host, port = base_url.rsplit("/", 1)[-1].split(":")
    data = b"" if body is None else json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.read()
    finally:
        writer.close()
    status, _, payload = parse_response(raw)
    return status, json.loads(payload) if payload else None
