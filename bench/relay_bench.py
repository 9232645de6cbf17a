"""The relay loop alone: nanoseconds per upstream text event, from event to encoded chunk.

A fake upstream hands out batches of ``AnswerDelta`` events (one per read, as a paced
stream does, or many per read); the real relay loop and the real OpenAI stream sink
turn them into chunks written to a fake responder. No socket, no parser: this is
the per-event cost of the relay core and the dialect's encoder, the part a change to
the relay loop moves. Pin it (``taskset -c 0``) for stable figures.

    .venv/bin/python -m bench.relay_bench [--events 200000] [--batch 1] [--tools]

``--tools`` offers a tool to the request, which puts the tool-call recogniser on the
text path (the answer itself is plain text, as most answers to agents are).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from ds2a.api.chat import StreamSink
from ds2a.api.encode import ChunkEncoder
from ds2a.api.models import ModelSpec
from ds2a.config import Config
from ds2a.deepseek.events import AnswerDelta, Finish
from ds2a.relay.conversation import Conversation, Message, Text, Tool
from ds2a.relay.core import Generation, Relay, RelayAnswer

TOKENS = ("Hello", " world", ",", " this", " is", " a", " plain", " answer", " of", " tokens", ".")


class FakeUpstream:
    def __init__(self, events: int, batch: int) -> None:
        self.batches: list[list[Any]] = []
        tokens = [AnswerDelta(TOKENS[i % len(TOKENS)]) for i in range(events)]
        for start in range(0, events, batch):
            self.batches.append(tokens[start : start + batch])
        self.batches.append([Finish("stop")])
        self.batches.reverse()

    async def read_events(self) -> list[Any]:
        return self.batches.pop() if self.batches else []

    def close(self) -> None:
        pass


class FakeResponder:
    paused = False

    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.writes += 1

    async def drain(self) -> None:
        pass


async def run(events: int, batch: int, tools: bool) -> tuple[float, FakeResponder]:
    conversation = Conversation([Message("user", [Text("hi")])])
    if tools:
        conversation.tools = [Tool("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}})]
    generation = Generation(conversation, ModelSpec("deepseek-chat", False, False, "default"))
    relay = Relay(Config(), pool=None)  # type: ignore[arg-type]
    answer = RelayAnswer(relay, generation, FakeUpstream(events, batch), 0)  # type: ignore[arg-type]
    responder = FakeResponder()
    sink = StreamSink(responder, ChunkEncoder("chatcmpl-x", 0, "deepseek-chat"))  # type: ignore[arg-type]
    start = time.perf_counter_ns()
    outcome = await answer.run(sink)
    elapsed = time.perf_counter_ns() - start
    assert outcome.error is None and outcome.finish_reason == "stop", outcome
    return elapsed / events, responder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1, help="events per upstream read")
    parser.add_argument("--tools", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    figures = []
    for _ in range(args.repeat):
        ns, responder = asyncio.run(run(args.events, args.batch, args.tools))
        figures.append(ns)
    figures.sort()
    print(
        f"relay loop, batch {args.batch}{' with tools' if args.tools else ''}: "
        f"median {figures[len(figures) // 2]:.0f} ns/event (best {figures[0]:.0f}), "
        f"{responder.writes} writes, {responder.bytes} bytes"
    )


if __name__ == "__main__":
    main()
