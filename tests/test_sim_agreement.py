"""The simulator must agree with the real upstream captures.

Two checks keep it honest: every frame the simulator emits has a shape (event
name, path pattern, operation, value type, recursively inside batches) that
appears in the real captures; and the stream parser decodes the simulator's
streams and the captures into the same event grammar for the same situation.
The simulator is driven by the real DeepSeek client over loopback, so this also
exercises client + simulator + parser together.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import SSE_DIR, capture, shared_path
from ds2a.config import DeepSeekConfig
from ds2a.deepseek import pow as pow_
from ds2a.deepseek.client import DeepSeekClient
from ds2a.deepseek.stream import StreamParser
from ds2a.sim import SimConfig, Simulator, expected

Signature = tuple[str, str | None, str | None, str]


def _path_pattern(path: str | None) -> str | None:
    return re.sub(r"-?\d+", "N", path) if path is not None else None


def _frame_signatures(frame: Any, out: set[Signature], context: str = "") -> None:
    if not isinstance(frame, dict) or not ("v" in frame or "p" in frame):
        return
    value = frame.get("v")
    out.add((context, _path_pattern(frame.get("p")), frame.get("o"), type(value).__name__))
    if isinstance(value, list) and value and all(isinstance(x, dict) and ("v" in x or "p" in x) for x in value):
        for sub in value:  # a batch: its items are frames relative to the batch path
            _frame_signatures(sub, out, f"{context}/{_path_pattern(frame.get('p'))}")


def shapes(body: bytes) -> tuple[set[Signature], set[str]]:
    """Frame signatures and event names of one SSE body."""
    signatures: set[Signature] = set()
    events: set[str] = set()
    for block in body.decode().split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if name:
            events.add(name)
        elif data:
            _frame_signatures(json.loads("\n".join(data)), signatures)
    return signatures, events


def decode(body: bytes, parser: StreamParser | None = None) -> list[Any]:
    parser = parser or StreamParser()
    return parser.feed(body) + parser.close()


def grammar(events: list[Any]) -> str:
    """The decoded event kinds, runs collapsed: 'Ready ReasoningDelta AnswerDelta ...'."""
    kinds: list[str] = []
    for event in events:
        name = type(event).__name__
        if name == "Title":
            continue
        if name == "Finish":
            name = f"Finish({event.reason})"
        if not kinds or kinds[-1] != name:
            kinds.append(name)
    return " ".join(kinds)


def texts(events: list[Any]) -> tuple[str, str]:
    reasoning = "".join(e.text for e in events if type(e).__name__ == "ReasoningDelta")
    answer = "".join(e.text for e in events if type(e).__name__ == "AnswerDelta")
    return reasoning, answer


# The same situation must decode to a string matching the same pattern, capture and simulator alike.
SEARCHED_ANSWER = r"( (AnswerDelta|Citation))*"
SITUATIONS: dict[str, tuple[str, bool, bool, str, str]] = {
    # name: (capture, thinking, search, directive, grammar pattern)
    "plain": ("new-plain-chat-nonthinking-20251121.txt", False, False, "", r"Ready AnswerDelta Usage Finish\(stop\)"),
    "thinking": (
        "new-thinking-plain-answer-20260405.txt", True, False, "",
        r"Ready ReasoningDelta AnswerDelta Usage Finish\(stop\)",
    ),
    "thinking+search": (
        "new-reasoner-search-citations-20260403.txt", True, True, "",
        r"Ready( ReasoningDelta SearchResults)+ ReasoningDelta" + SEARCHED_ANSWER + r" Usage Finish\(stop\)",
    ),
    "content filter": (
        "new-content-filter-20260405.txt", True, True, "[[sim:content_filter]]",
        r"Ready( ReasoningDelta SearchResults)+ ReasoningDelta" + SEARCHED_ANSWER + r" Usage Finish\(content_filter\)",
    ),
    "incomplete": (
        "new-completion-ends-incomplete-20260405.txt", True, False, "[[sim:incomplete=5]]",
        r"Ready ReasoningDelta Usage Finish\(incomplete\)",
    ),
}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Simulator, DeepSeekClient, str]]:
    sim = Simulator(SimConfig())
    base_url = await sim.start(host="127.0.0.1", port=0)
    client = DeepSeekClient(DeepSeekConfig(base_url=base_url))
    await client.start()
    token = await client.login(email="agree@example.com", password=SimConfig().password)
    yield sim, client, token
    await client.close()
    await sim.stop()


async def read_all(completion: Any) -> bytes:
    body = b""
    while data := await completion.read():
        body += data
    return body


async def sim_stream(client: DeepSeekClient, token: str, prompt: str, thinking: bool, search: bool) -> tuple[str, bytes]:
    session_id = await client.create_session(token)
    challenge = await client.create_pow_challenge(token)
    header = pow_.pow_header(challenge, pow_.solve(challenge))
    completion = await client.completion(
        token, session_id=session_id, pow_response=header, prompt=prompt, thinking=thinking, search=search
    )
    return session_id, await read_all(completion)


@pytest.mark.parametrize("situation", list(SITUATIONS))
async def test_simulator_and_capture_decode_the_same_way(
    upstream: tuple[Simulator, DeepSeekClient, str], situation: str
) -> None:
    name, thinking, search, directive, pattern = SITUATIONS[situation]
    captured = grammar(decode(capture(name)))
    assert re.fullmatch(pattern, captured), f"capture {name} decodes as {captured}"
    _, client, token = upstream
    _, body = await sim_stream(client, token, f"agreement {situation}{directive}", thinking, search)
    simulated = grammar(decode(body))
    assert re.fullmatch(pattern, simulated), f"simulator decodes as {simulated}"


async def test_simulator_frames_all_have_shapes_seen_in_captures(upstream: tuple[Simulator, DeepSeekClient, str]) -> None:
    shared_path("fixtures", "sse")  # skips cleanly where the captures are absent
    real: set[Signature] = set()
    real_events: set[str] = set()
    for path in sorted(SSE_DIR.glob("new-*.txt")):
        signatures, events = shapes(capture(path.name))
        real |= signatures
        real_events |= events
    _, client, token = upstream
    emitted: set[Signature] = set()
    emitted_events: set[str] = set()
    for thinking in (False, True):
        for search in (False, True):
            for directive in ("", "[[sim:content_filter]]", "[[sim:incomplete=5]]"):
                _, body = await sim_stream(client, token, f"shapes{directive}", thinking, search)
                signatures, events = shapes(body)
                emitted |= signatures
                emitted_events |= events
    assert emitted, "the simulator produced no frames"
    assert emitted - real == set(), "frame shapes the real upstream never sent"
    assert emitted_events <= real_events


async def test_continuation_decodes_like_the_captured_one(upstream: tuple[Simulator, DeepSeekClient, str]) -> None:
    first = StreamParser()
    decode(capture("new-completion-ends-incomplete-20260405.txt"), first)
    captured = grammar(decode(capture("new-continue-resume-20260405.txt"), StreamParser(resume_from=first)))

    _, client, token = upstream
    prompt = "continue me[[sim:incomplete=7]]"
    session_id, body = await sim_stream(client, token, prompt, True, False)
    parser = StreamParser()
    events = decode(body, parser)
    assert grammar(events).endswith("Finish(incomplete)")
    assert parser.response_message_id is not None
    completion = await client.continue_stream(token, session_id=session_id, message_id=parser.response_message_id)
    more = decode(await read_all(completion), StreamParser(resume_from=parser))
    assert grammar(more) == captured == "Ready ReasoningDelta AnswerDelta Usage Finish(stop)"

    # Across both streams the whole answer arrives, exactly once.
    want = expected(prompt, True, False, SimConfig())
    (r1, a1), (r2, a2) = texts(events), texts(more)
    assert (r1 + r2, a1 + a2) == (want.reasoning, want.answer)
    assert r1 and r2  # the cut really fell inside the reasoning
