"""A real Redis for the shared-pool tests: our own ``redis-server`` on a free port, or
the one ``DS2A_TEST_REDIS_URL`` names. Skipped with a clear reason only when neither
exists (and failed instead when ``DS2A_TEST_REQUIRE_REDIS`` is set, as ``.ci/run`` does).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process of the test's own, which a test may stop and start again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ds2a-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--notify-keyspace-events", "Ex"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def require_redis_server() -> None:
    """For tests that stop and start their own Redis: DS2A_TEST_REDIS_URL cannot do that."""
    if shutil.which("redis-server") is None:
        reason = "redis-server is not on PATH (this test stops and restarts its own Redis)"
        if os.environ.get("DS2A_TEST_REQUIRE_REDIS"):
            pytest.fail(reason)
        pytest.skip(reason)


def own_server_or_skip() -> RedisServer:
    require_redis_server()
    return RedisServer().start()


def shared_url_or_skip() -> tuple[str, RedisServer | None]:
    """A Redis URL: our own server when redis-server exists, else DS2A_TEST_REDIS_URL."""
    if shutil.which("redis-server") is not None:
        server = RedisServer().start()
        return server.url, server
    url = os.environ.get("DS2A_TEST_REDIS_URL")
    if url:
        return url, None
    reason = "no Redis: neither redis-server on PATH nor DS2A_TEST_REDIS_URL"
    if os.environ.get("DS2A_TEST_REQUIRE_REDIS"):
        pytest.fail(reason)
    pytest.skip(reason)


def unique_prefix() -> str:
    return f"ds2a-test-{uuid.uuid4().hex[:8]}:"
