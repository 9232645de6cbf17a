"""The official ``anthropic`` SDK against the gateway, the gateway against the simulator.

Over real loopback sockets: SDK -> ds2a ``/v1/messages`` -> relay -> pool -> simulator,
and back as Anthropic's event stream or one ``message`` body. The simulator's text is
a pure function of the prompt (``ds2a.sim.expected``), so answers are checked exactly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from ds2a.sim import expected
from harness import KEY, Stack, http, sdk

MESSAGES = "/v1/messages"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2, config={"server": {"max_body_bytes": 64 * 1024}}) as s:
        yield s


def claude(stack: Stack, key: str = KEY, **kwargs: Any) -> anthropic.Anthropic:
    """The official anthropic client pointed at the gateway, without retries."""
    return anthropic.Anthropic(base_url=stack.base_url, api_key=key, max_retries=0, timeout=30, **kwargs)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def sse(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a raw Anthropic stream; each event's name is its data's type."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out


def envelope(response: tuple[int, dict[str, str], bytes], status: int) -> dict[str, Any]:
    got, headers, body = response
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    data = json.loads(body)
    assert set(data) == {"type", "error"} and data["type"] == "error", data
    assert set(data["error"]) == {"type", "message"}
    return data["error"]


def hold_account(stack: Stack) -> Any:
    """A long streamed answer in progress: its account stays busy until the stream is closed."""
    stream = claude(stack).messages.stream(
        model="claude-haiku-4-5", max_tokens=4000, messages=user("[[sim:delay=0.05]] [[sim:tokens=2000]] hold")
    )
    manager = stream.__enter__()
    next(iter(manager))  # message_start: the upstream answer is running
    return stream


# --- text -------------------------------------------------------------------------------


def test_a_message_is_the_upstream_answer(stack: Stack) -> None:
    want = expected("Hello there", False, False, stack.sim_config)
    reply = claude(stack).messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=user("Hello there"))
    assert reply.id.startswith("msg_") and reply.type == "message" and reply.role == "assistant"
    assert reply.model == "claude-sonnet-4-5"  # the name the client sent
    assert [b.type for b in reply.content] == ["text"]
    assert reply.content[0].text == want.answer  # type: ignore[union-attr]
    assert reply.stop_reason == "end_turn" and reply.stop_sequence is None
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0


def test_a_streamed_message_is_the_same_answer(stack: Stack) -> None:
    want = expected("Hello there", False, False, stack.sim_config)
    with claude(stack).messages.stream(model="claude-haiku-4-5", max_tokens=1024, messages=user("Hello there")) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == want.answer
    assert [b.type for b in final.content] == ["text"] and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_the_raw_stream_has_anthropics_event_sequence(stack: Stack) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "stream": True, "messages": user("Hi")}
    status, headers, raw = http(stack, "POST", MESSAGES + "?beta=true", body, {"anthropic-version": "2023-06-01"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["model"] == "claude-haiku-4-5"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] > 0
    text = "".join(e["delta"]["text"] for name, e in events if name == "content_block_delta")
    assert text == expected("Hi", False, False, stack.sim_config).answer


# --- thinking ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_comes_as_a_signed_block_before_the_text(stack: Stack, stream: bool) -> None:
    want = expected("Why is the sky blue?", True, False, stack.sim_config)
    params: Any = {
        "model": "claude-opus-4-8",
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": user("Why is the sky blue?"),
    }
    if stream:
        with claude(stack).messages.stream(**params) as s:
            reply = s.get_final_message()
    else:
        reply = claude(stack).messages.create(**params)
    assert [b.type for b in reply.content] == ["thinking", "text"]
    thinking, text = reply.content
    assert thinking.thinking == want.reasoning and len(thinking.signature) > 20  # type: ignore[union-attr]
    assert text.text == want.answer  # type: ignore[union-attr]
    # The client sends the block back with its signature: accepted, and kept out of the prompt.
    follow = claude(stack).messages.create(
        model="claude-opus-4-8",
        max_tokens=4096,
        thinking={"type": "adaptive"},  # type: ignore[typeddict-item]
        messages=[
            *user("Why is the sky blue?"),
            {
                "role": "assistant",
                "content": [thinking.model_dump(), text.model_dump(), {"type": "redacted_thinking", "data": "x"}],
            },
            *user("Shorter, please."),
        ],
    )
    assert [b.type for b in follow.content] == ["thinking", "text"]


def test_thoughts_are_not_shown_unless_thinking_is_asked_for(stack: Stack) -> None:
    want = expected("Why is the sky blue?", True, False, stack.sim_config)
    reply = claude(stack).messages.create(
        model="claude-opus-4-8", max_tokens=1024, messages=user("Why is the sky blue?")
    )
    assert [b.type for b in reply.content] == ["text"]
    assert reply.content[0].text == want.answer  # type: ignore[union-attr]  # the reasoner answered


# --- stop sequences, max_tokens, refusals ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_sequence_ends_the_answer(stack: Stack, stream: bool) -> None:
    answer = expected("Tell me a story", False, False, stack.sim_config).answer
    words = answer.split()
    stop = words[len(words) // 2]
    params: Any = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": user("Tell me a story"),
        "stop_sequences": [stop, "NEVER"],
    }
    if stream:
        with claude(stack).messages.stream(**params) as s:
            reply = s.get_final_message()
    else:
        reply = claude(stack).messages.create(**params)
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == stop
    assert reply.content[0].text == answer[: answer.index(stop)]  # type: ignore[union-attr]


def test_max_tokens_cuts_the_answer(stack: Stack) -> None:
    reply = claude(stack).messages.create(model="claude-sonnet-4-5", max_tokens=3, messages=user("Tell me a story"))
    assert reply.stop_reason == "max_tokens"
    full = expected("Tell me a story", False, False, stack.sim_config).answer
    assert full.startswith(reply.content[0].text) and len(reply.content[0].text) < len(full)  # type: ignore[union-attr]


def test_a_filtered_answer_is_a_refusal(stack: Stack) -> None:
    reply = claude(stack).messages.create(
        model="claude-sonnet-4-5", max_tokens=1024, messages=user("[[sim:content_filter]] something")
    )
    assert reply.stop_reason == "refusal"
    assert len(reply.content) == 1 and reply.content[0].text  # type: ignore[union-attr]  # the upstream's canned words


# --- tools --------------------------------------------------------------------------------

WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def simulator_calls_tools(stack: Stack) -> bool:
    """Whether the simulator has learnt to call tools (checked on the OpenAI route, not ours)."""
    try:
        reply = sdk(stack).chat.completions.create(
            model="deepseek-chat",
            messages=[{"role": "user", "content": "Use get_weather for Paris."}],
            tools=[{"type": "function", "function": {"name": WEATHER["name"], "parameters": WEATHER["input_schema"]}}],
        )
    except Exception:
        return False
    return bool(reply.choices[0].message.tool_calls)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip(stack: Stack, stream: bool) -> None:
    if not simulator_calls_tools(stack):
        pytest.skip("the simulator does not call tools yet (the tool-calling work has not landed)")
    client = claude(stack)
    messages: list[dict[str, Any]] = user("Use get_weather for Paris.")
    params: Any = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "tools": [WEATHER], "messages": messages}
    if stream:
        with client.messages.stream(**params) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(**params)
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert calls and all(c.name == "get_weather" and c.id.startswith("toolu_") for c in calls)
    assert all(isinstance(c.input, dict) and isinstance(c.input.get("city"), str) for c in calls)
    # One result as a string, the others as text blocks marked as errors: both shapes reach the model.
    results: list[dict[str, Any]] = [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "18 C and sunny"}]
    results += [
        {"type": "tool_result", "tool_use_id": c.id, "content": [{"type": "text", "text": "no data"}], "is_error": True}
        for c in calls[1:]
    ]
    second = client.messages.create(
        **{
            **params,
            "messages": [
                *messages,
                {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {"role": "user", "content": results},
            ],
        }
    )
    assert second.stop_reason == "end_turn"
    assert [b.type for b in second.content] == ["text"]
    assert "18 C and sunny" in second.content[0].text  # type: ignore[union-attr]  # the simulator quotes results


def test_a_forced_tool_is_called(stack: Stack) -> None:
    if not simulator_calls_tools(stack):
        pytest.skip("the simulator does not call tools yet (the tool-calling work has not landed)")
    reply = claude(stack).messages.create(
        model="claude-haiku-4-5",
        max_tokens=1024,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=user("How are you?"),
    )
    assert reply.stop_reason == "tool_use"
    assert [b.name for b in reply.content if b.type == "tool_use"] == ["get_weather"]


TIME = {
    "name": "get_time",
    "description": "The local time in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_calls_are_several_tool_use_blocks(stack: Stack, stream: bool) -> None:
    if not simulator_calls_tools(stack):
        pytest.skip("the simulator does not call tools yet (the tool-calling work has not landed)")
    params: Any = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": [WEATHER, TIME],
        "messages": user("Use get_weather and get_time for Oslo."),
    }
    client = claude(stack)
    if stream:
        with client.messages.stream(**params) as s:
            reply = s.get_final_message()
    else:
        reply = client.messages.create(**params)
    calls = [b for b in reply.content if b.type == "tool_use"]
    assert sorted(c.name for c in calls) == ["get_time", "get_weather"] and len({c.id for c in calls}) == 2
    one = client.messages.create(**{**params, "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}})
    assert len([b for b in one.content if b.type == "tool_use"]) == 1


@pytest.mark.parametrize("mess", ["lookalike", "native", "single_quotes", "text_after"])
def test_messy_calls_arrive_as_clean_tool_use_blocks(stack: Stack, mess: str) -> None:
    if not simulator_calls_tools(stack):
        pytest.skip("the simulator does not call tools yet (the tool-calling work has not landed)")
    with claude(stack).messages.stream(
        model="claude-haiku-4-5",
        max_tokens=1024,
        tools=[WEATHER],
        messages=user(f"Use get_weather for Paris. [[sim:tool_mess={mess}]]"),
    ) as s:
        reply = s.get_final_message()
    assert reply.stop_reason == "tool_use"
    assert [(b.type, b.name) for b in reply.content if b.type == "tool_use"] == [("tool_use", "get_weather")]  # type: ignore[union-attr]
    text = "".join(b.text for b in reply.content if b.type == "text")
    assert "tool" not in text.lower() and "|" not in text and "｜" not in text, text


def test_a_forced_call_that_never_comes_is_an_api_error(stack: Stack) -> None:
    if not simulator_calls_tools(stack):
        pytest.skip("the simulator does not call tools yet (the tool-calling work has not landed)")
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(stack).messages.create(
            model="claude-haiku-4-5",
            max_tokens=1024,
            tools=[WEATHER],
            tool_choice={"type": "any"},
            messages=user("Hello. [[sim:tool_mess=no_call]] [[sim:tool_mess_stubborn]]"),
        )
    assert caught.value.status_code == 502 and caught.value.type == "api_error"  # type: ignore[attr-defined]
    assert "tool_choice requires" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_structured_output_is_schema_valid_json(stack: Stack) -> None:
    if not simulator_calls_tools(stack):
        pytest.skip("the simulator does not answer formats yet (the tool-calling work has not landed)")
    out = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    reply = claude(stack).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=user("The largest city of Norway, as JSON."),
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": out}}},
    )
    data = json.loads(reply.content[0].text)  # type: ignore[union-attr]
    assert set(data) == {"city", "population"} and isinstance(data["population"], int)


# --- count_tokens, models, headers ------------------------------------------------------------


def test_count_tokens_is_the_input_usage_of_the_same_request(stack: Stack) -> None:
    client = claude(stack)
    params: Any = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [*user("What is 2+2?"), {"role": "assistant", "content": "4"}, *user("And 3+3?")],
    }
    counted = client.messages.count_tokens(**params)
    reply = client.messages.create(max_tokens=100, **params)
    assert counted.input_tokens == reply.usage.input_tokens > 0
    longer = client.messages.count_tokens(**{**params, "system": "Be brief. " * 50})
    assert longer.input_tokens > counted.input_tokens


def test_the_beta_route_and_headers_are_accepted(stack: Stack) -> None:
    reply = claude(stack).beta.messages.create(
        model="claude-sonnet-4-5-20250929",
        max_tokens=100,
        messages=user("Hello there"),
        betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
        metadata={"user_id": "someone"},
        extra_body={"context_management": {"edits": []}, "output_config": {"effort": "high"}},
    )
    assert reply.content[0].text == expected("Hello there", False, False, stack.sim_config).answer  # type: ignore[union-attr]


def test_bearer_auth_works_too(stack: Stack) -> None:
    client = anthropic.Anthropic(base_url=stack.base_url, auth_token=KEY, max_retries=0, timeout=30)
    assert client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=user("hi")).content


def test_models_list_in_anthropics_shape(stack: Stack) -> None:
    client = claude(stack)
    page = client.models.list(limit=2)
    assert [m.id for m in page.data] == ["deepseek-chat", "deepseek-reasoner"]
    assert page.has_more and page.first_id == "deepseek-chat" and page.last_id == "deepseek-reasoner"
    assert all(m.type == "model" and m.display_name and m.created_at.year == 2025 for m in page.data)
    everything = [m.id for m in client.models.list()]  # the SDK follows the pages
    assert everything[:4] == ["deepseek-chat", "deepseek-reasoner", "deepseek-chat-search", "deepseek-reasoner-search"]
    assert "deepseek-r1" in everything
    assert client.models.retrieve("claude-opus-4-8").id == "claude-opus-4-8"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("gpt-4o")
    # Without the header, the same path keeps OpenAI's shape.
    status, _, body = http(stack, "GET", "/v1/models")
    assert status == 200 and json.loads(body)["object"] == "list"
    # An Anthropic client's auth error on the models list comes in its envelope.
    err = envelope(http(stack, "GET", "/v1/models", headers={"anthropic-version": "2023-06-01"}, key=None), 401)
    assert err["type"] == "authentication_error"


def test_head_root_is_answered(stack: Stack) -> None:
    status, _, body = http(stack, "HEAD", "/", key=None)
    assert status == 200 and body == b""


# --- errors ------------------------------------------------------------------------------------


def test_a_bad_request_is_an_invalid_request_error(stack: Stack) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude(stack).messages.create(model="claude-sonnet-4-5", max_tokens=0, messages=user("hi"))
    assert caught.value.type == "invalid_request_error"  # type: ignore[attr-defined]
    assert caught.value.body["error"]["message"].startswith("max_tokens: ")  # type: ignore[index]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude(stack).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": [image]}], stream=True
        )
    assert "images" in caught.value.body["error"]["message"]  # type: ignore[index]
    err = envelope(http(stack, "POST", MESSAGES, b"{oops", {"x-api-key": KEY}, key=None), 400)
    assert err["type"] == "invalid_request_error" and "not valid JSON" in err["message"]


def test_an_unknown_model_is_not_found(stack: Stack) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude(stack).messages.create(model="gpt-4o", max_tokens=10, messages=user("hi"))
    assert caught.value.type == "not_found_error"  # type: ignore[attr-defined]


def test_auth_errors(stack: Stack) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": user("hi")}
    err = envelope(http(stack, "POST", MESSAGES, body, key=None), 401)
    assert err["type"] == "authentication_error" and "x-api-key" in err["message"]
    # An unknown key is tried as a DeepSeek user token (direct tokens are on): the upstream refuses it.
    with pytest.raises(anthropic.AuthenticationError):
        claude(stack, key="not-a-key").messages.create(**body)


def test_route_and_server_errors_use_the_envelope(stack: Stack) -> None:
    assert envelope(http(stack, "GET", MESSAGES), 405)["type"] == "invalid_request_error"
    assert envelope(http(stack, "POST", MESSAGES + "/nothing", {}), 404)["type"] == "not_found_error"
    big = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": user("x" * (65 * 1024))}
    assert envelope(http(stack, "POST", MESSAGES, big), 413)["type"] == "request_too_large"


def test_a_full_pool_is_529_overloaded(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1, config={"pool": {"queue_max": 0}})
    held = hold_account(s)
    try:
        with pytest.raises(anthropic.InternalServerError) as caught:
            claude(s).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=user("one too many"))
        assert caught.value.status_code == 529 and caught.value.type == "overloaded_error"  # type: ignore[attr-defined]
        assert int(caught.value.response.headers["retry-after"]) >= 1
    finally:
        held.__exit__(None, None, None)


def test_a_failure_mid_stream_is_an_error_event(stack: Stack) -> None:
    prompt = "[[sim:delay=0.005]] [[sim:drop=12]] cut mid-answer"
    body = {"model": "claude-haiku-4-5", "max_tokens": 1000, "stream": True, "messages": user(prompt)}
    status, _, raw = http(stack, "POST", MESSAGES, body)
    assert status == 200
    events = sse(raw)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] == "api_error" and "DeepSeek" in events[-1][1]["error"]["message"]
    text = "".join(e["delta"]["text"] for name, e in events if name == "content_block_delta")
    assert text and expected(prompt, False, False, stack.sim_config).answer.startswith(text)
    # The SDK raises it rather than ending the message quietly.
    with pytest.raises(anthropic.APIStatusError) as caught:
        with claude(stack).messages.stream(model="claude-haiku-4-5", max_tokens=1000, messages=user(prompt)) as s:
            s.get_final_message()
    assert caught.value.type == "api_error"  # type: ignore[attr-defined]


def test_pings_keep_a_quiet_stream_alive(stack: Stack) -> None:
    stack.call(lambda: setattr(stack.gateway.anthropic, "ping_interval", 0.05))
    try:
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "stream": True,
            "messages": user("[[sim:delay=0.4]] [[sim:tokens=3]] slowly"),
        }
        status, _, raw = http(stack, "POST", MESSAGES, body)
    finally:
        stack.call(lambda: setattr(stack.gateway.anthropic, "ping_interval", 10.0))
    names = [name for name, _ in sse(raw)]
    assert status == 200 and names[-1] == "message_stop"
    first_delta = names.index("content_block_delta")
    assert "ping" in names[first_delta:]  # pings between the slow tokens, not only the opening one


def test_concurrent_streams_do_not_mix(stack: Stack) -> None:
    prompts = [f"question number {i}" for i in range(4)]
    answers: dict[str, str] = {}

    def ask(prompt: str) -> None:
        with claude(stack).messages.stream(model="claude-haiku-4-5", max_tokens=1024, messages=user(prompt)) as s:
            answers[prompt] = "".join(s.text_stream)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == {p: expected(p, False, False, stack.sim_config).answer for p in prompts}
