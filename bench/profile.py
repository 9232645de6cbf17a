"""py-spy on the gateway during a measured phase, and the top frames of what it saw.

py-spy samples the gateway from outside (no change to it); ``--nonblocking`` keeps
it from pausing the process at each sample, so the profile does not slow the
relay much. Idle samples (the loop waiting in epoll) are left out by py-spy, so
the counts are where the CPU went.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 250  # samples per second
TOP = 15
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recording:
    def __init__(self, pid: int, out: Path, *, mode: str = "nonblocking") -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.out = out
        self.summary: dict[str, Any] | None = None
        self.log = open(out.with_suffix(".log"), "wb")
        # nonblocking: least intrusive, but its idle detection is loose (a loop thread
        # about to sleep in epoll can count as busy). blocking: pauses the gateway at each
        # sample, cleaner attribution. native: blocking plus the C frames (uvloop, syscalls).
        flags = {"nonblocking": ["--nonblocking"], "blocking": [], "native": ["--native"]}[mode]
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", *flags, "-o", str(out)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def stop(self) -> dict[str, Any]:
        """Stop sampling (py-spy writes its file on SIGINT) and summarise it; once."""
        if self.summary is None:
            self.summary = self._stop()
        return self.summary

    def _stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if not self.out.exists():
            return {"error": f"py-spy wrote nothing; see {self.out.with_suffix('.log')}"}
        return summarise(self.out.read_text(errors="replace"))


def _short(frame: str) -> str:
    """``func (path:line)`` -> ``func (package/file.py)``: lines apart, one function is one row."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("/ds2a/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


IDLE_LEAVES = ("epoll_pwait", "epoll_wait")  # native mode samples idle threads too
IDLE_FRAMES = ("_queue_SimpleQueue_get", "PyThread_acquire_lock_timed")
WORKER = "_worker (concurrent/futures/thread.py)"
LOOP_BOTTOM = "Runner.run (asyncio/runners.py)"


def summarise(raw: str, top: int = TOP) -> dict[str, Any]:
    """Where the gateway's samples went: worker threads (the PoW scans), the event loop below
    any Python frame (uvloop/C), and the loop's Python code by own and inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = workers = loop_c = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        if (frames[-1].split(" ", 1)[0] in IDLE_LEAVES or frames[-1] == WORKER
                or any(f.startswith(IDLE_FRAMES) for f in frames)):
            continue  # waiting: in epoll, or a worker thread waiting for work
        total += count
        if WORKER in frames:
            workers += count
            continue
        if frames[-1] == LOOP_BOTTOM:
            loop_c += count
            continue
        own[frames[-1]] += count
        # Only frames above the loop's run(): below it every stack is the same.
        above = frames[frames.index(LOOP_BOTTOM) + 1:] if LOOP_BOTTOM in frames else frames
        for name in set(above):
            inclusive[name] += count

    def rows(counter: Counter[str]) -> list[tuple[str, int, float]]:
        return [(name, n, round(100 * n / total, 1)) for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "workers": workers,  # proof-of-work threads (and any other executor work)
        "loop_below_python": loop_c,  # uvloop internals, syscalls, C callbacks: no Python frame on top
        "own": rows(own),
        "inclusive": rows(inclusive),
    }
