"""Does one flooding client hurt the others? healthz latency for a bystander, and RSS.

    .venv/bin/python bench/flood.py [--seconds 10] [--attack pipeline|unread|bodies|all]

A gateway runs as a child process (no accounts: the attacks need none), so its RSS can
be read from /proc. One attacker connection floods it while a second client asks
``GET /healthz`` on its own connection, one request at a time, and the round-trip
times of those requests are the figure. Attacks:

- ``pipeline``: thousands of pipelined ``GET /healthz`` per write, answers read and
  discarded (the client reads, so the gateway is never blocked on writing);
- ``unread``: the same requests, answers never read;
- ``bodies``: pipelined ``POST`` requests with 64 KiB bodies, answers read.

It prints, per attack, the bystander's latency (p50, p99, max), how many answers the
attacker got, and the gateway's peak and final RSS. ``--burst N`` also opens N
connections at once and reports how long they took to be accepted (the listen
backlog at work). It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procs import Child, free_port, reset_peak_rss, status_kib  # noqa: E402

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: flood\r\n\r\n"
BODY = b"x" * 65536
POST = b"POST /healthz HTTP/1.1\r\nHost: flood\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
BATCH = 5000  # requests per write of the attacker


class Attacker:
    """One connection that writes pipelined requests as fast as the gateway takes them."""

    def __init__(self, port: int, kind: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.kind = kind
        self.stop = threading.Event()
        self.received = 0
        self.sent = 0
        payload = POST if kind == "bodies" else HEALTHZ
        self.batch = payload * (BATCH if kind != "bodies" else 64)
        self.requests_per_batch = BATCH if kind != "bodies" else 64
        self.threads = [threading.Thread(target=self._send, daemon=True)]
        if kind != "unread":
            self.threads.append(threading.Thread(target=self._read, daemon=True))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        self.sock.settimeout(0.5)
        view = memoryview(self.batch)
        while not self.stop.is_set():
            offset = 0
            while offset < len(view) and not self.stop.is_set():
                try:
                    offset += self.sock.send(view[offset:])
                except TimeoutError:
                    continue  # the gateway stopped reading: keep pressing until told to stop
                except OSError:
                    return
            self.sent += self.requests_per_batch

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.received += data.count(b"HTTP/1.1 ")

    def close(self) -> None:
        self.stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for thread in self.threads:
            thread.join(2)


def probe(port: int, seconds: float) -> tuple[list[float], int]:
    """Bystander: healthz round trips on one keep-alive connection (reconnecting if cut)."""
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    sock: socket.socket | None = None
    while time.monotonic() < deadline:
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            started = time.perf_counter()
            sock.sendall(HEALTHZ)
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("closed")
                reply += data
            latencies.append((time.perf_counter() - started) * 1000.0)
        except OSError:
            failures += 1
            if sock is not None:
                sock.close()
            sock = None
        time.sleep(0.01)
    if sock is not None:
        sock.close()
    return latencies, failures


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SERVER_SETTINGS: dict[str, Any] = {}  # --backlog lands here


def start_gateway(workdir: Path) -> tuple[Child, int]:
    port = free_port()
    server = {"host": "127.0.0.1", "port": port, "access_log": False, **SERVER_SETTINGS}
    config = {"keys": ["sk-flood"], "server": server}
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    gateway = Child("gateway", [sys.executable, "-m", "ds2a", "--config", str(path)], workdir, read_stdout=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return gateway, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the gateway did not start:\n" + gateway.log_tail())


def run_attack(kind: str, seconds: float, workdir: Path) -> dict[str, float | int | str]:
    gateway, port = start_gateway(workdir)
    try:
        baseline, _ = probe(port, 1.0)
        reset_peak_rss(gateway.pid)
        attacker = Attacker(port, kind) if kind != "none" else None
        if attacker is not None:
            attacker.start()
        time.sleep(0.5)
        latencies, failures = probe(port, seconds)
        alive = gateway.alive()
        peak = status_kib("VmHWM", gateway.pid) if alive else 0
        rss = status_kib("VmRSS", gateway.pid) if alive else 0
        answered = attacker.received if attacker else 0
        if attacker is not None:
            attacker.close()
        return {
            "attack": kind,
            "baseline_p50_ms": round(statistics.median(baseline), 2) if baseline else float("nan"),
            "p50_ms": round(percentile(latencies, 0.5), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(max(latencies), 2) if latencies else float("nan"),
            "probes": len(latencies),
            "probe_failures": failures,
            "attacker_answers": answered,
            "peak_rss_mib": round(peak / 1024, 1),
            "rss_mib": round(rss / 1024, 1),
            "gateway_alive": str(alive),
        }
    finally:
        gateway.proc.terminate()
        try:
            gateway.proc.wait(10)
        except Exception:
            gateway.proc.kill()


def connect_burst(count: int, workdir: Path) -> dict[str, float | int]:
    """``count`` connects started at once; milliseconds until each was established.

    Each then sends one healthz request and waits for its answer, so the gateway
    must accept them all, not only the kernel.
    """
    gateway, port = start_gateway(workdir)
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    try:
        started = time.perf_counter()
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            err = sock.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            selector.register(sock, selectors.EVENT_WRITE)
            socks.append(sock)
        connect_ms: list[float] = []
        answered = 0
        deadline = time.monotonic() + 60
        while len(connect_ms) < count or answered < count:
            if time.monotonic() > deadline:
                break
            for key, events in selector.select(timeout=1):
                sock = key.fileobj  # type: ignore[assignment]
                if events & selectors.EVENT_WRITE:
                    connect_ms.append((time.perf_counter() - started) * 1000)
                    sock.send(HEALTHZ)
                    selector.modify(sock, selectors.EVENT_READ)
                elif sock.recv(4096):
                    answered += 1
                    selector.unregister(sock)
        return {
            "connects": count,
            "established": len(connect_ms),
            "answered": answered,
            "connect_p50_ms": round(percentile(connect_ms, 0.5), 1),
            "connect_p99_ms": round(percentile(connect_ms, 0.99), 1),
            "connect_max_ms": round(max(connect_ms), 1) if connect_ms else float("nan"),
        }
    finally:
        for sock in socks:
            sock.close()
        gateway.proc.terminate()
        try:
            gateway.proc.wait(10)
        except Exception:
            gateway.proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="probing time per attack")
    parser.add_argument("--attack", default="all", choices=["none", "pipeline", "unread", "bodies", "all"])
    parser.add_argument("--burst", type=int, default=0, help="also: N connects at once (0: skip)")
    parser.add_argument("--backlog", type=int, help="server.backlog of the gateway (default: its own)")
    args = parser.parse_args(argv)
    if args.backlog is not None:
        SERVER_SETTINGS["backlog"] = args.backlog
    kinds = ["none", "pipeline", "unread", "bodies"] if args.attack == "all" else [args.attack]
    with tempfile.TemporaryDirectory(prefix="ds2a-flood-") as tmp:
        print_table([run_attack(kind, args.seconds, Path(tmp)) for kind in kinds])
        if args.burst:
            print()
            print_table([connect_burst(args.burst, Path(tmp))])
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
