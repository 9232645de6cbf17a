"""Streamed answers end to end: how they end, what the upstream sees, slow and vanishing clients.

Over real loopback sockets: client -> gateway -> account pool -> simulator. The text
the simulator generates is a pure function of the request (``ds2a.sim.expected``),
so every test can check that exactly the right bytes arrived, once.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ds2a.sim import expected
from ds2a.sim.bodies import TEMPLATE_TEXT
from ds2a.sim.text import Marker, plan_for, sizes_for
from harness import KEY, Stack, http, sdk
from openai_schema import validate
from test_e2e_http import CHAT, RawStream, api_error, chat_body, content_of, wait_for

# Slow enough that the upstream is still generating when the gateway cuts the answer.
SLOW = "[[sim:delay=0.01]] [[sim:tokens=3000]]"


def reasoning_of(obj: Any) -> str:
    return (obj.model_extra or {}).get("reasoning_content") or ""


def answer_tokens(stack: Stack, prompt: str) -> list[str]:
    """The simulator's answer, token by token (one text frame each at the default chunk=1)."""
    plan = plan_for(prompt, False, False, sizes_for(prompt, stack.sim_config))
    assert all(isinstance(t, str) for t in plan.answer)
    return [str(t) for t in plan.answer]


def delta(before: dict[str, Any], after: dict[str, Any], name: str) -> int:
    return int(after[name]) - int(before[name])


def finishes(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2) as s:
        yield s


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return sdk(stack)


# --- upstream failure after the first byte ---------------------------------------------------


def test_upstream_failure_mid_stream_raises_in_the_sdk(stack: Stack, client: openai.OpenAI) -> None:
    prompt = "[[sim:delay=0.005]] [[sim:drop=12]] cut mid-answer"
    received: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": prompt}], stream=True
        ):
            received.append(chunk)
    assert caught.value.code == "upstream_unavailable"
    assert "DeepSeek" in caught.value.message
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text and expected(prompt, False, False, stack.sim_config).answer.startswith(text)
    assert finishes(received) == []  # never a fake "stop"


def test_upstream_failure_mid_stream_is_an_error_event_and_a_proper_end(stack: Stack) -> None:
    with RawStream(stack, chat_body("[[sim:delay=0.005]] [[sim:drop=12]] raw cut", stream=True)) as raw:
        assert raw.status == 200
        events = raw.events()
        assert raw.ended  # the chunked body was terminated, not cut off
    assert "[DONE]" not in events
    error = json.loads(events[-1])
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "upstream_unavailable"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert content_of(events[:-1])


