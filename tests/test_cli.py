"""``python -m ds2a`` as a user runs it: a real process, its output, its signals, its exit status.

Every process is started with ``sys.executable`` in a temporary folder (so no
config.json of the checkout is picked up), with every ``DS2A_*`` variable of the
test environment removed, and is killed in ``finally`` whatever happens.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ds2a.sim import expected
from harness import Stack
from test_e2e_http import RawStream, chat_body, content_of

START_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS2A_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    """A ``python -m ds2a`` child process whose output is read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ds2a", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        for name, pipe, sink in (("out", self.proc.stdout, self.stdout), ("err", self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(name, pipe, sink), daemon=True).start()

    def _pump(self, name: str, pipe: Any, sink: list[str]) -> None:
        for line in pipe:
            sink.append(line)
            self._lines.put((name, line))

    def wait_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first output line (stdout or stderr) matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.stdout + self.stderr:
            if m := regex.search(line):
                return m
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self._lines.empty():
                    break
                continue
            if m := regex.search(line):
                return m
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output()}")

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(EXIT_TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    started: list[Gateway] = []

    def start(*args: str, **env: str) -> Gateway:
        started.append(Gateway(list(args), tmp_path, clean_env(**env)))
        return started[-1]

    try:
        yield start
    finally:
        for gateway in started:
            gateway.kill()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Stack]:
    """A simulator for gateways started from the command line (its own gateway is unused)."""
    with Stack(accounts=0) as s:
        yield s


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def run_once(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ds2a", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


# --- --demo ----------------------------------------------------------------------------------------


def test_demo_serves_streams_and_shuts_down_within_the_grace(spawn: Any) -> None:
    gateway = spawn("--demo", "--port", "0", DS2A_SERVER_SHUTDOWN_GRACE="0.5")
    curl = gateway.wait_line(r"curl -N (http://127\.0\.0\.1:(\d+))/v1/chat/completions")
    base, port = curl[1], int(curl[2])
    key = gateway.wait_line(r"API key\s*:\s*(\S+)")[1]
    assert gateway.wait_line(r"base URL\s*:\s*(\S+)")[1] == f"{base}/v1"
    assert gateway.wait_line(r"Authorization: Bearer (\S+?)'")[1] == key  # the curl line is ready to paste
    assert get(f"{base}/healthz") == (200, b'{"status":"ok"}')

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)
    chunks = list(
        client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "[[sim:tokens=5]] Hello!"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]

    # A long answer (100000 tokens at the demo's 20 ms each) is running when SIGTERM comes.
    with RawStream(port, chat_body("[[sim:tokens=100000]] a long story", stream=True), key=key, timeout=15) as raw:
        events = [raw.next_event(), raw.next_event(), raw.next_event()]
        gateway.proc.send_signal(signal.SIGTERM)
        # Within the 0.5 s grace about 25 more tokens arrive; with the default 30 s grace
        # about 1500 would. Reading stops at 500, so a grace not honoured fails here, fast.
        for _ in range(500):
            event = raw.next_event()
            if event is None:
                break
            events.append(event)
        assert raw.ended, f"still streaming {len(events)} events after SIGTERM"
    assert json.loads(events[-1])["error"]["code"] == "shutting_down"  # cut visibly, then a proper end
    assert content_of(events[:-1])
    assert gateway.proc.wait(EXIT_TIMEOUT) == 0, gateway.output()
    assert "running answers get up to 0.5 s to finish" in gateway.output()


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "env", "field"),
    [
        ({"pool": {"queue_max": "many"}}, {}, "pool.queue_max"),
        ({"server": {"prot": 5001}}, {}, "server.prot"),
        ({"accounts": [{"email": "a@example.com"}]}, {}, "accounts[0].password"),
        ({}, {"DS2A_POOL_QUEUE_TIMEOUT": "soon"}, "DS2A_POOL_QUEUE_TIMEOUT"),
        ({"api": {"citations": "footnotes"}}, {}, "api.citations"),
    ],
)
def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str], field: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    result = run_once(["--config", str(path)], tmp_path, clean_env(**env))
    assert result.returncode == 2, result
    assert field in result.stderr
    assert "Traceback" not in result.stderr


def test_config_file_that_is_not_json_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"keys": ["k"],}')
    # Found through DS2A_CONFIG this time.
    result = run_once([], tmp_path, clean_env(DS2A_CONFIG=str(path)))
    assert result.returncode == 2 and "invalid JSON" in result.stderr and "line 1" in result.stderr


def test_config_file_env_and_flags_are_honoured(spawn: Any, upstream: Stack, tmp_path: Path) -> None:
    config = {
        "keys": ["sk-from-the-file"],
        "accounts": [{"email": "cli@example.com", "password": upstream.sim_config.password}],
        "server": {"port": 1, "access_log": False},  # overridden by --port
        "deepseek": {"base_url": upstream.sim.base_url},
    }
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(config))
    port = free_port()
    gateway = spawn(
        "--config",
        str(path),
        "--port",
        str(port),
        DS2A_KEYS="sk-from-the-env",  # the environment beats the file
        DS2A_API_ALLOW_DIRECT_TOKENS="false",
    )
    gateway.wait_line(rf"listening on http://127\.0\.0\.1:{port}")
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/healthz")[0] == 200

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-from-the-env", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "from the CLI"}]
    reply = client.chat.completions.create(model="deepseek-chat", messages=messages)
    assert reply.choices[0].message.content == expected("from the CLI", False, False, upstream.sim_config).answer
    # The file's key was replaced, and with direct tokens off it is not tried upstream either.
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=f"{base}/v1", api_key="sk-from-the-file", max_retries=0).models.list()
    assert "not one of this gateway's keys" in caught.value.message
    # pool.token_store is relative to the config file's folder.
    stored = json.loads((tmp_path / "data" / "tokens.json").read_text())
    assert stored and "sim-password" not in json.dumps(stored)
    assert gateway.terminate() == 0, gateway.output()


def test_sigterm_when_idle_exits_0(spawn: Any) -> None:
    gateway = spawn("--demo", "--port", "0")
    curl = gateway.wait_line(r"curl -N (http://127\.0\.0\.1:\d+)/")
    assert get(f"{curl[1]}/healthz")[0] == 200
    assert gateway.terminate() == 0, gateway.output()
