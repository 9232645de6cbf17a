"""Cost of the tool-call recogniser on the answer path (stdlib only).

    .venv/bin/python bench/recognizer_bench.py [--repeat N] [--tokens N]

Feeds streams to ``ToolCallRecognizer.feed`` one token at a time and prints the best-of-N
time per token (ns), next to a bare loop doing the same list work without the recogniser
(so the difference is what the recogniser adds to every relayed token):

* ``prose``     - plain text in 3-character tokens: the fast path;
* ``markdown``  - an answer with headings, lists, a table, inline code, ``<`` in text and
                  fenced code blocks (marker and fence checks on the slow path);
* ``sim-vocab`` - the simulator's deliberately nasty vocabulary (``<``, ``|``, ````` ```, ``{``,
                  newlines, CJK, emoji) in its own tokens;
* ``call``      - a tool call with 1 KiB of arguments in 3-character tokens (parsed,
                  repaired and validated at the end);
* ``reasoning`` - ``ReasoningFilter`` over prose;
* ``json-fence``- ``JsonFenceStripper`` over a fenced JSON answer.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ds2a.relay.conversation import Tool  # noqa: E402
from ds2a.relay.tools import ReasoningFilter, ToolCallRecognizer  # noqa: E402
from ds2a.relay.tools.markup import CALL_CLOSE, CALL_OPEN  # noqa: E402
from ds2a.relay.tools.structured import JsonFenceStripper  # noqa: E402
from ds2a.sim.text import VOCAB  # noqa: E402

TOOL = Tool("write_note", "", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
PROSE = (
    "The gateway relays each token as soon as it arrives, and the recogniser only holds back what could "
    "still become a call marker. Plain answers therefore pass straight through, one piece at a time, "
)
MARKDOWN = (
    "## Result\n\nHere is what I found:\n\n- first item with `inline code` and a < b\n- second item\n\n"
    "| col | val |\n| --- | --- |\n| a | 1 |\n\n```python\nif a < b:\n    print('<tag>')\n```\n\n"
    "~~~\nplain fence\n~~~\nThat is all, 数据 🙂.\n"
)


def tokens(text: str, count: int, size: int = 3) -> list[str]:
    reps = count * size // len(text) + 1
    whole = text * reps
    return [whole[i : i + size] for i in range(0, count * size, size)]


def sim_tokens(count: int) -> list[str]:
    return random.Random(7).choices(VOCAB, k=count)


def call_tokens() -> list[str]:
    body = '{"name": "write_note", "arguments": {"text": "' + "lorem ipsum " * 85 + '"}}'
    return tokens(f"Saving it.{CALL_OPEN}{body}{CALL_CLOSE}", len(CALL_OPEN + body + CALL_CLOSE) // 3 + 4)


def best(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return min(times)


def run_recogniser(pieces: list[str]) -> Callable[[], None]:
    def go() -> None:
        rec = ToolCallRecognizer([TOOL])
        feed = rec.feed
        out: list[object] = []
        for piece in pieces:
            out += feed(piece)
        out += rec.flush()

    return go


def run_bare(pieces: list[str]) -> Callable[[], None]:
    def go() -> None:
        out: list[object] = []
        for piece in pieces:
            out += [piece]

    return go


def run_filter(pieces: list[str]) -> Callable[[], None]:
    def go() -> None:
        f = ReasoningFilter()
        out: list[str] = []
        for piece in pieces:
            out += f.feed(piece)
        out += f.flush()

    return go


def run_stripper(pieces: list[str]) -> Callable[[], None]:
    def go() -> None:
        s = JsonFenceStripper()
        out = [s.feed(piece) for piece in pieces]
        out.append(s.flush())

    return go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=20_000)
    args = parser.parse_args()
    n = args.tokens
    json_answer = "```json\n{" + ", ".join(f'"k{i}": "value {i}"' for i in range(n // 4)) + "}\n```"
    cases: list[tuple[str, list[str], Callable[[list[str]], Callable[[], None]]]] = [
        ("prose", tokens(PROSE, n), run_recogniser),
        ("markdown", tokens(MARKDOWN, n), run_recogniser),
        ("sim-vocab", sim_tokens(n), run_recogniser),
        ("call", call_tokens(), run_recogniser),
        ("reasoning", tokens(PROSE, n), run_filter),
        ("json-fence", tokens(json_answer, len(json_answer) // 3), run_stripper),
    ]
    print(f"{'stream':<11} {'tokens':>7} {'ns/token':>9} {'bare loop':>10} {'added':>7}")
    for name, pieces, runner in cases:
        spent = best(runner(pieces), args.repeat) / len(pieces)
        bare = best(run_bare(pieces), args.repeat) / len(pieces)
        print(f"{name:<11} {len(pieces):>7} {spent:>9.0f} {bare:>10.0f} {spent - bare:>7.0f}")


if __name__ == "__main__":
    main()