def test_a_bug_mid_stream_is_still_a_visible_error(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from ds2a.api import chat

    calls = 0
    original = chat.ChunkEncoder.content

    def content_then_fail(self: Any, text: str) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("simulated bug in the encoder")
        return original(self, text)

    monkeypatch.setattr(chat.ChunkEncoder, "content", content_then_fail)
    with RawStream(stack, chat_body("buggy relay", stream=True)) as raw:
        assert raw.status == 200
        events = raw.events()
        assert raw.ended
    error = json.loads(events[-1])
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "internal_error"
    assert "simulated bug" not in error["error"]["message"]  # internals stay in the log
    monkeypatch.undo()
    stack.wait_idle()
    assert stack.pool_snapshot()["accounts"][0]["inflight"] == 0


# --- max_tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "field"), [(True, "max_tokens"), (True, "max_completion_tokens"), (False, "max_completion_tokens")]
)
def test_token_limit_ends_with_length_and_stops_the_generation(
    stack: Stack, client: openai.OpenAI, stream: bool, field: str
) -> None:
    prompt = f"{SLOW} limited by {field}, stream={stream}"
    stack.wait_idle()
    before = stack.counters()
    kwargs: dict[str, Any] = {field: 5}
    messages = [{"role": "user", "content": prompt}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="deepseek-chat", messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert finishes(chunks) == ["length"]
        usage = chunks[-1].usage
    else:
        reply = client.chat.completions.create(model="deepseek-chat", messages=messages, **kwargs)
        text = reply.choices[0].message.content or ""
        assert reply.choices[0].finish_reason == "length"
        usage = reply.usage
    assert text == "".join(answer_tokens(stack, prompt)[:5])
    assert usage is not None and usage.completion_tokens == 5
    stack.wait_idle()
    after = stack.counters()
    # The upstream was told to stop, and did not run on to the end of its 3000 tokens.
    assert delta(before, after, "stops") == 1
    assert delta(before, after, "finished") == 0
    assert after["active_streams"] == 0


# --- stop sequences ---------------------------------------------------------------------------


def straddling_stop(stack: Stack, prompt: str) -> tuple[str, str]:
    """A stop sequence made of the end of one token and the start of the next, and the
    answer before it; its first occurrence is at that boundary."""
    tokens = answer_tokens(stack, prompt)
    text = "".join(tokens)
    end = 0
    for i, token in enumerate(tokens[:-1]):
        end += len(token)
        left, right = token[-2:], tokens[i + 1][:2]
        if i < 6 or not left.strip() or not right.strip():
            continue
        stop = left + right
        if text.find(stop) == end - len(left):
            return stop, text[: end - len(left)]
    raise AssertionError("no straddling stop sequence in this answer")


@pytest.mark.parametrize("stream", [True, False])
def test_stop_sequence_across_chunks(stack: Stack, client: openai.OpenAI, stream: bool) -> None:
    prompt = f"stop me somewhere, stream={stream}"
    stop, before_stop = straddling_stop(stack, prompt)
    assert before_stop and len(before_stop) < len(expected(prompt, False, False, stack.sim_config).answer) - 4
    messages = [{"role": "user", "content": prompt}]
    if stream:
        chunks = list(
            client.chat.completions.create(model="deepseek-chat", messages=messages, stream=True, stop=[stop, "never"])
        )
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(pieces) == before_stop
        assert len(pieces) > 3  # it really streamed, the hold-back did not swallow the answer
        assert finishes(chunks) == ["stop"]
    else:
        reply = client.chat.completions.create(model="deepseek-chat", messages=messages, stop=stop)
        assert reply.choices[0].message.content == before_stop
        assert reply.choices[0].finish_reason == "stop"


def stop_at_adjacent_citations(client: openai.OpenAI, stack: Stack) -> tuple[str, str, str]:
    """A searched prompt with two citations in a row, the rendered link of the first as a stop
    sequence (its first occurrence), and the answer before it."""
    for n in range(40):
        prompt = f"two sources in a row {n}"
        plan = plan_for(prompt, False, True, sizes_for(prompt, stack.sim_config))
        items = plan.answer
        pairs = [i for i, (a, b) in enumerate(zip(items, items[1:])) if isinstance(a, Marker) and isinstance(b, Marker)]
        if not pairs:
            continue
        reply = client.chat.completions.create(
            model="deepseek-chat-search", messages=[{"role": "user", "content": prompt}]
        )
        content = reply.choices[0].message.content or ""
        nth = sum(1 for item in items[: pairs[0]] if isinstance(item, Marker))
        cite = (reply.choices[0].message.annotations or [])[nth].url_citation
        link = content[cite.start_index : cite.end_index]
        if content.find(link) == cite.start_index:
            return prompt, link, content[: cite.start_index]
    raise AssertionError("no searched answer with two adjacent citations")


def test_stop_sequence_in_a_citation_cuts_there_in_both_modes(stack: Stack, client: openai.OpenAI) -> None:
    # When the stop hits inside the first link, the second citation is still held back by
    # the citation rewriter (its source comes in the next event): it must not leak out
    # after the stop, and no annotation may point past what the client received.
    prompt, link, before_stop = stop_at_adjacent_citations(client, stack)
    messages = [{"role": "user", "content": prompt}]
    reply = client.chat.completions.create(model="deepseek-chat-search", messages=messages, stop=link)
    assert reply.choices[0].message.content == before_stop
    assert reply.choices[0].finish_reason == "stop"
    whole = [a.url_citation.model_dump() for a in reply.choices[0].message.annotations or []]
    chunks = list(
        client.chat.completions.create(model="deepseek-chat-search", messages=messages, stop=link, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == before_stop
    (last,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    streamed = [a["url_citation"] for a in (last.choices[0].delta.model_extra or {}).get("annotations") or []]
    assert streamed == whole
    assert all(a["end_index"] <= len(before_stop) for a in streamed)


# --- content filter ------------------------------------------------------------------------------


def test_content_filter_stream(stack: Stack) -> None:
    with RawStream(stack, chat_body("[[sim:content_filter]] risky", stream=True)) as raw:
        events = raw.events()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert reasons == ["content_filter"]


def test_content_filter_non_stream_is_the_refusal(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "[[sim:content_filter]] risky"}]
    )
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.choices[0].message.content == TEMPLATE_TEXT


# --- INCOMPLETE answers --------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-reasoner"])
def test_incomplete_answer_is_continued_and_arrives_once(
    stack: Stack, client: openai.OpenAI, model: str, stream: bool
) -> None:
    # Cut after 20 tokens: inside the thinking for the reasoner, inside the answer otherwise.
    prompt = f"[[sim:incomplete=20]] to be continued ({model}, {stream})"
    thinking = model == "deepseek-reasoner"
    want = expected(prompt, thinking, False, stack.sim_config)
    before = stack.counters()
    messages = [{"role": "user", "content": prompt}]
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasoning = "".join(reasoning_of(c.choices[0].delta) for c in chunks if c.choices)
        assert finishes(chunks) == ["stop"]
    else:
        reply = client.chat.completions.create(model=model, messages=messages)
        text = reply.choices[0].message.content or ""
        reasoning = reasoning_of(reply.choices[0].message)
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage is not None and reply.usage.completion_tokens == want.usage
    assert (reasoning, text) == (want.reasoning, want.answer)
    stack.wait_idle()
    after = stack.counters()
    assert delta(before, after, "continues") == 1
    assert delta(before, after, "incomplete") == 1


def test_answer_cut_several_times_is_continued_each_time(stack: Stack, client: openai.OpenAI) -> None:
    prompt = "cut three times"
    want = expected(prompt, False, False, stack.sim_config)
    stack.wait_idle()
    before = stack.counters()
    stack.inject("incomplete", count=3, tokens=10)  # the answer and two continuations are cut
    chunks = list(
        client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": prompt}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.answer
    assert finishes(chunks) == ["stop"]
    stack.wait_idle()
    assert delta(before, stack.counters(), "continues") == 3


def test_continuation_rounds_used_up_is_length(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1, config={"pool": {"continue_rounds": 1}})
    prompt = "cut more often than allowed"
    s.inject("incomplete", count=2, tokens=10)
    chunks = list(
        sdk(s).chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": prompt}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = expected(prompt, False, False, s.sim_config).answer
    assert text and whole.startswith(text) and len(text) < len(whole)
    assert finishes(chunks) == ["length"]
    s.wait_idle()
    assert s.counters()["continues"] == 1


# --- usage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-reasoner"])
def test_include_usage_adds_one_usage_chunk(stack: Stack, model: str) -> None:
    prompt = f"count my tokens ({model})"
    thinking = model == "deepseek-reasoner"
    want = expected(prompt, thinking, False, stack.sim_config)
    body = chat_body(prompt, model, stream=True, stream_options={"include_usage": True})
    with RawStream(stack, body) as raw:
        events = raw.events()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert [c for c in chunks if "usage" in c] == [chunks[-1]]
    last = chunks[-1]
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["completion_tokens"] == want.usage
    reasoning_tokens = stack.sim_config.thinking_tokens if thinking else 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == reasoning_tokens
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    with RawStream(stack, chat_body(prompt, model, stream=True)) as raw:
        plain = [json.loads(e) for e in raw.events()[:-1]]
    assert not [c for c in plain if "usage" in c]


# --- the client goes away ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_stops_the_generation_and_frees_the_account(
    make_stack: Callable[..., Stack], stream: bool
) -> None:
    s = make_stack(accounts=1)
    s.wait_idle()
    before = s.counters()
    if stream:
        conn = RawStream(s, chat_body(f"{SLOW} leaving early", stream=True))
        for _ in range(4):  # the role chunk and some text: the upstream is generating
            assert conn.next_event() is not None
        conn.close()
    else:
        body = json.dumps(chat_body(f"{SLOW} leaving before the answer")).encode()
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        wait_for(lambda: s.counters()["active_streams"] == 1, what="the upstream generation to start")
        sock.close()
    s.wait_idle()
    after = s.counters()
    assert delta(before, after, "stops") == 1  # told to stop, not merely abandoned
    assert delta(before, after, "finished") == 0
    assert after["active_streams"] == 0
    assert [a["inflight"] for a in s.pool_snapshot()["accounts"]] == [0]
    # The one account is free again: the next request is served at once.
    reply = sdk(s).chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "next"}])
    assert reply.choices[0].message.content == expected("next", False, False, s.sim_config).answer
    s.wait_idle()
    assert s.counters()["parallel_violations"] == 0
    assert s.counters()["max_active_per_account"] == 1


