"""After the timed part: recorded reads -> token arrival times, texts, and the exactness check.

Every token decoded from one network read gets that read's arrival time, so two
tokens that came in one read are 0 ms apart: that is what a client saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from bench.loadgen import Sample
from ds2a.deepseek.events import AnswerDelta, Finish, ReasoningDelta, StreamError
from ds2a.deepseek.stream import StreamParser
from ds2a.sim import SimConfig, expected


@dataclass(slots=True)
class Decoded:
    token_times: list[float] = field(default_factory=list)  # perf_counter per text token
    reasoning: str = ""
    answer: str = ""
    finished: bool = False  # the stream ended normally (finish_reason / final status)
    error: str | None = None
    exact: bool | None = None  # None: not checked (real upstream)


def decode_gateway(sample: Sample) -> Decoded:
    """OpenAI ``chat.completion.chunk`` SSE, one token per non-empty delta text."""
    out = Decoded()
    reasoning: list[str] = []
    answer: list[str] = []
    buffer = b""
    for at, chunk in sample.reads:
        buffer += chunk
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            _gateway_block(block, at, out, reasoning, answer)
    out.reasoning, out.answer = "".join(reasoning), "".join(answer)
    return out


def _gateway_block(block: bytes, at: float, out: Decoded, reasoning: list[str], answer: list[str]) -> None:
    if not block.startswith(b"data: ") or block == b"data: [DONE]":
        return
    obj = json.loads(block[6:])
    if "error" in obj:
        out.error = str(obj["error"].get("message") if isinstance(obj["error"], dict) else obj["error"])
        return
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") or {}
        text = delta.get("reasoning_content")
        if text:
            reasoning.append(text)
            out.token_times.append(at)
        text = delta.get("content")
        if text:
            answer.append(text)
            out.token_times.append(at)
        if choice.get("finish_reason"):
            out.finished = choice["finish_reason"] == "stop"


def decode_direct(sample: Sample) -> Decoded:
    """The DeepSeek stream, decoded by ds2a's own parser (the one the gateway uses)."""
    out = Decoded()
    reasoning: list[str] = []
    answer: list[str] = []
    parser = StreamParser()
    for at, chunk in sample.reads:
        for event in parser.feed(chunk):
            if isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
                out.token_times.append(at)
            elif isinstance(event, AnswerDelta):
                answer.append(event.text)
                out.token_times.append(at)
            elif isinstance(event, Finish):
                out.finished = event.reason == "stop"
            elif isinstance(event, StreamError):
                out.error = event.message
    out.reasoning, out.answer = "".join(reasoning), "".join(answer)
    return out


def decode(sample: Sample, kind: str, settings: SimConfig | None, *, thinking: bool = True) -> Decoded:
    decoded = decode_gateway(sample) if kind == "gateway" else decode_direct(sample)
    if sample.error is not None:
        decoded.error = sample.error
    if settings is not None:
        want = expected(sample.prompt, thinking, False, settings)  # type: ignore[arg-type]  # frozen vs Protocol
        decoded.exact = (
            decoded.error is None and decoded.finished
            and decoded.reasoning == want.reasoning and decoded.answer == want.answer
        )
    return decoded
