"""Stream parser throughput over the real upstream captures (stdlib only).

    .venv/bin/python bench/parser_bench.py [--repeat N] [--sse-dir DIR]

For each big capture, feeds the body to ``StreamParser`` three ways and prints
the best-of-N time per SSE frame:

* ``whole``  - the entire body in one ``feed`` (lower bound: no per-call cost);
* ``frame``  - one ``feed`` per SSE block, as the upstream usually sends them;
* ``16k``    - 16 KiB reads, a typical socket read size (frames cut anywhere).

The captures live in ../shared/fixtures/sse (reference material beside the checkout).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ds2a.deepseek.stream import StreamParser  # noqa: E402

DEFAULT_SSE_DIR = ROOT.parent / "shared" / "fixtures" / "sse"
CAPTURES = (
    "new-completion-ends-incomplete-20260405.txt",
    "new-continue-resume-20260405.txt",
    "new-content-filter-20260405.txt",
    "new-reasoner-search-citations-20260403.txt",
    "new-v4-flash-completion-20260429.txt",
)


def frames_of(body: bytes) -> list[bytes]:
    """The body cut after each blank line, separators kept (one SSE block per piece)."""
    pieces = body.split(b"\n\n")
    out = [piece + b"\n\n" for piece in pieces[:-1]]
    if pieces[-1]:
        out.append(pieces[-1])
    return out


def chunks_of(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def run(pieces: list[bytes]) -> int:
    parser = StreamParser()
    count = 0
    feed = parser.feed
    for piece in pieces:
        count += len(feed(piece))
    count += len(parser.close())
    return count


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sse-dir", type=Path, default=DEFAULT_SSE_DIR)
    args = parser.parse_args()
    if not args.sse_dir.exists():
        print(f"captures not found: {args.sse_dir}", file=sys.stderr)
        return 1
    print(f"{'capture':46} {'bytes':>8} {'frames':>7} {'events':>7} {'whole':>8} {'frame':>8} {'16k':>8}  us/frame")
    total_frames = 0
    totals = {"whole": 0.0, "frame": 0.0, "16k": 0.0}
    for name in CAPTURES:
        path = args.sse_dir / name
        if not path.exists():
            continue
        body = path.read_bytes()
        frames = frames_of(body)
        splits = {"whole": [body], "frame": frames, "16k": chunks_of(body, 16384)}
        events = run(frames)
        times = {mode: best_of(args.repeat, lambda p=pieces: run(p)) for mode, pieces in splits.items()}
        total_frames += len(frames)
        for mode, seconds in times.items():
            totals[mode] += seconds
        per = {mode: seconds / len(frames) * 1e6 for mode, seconds in times.items()}
        print(f"{name:46} {len(body):>8} {len(frames):>7} {events:>7} {per['whole']:>8.2f} {per['frame']:>8.2f} {per['16k']:>8.2f}")
    if total_frames:
        per = {mode: seconds / total_frames * 1e6 for mode, seconds in totals.items()}
        print(f"{'all':46} {'':>8} {total_frames:>7} {'':>7} {per['whole']:>8.2f} {per['frame']:>8.2f} {per['16k']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