# --- a client that stops reading -------------------------------------------------------------------


def kernel_send_buffer_max() -> int:
    """How much the kernel may hold for the gateway's socket towards a client that does not read."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def test_slow_reader_does_not_make_the_gateway_buffer_the_answer(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1)
    # Each content chunk is about 200 bytes as the gateway writes it; the answer is sized to
    # be well over twice what the kernel can absorb, so only backpressure keeps most of it
    # out of the gateway's buffers.
    chunk_bytes = 200
    tokens = max(40_000, 3 * (kernel_send_buffer_max() + (1 << 20)) // chunk_bytes)
    answer_size = tokens * chunk_bytes
    prompt = f"[[sim:tokens={tokens}]] a long answer for a reader that pauses"
    want = expected(prompt, False, False, s.sim_config)
    raw = RawStream(s, chat_body(prompt, stream=True), rcvbuf=64 * 1024)
    try:
        assert raw.status == 200

        def relay() -> tuple[bool, bool, int, int]:
            """(response finished, relay parked in drain(), body bytes written, bytes buffered)."""
            (conn,) = s.gateway.server._connections  # the one the reader holds open
            buffered = conn._transport.get_write_buffer_size()
            responder = conn._responder
            if responder is None:  # the handler is done: the whole answer sits in our buffer
                return True, False, -1, buffered
            waiter = conn._writable
            parked = conn.write_paused and waiter is not None and not waiter.done()
            return responder.finished, parked, responder.bytes_sent, buffered

        # The client reads nothing more: either the relay parks, waiting for the client,
        # or (without backpressure) it writes the whole answer into its buffers and ends.
        wait_for(lambda: s.call(relay)[0] or s.call(relay)[1], what="the relay to park or finish")
        finished, parked, written, buffered = s.call(relay)
        # What it has written so far is bounded by the kernel's socket buffers plus one
        # high-water mark of its own: far less than the answer.
        assert not finished and parked, f"{buffered} bytes buffered for a client that reads nothing"
        assert written < answer_size // 2
        assert buffered < 1 << 20
        # The client reads on and gets everything, once.
        events = raw.events()
        assert raw.ended and events[-1] == "[DONE]"
        assert content_of(events) == want.answer
        assert raw.body_bytes > answer_size
    finally:
        raw.close()


# --- graceful shutdown through Gateway.stop() ----------------------------------------------------------


def stop_in_background(s: Stack) -> threading.Thread:
    thread = threading.Thread(target=lambda: s.run(s.gateway.stop, timeout=30), daemon=True)
    thread.start()
    wait_for(lambda: s.call(lambda: s.gateway.server.shutting_down), what="the shutdown to begin")
    return thread


def test_shutdown_lets_a_stream_finish_within_the_grace(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1, config={"server": {"shutdown_grace": 20}})
    prompt = "[[sim:delay=0.01]] [[sim:tokens=60]] finish me"
    with RawStream(s, chat_body(prompt, stream=True)) as raw:
        events = [raw.next_event(), raw.next_event()]
        thread = stop_in_background(s)
        # No new work is taken on meanwhile.
        try:
            refused = http(s, "POST", CHAT, chat_body("too late"), timeout=5)
        except OSError:
            pass
        else:
            assert api_error(refused, 503)
        events += raw.events()
        assert raw.ended
    thread.join(30)
    assert not thread.is_alive()
    assert events[-1] == "[DONE]"
    assert content_of(events) == expected(prompt, False, False, s.sim_config).answer
    assert s.counters()["finished"] == 1


def test_shutdown_cuts_a_stream_past_the_grace_visibly(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1, config={"server": {"shutdown_grace": 0.3}})
    with RawStream(s, chat_body(f"{SLOW} too long to wait for", stream=True)) as raw:
        events = [raw.next_event(), raw.next_event()]
        thread = stop_in_background(s)
        events += raw.events()
        assert raw.ended  # a proper end of the chunked body
    thread.join(30)
    assert not thread.is_alive()
    assert "[DONE]" not in events
    error = json.loads(events[-1])
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "shutting_down"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    # Gateway.stop() returned after the cut answer was stopped upstream and its account freed.
    counters = s.counters()
    assert counters["finished"] == 0 and counters["active_streams"] == 0 and counters["stops"] == 1
    assert s.call(lambda: len(s.gateway.pool.leases)) == 0


def test_shutdown_past_the_grace_answers_a_non_stream_request_with_503(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1, config={"server": {"shutdown_grace": 0.3}})
    results: list[tuple[int, dict[str, str], bytes]] = []
    thread = threading.Thread(target=lambda: results.append(http(s, "POST", CHAT, chat_body(f"{SLOW} whole"))))
    thread.start()
    wait_for(lambda: s.counters()["active_streams"] == 1, what="the upstream generation to start")
    stop_in_background(s).join(30)
    thread.join(30)
    err = api_error(results[0], 503)
    assert "shutting down" in err["message"]
    counters = s.counters()
    assert counters["finished"] == 0 and counters["active_streams"] == 0 and counters["stops"] == 1
