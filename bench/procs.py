"""The simulator and the gateway as child processes, and what /proc says about them.

Each runs in its own process so its CPU time and peak memory can be read from
``/proc/<pid>`` without the load generator's share mixed in. Every child started
here is registered in a ``Children`` set whose ``stop_all`` the entry point calls
on every way out (normal end, error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


# --- /proc readers ----------------------------------------------------------------


def cpu_times(pid: int | str = "self") -> tuple[float, float]:
    """(user, system) CPU seconds of a process (all its threads) or of one task, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # utime, stime: fields 14, 15


def cpu_seconds(pid: int | str = "self") -> float:
    user, system = cpu_times(pid)
    return user + system


def gateway_threads(pid: int) -> dict[str, float]:
    """The event-loop thread (user = Python and C libraries, system = syscalls) apart from the
    worker threads (the proof-of-work scans), so a CPU figure can be split by cause."""
    out = {"loop_user": 0.0, "loop_system": 0.0, "workers": 0.0}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            user, system = cpu_times(f"{pid}/task/{tid}")
        except OSError:
            continue  # a thread that has just ended
        if int(tid) == pid:
            out["loop_user"], out["loop_system"] = user, system
        else:
            out["workers"] += user + system
    return out


def threads_cpu_seconds(tids: set[int]) -> float:
    """CPU seconds of some threads of this process (those that have ended count 0)."""
    total = 0.0
    for tid in tids:
        try:
            total += cpu_seconds(f"self/task/{tid}")
        except OSError:
            pass
    return total


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``kB`` line of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current RSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int | str) -> bool:
    """Restart VmHWM at the current RSS (clear_refs 5), so a peak belongs to one phase."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- pinning --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPUs the gateway gets, and which the simulator and load generator share."""

    gateway: frozenset[int] | None
    others: frozenset[int] | None

    @staticmethod
    def choose(mode: str) -> Pinning:
        cpus = sorted(ALLOWED_CPUS)
        if mode == "off" or len(cpus) < 2:
            return Pinning(None, None)
        # The gateway alone on one CPU: the upstream + client side then has the same
        # CPUs in the direct run and in the gateway run, so the ratio shows the gateway.
        return Pinning(frozenset(cpus[-1:]), frozenset(cpus[:-1]))

    def describe(self) -> str:
        if self.gateway is None:
            return "off (all processes share every CPU)"
        return f"gateway on CPU {sorted(self.gateway)}, simulator + load generator on CPU {sorted(self.others or ())}"

    def apply(self, pid: int | str, role: str) -> None:
        """Pin every thread of a process (affinity is per thread; new threads inherit it)."""
        cpus = self.gateway if role == "gateway" else self.others
        set_affinity(pid, cpus or ALLOWED_CPUS)


# The CPUs this run may use at all (a container may allow fewer than the machine has).
ALLOWED_CPUS = frozenset(os.sched_getaffinity(0))


def set_affinity(pid: int | str, cpus: frozenset[int]) -> None:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that has just ended


# --- children ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """One child process with its stderr in a log file (never a pipe that could fill up)."""

    def __init__(self, name: str, argv: list[str], workdir: Path, *, read_stdout: bool) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        # Own session: a Ctrl-C in the terminal reaches only the bench, which then
        # stops its children in order instead of racing their own signal handlers.
        # stdout is a pipe only for a child whose first line is read (and that prints no more).
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE if read_stdout else self._log, stderr=self._log,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def read_line(self, timeout: float = START_TIMEOUT) -> str:
        """The first line the child prints (the simulator prints its base URL)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        buffer = b""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read() or b""
            buffer += chunk
            if b"\n" in buffer:
                return buffer.split(b"\n", 1)[0].decode().strip()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} printed no line within {timeout:g} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_kib(self) -> int:
        return status_kib("VmHWM", self.pid)

    def rss_kib(self) -> int:
        return status_kib("VmRSS", self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class Children:
    """Every child this run started; ``stop_all`` is safe to call more than once."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="ds2a-bench-"))
        self._children: list[Child] = []
        self._started = 0

    def start(self, name: str, argv: list[str], *, read_stdout: bool = False) -> Child:
        self._started += 1
        child = Child(f"{self._started:02d}-{name}", argv, self.workdir, read_stdout=read_stdout)
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        while self._children:
            self._children.pop().stop()

    def forget_logs(self) -> None:
        """After a run that went well: the configs and logs of its children are not needed."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_simulator(children: Children, pinning: Pinning, *, difficulty: int) -> tuple[Child, str]:
    """``python -m ds2a.sim`` on a free loopback port; returns the child and its base URL."""
    argv = [sys.executable, "-m", "ds2a.sim", "--host", "127.0.0.1", "--port", "0", "--difficulty", str(difficulty)]
    child = children.start("simulator", argv, read_stdout=True)
    pinning.apply(child.pid, "simulator")
    base_url = child.read_line()
    if not base_url.startswith("http://"):
        raise RuntimeError(f"the simulator printed {base_url!r} instead of its URL:\n{child.log_tail()}")
    return child, base_url


def write_config(children: Children, name: str, config: dict[str, Any]) -> Path:
    path = children.workdir / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    return path


GATEWAY_COMMAND = (sys.executable, "-m", "ds2a")


def start_gateway(children: Children, pinning: Pinning, config_path: Path, *, port: int,
                  command: tuple[str, ...] = GATEWAY_COMMAND) -> Child:
    argv = [*command, "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    child = children.start("gateway", argv)
    pinning.apply(child.pid, "gateway")
    return child


def start_redis(children: Children, pinning: Pinning) -> tuple[Child, str]:
    """``redis-server`` on a free loopback port (no persistence), on the gateway's CPU: the
    simulator's is saturated in the relay scenarios, and the shared pool's round trips are
    the gateway's cost (in production Redis is elsewhere and mostly idle)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("--redis needs redis-server on PATH (or --redis-url)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(children.workdir), "--notify-keyspace-events", "Ex"]
    child = children.start("redis", argv)
    pinning.apply(child.pid, "gateway")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return child, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server did not start:\n{child.log_tail()}")
