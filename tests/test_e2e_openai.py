"""The official ``openai`` SDK against the gateway, the gateway against the simulator.

Everything goes over real loopback sockets: SDK -> ds2a (h11 server) -> account
pool -> DeepSeek client -> simulator, and back as SSE.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ds2a.sim import expected
from harness import KEY, Stack, http, sdk, sse_events
from openai_schema import validate

MODELS = {
    "deepseek-chat": (False, False),
    "deepseek-reasoner": (True, False),
    "deepseek-chat-search": (False, True),
    "deepseek-reasoner-search": (True, True),
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2) as s:
        yield s


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return sdk(stack)


def reasoning_of(obj: Any) -> str | None:
    """The SDK keeps fields OpenAI does not define in model_extra."""
    return (obj.model_extra or {}).get("reasoning_content")


def test_models_list_has_the_default_table(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert set(MODELS) | {"deepseek-v3", "deepseek-r1", "deepseek-v3-search", "deepseek-r1-search"} <= ids
    model = client.models.retrieve("deepseek-r1")
    assert model.id == "deepseek-r1" and model.owned_by


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-reasoner"])
def test_non_stream_answer_is_the_upstream_text(stack: Stack, client: openai.OpenAI, model: str) -> None:
    thinking, search = MODELS[model]
    want = expected("Hello there", thinking, search, stack.sim_config)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello there"}])
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == want.answer
    assert reasoning_of(choice.message) == (want.reasoning if thinking else None)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == want.usage
    assert reply.usage.completion_tokens_details.reasoning_tokens == (
        stack.sim_config.thinking_tokens if thinking else 0
    )
    assert reply.model == model


@pytest.mark.parametrize("model", list(MODELS))
def test_stream_and_non_stream_agree_for_every_model(client: openai.OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": f"Same question for {model}"}]
    whole = client.chat.completions.create(model=model, messages=messages)
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(reasoning_of(c.choices[0].delta) or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert reasoning == (reasoning_of(whole.choices[0].message) or "")
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert {c.model for c in chunks} == {model}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_reasoning_arrives_before_the_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="deepseek-reasoner-search", messages=[{"role": "user", "content": "think then search"}], stream=True
    )
    kinds = []
    for chunk in stream:
        delta = chunk.choices[0].delta
        if reasoning_of(delta):
            kinds.append("r")
        if delta.content:
            kinds.append("c")
    assert "r" in kinds and "c" in kinds
    assert kinds.index("c") > len(kinds) - 1 - kinds[::-1].index("r")


def test_search_citations_become_links_and_annotations(stack: Stack, client: openai.OpenAI) -> None:
    want = expected("weather in Guangzhou", False, True, stack.sim_config)
    assert want.citations, "the simulator should cite sources for a searched answer"
    reply = client.chat.completions.create(
        model="deepseek-chat-search", messages=[{"role": "user", "content": "weather in Guangzhou"}]
    )
    message = reply.choices[0].message
    assert "[reference:" not in (message.content or "")
    annotations = message.annotations or []
    assert annotations, "citations must be carried as url_citation annotations"
    urls = {c.url for c in want.citations}
    for ann in annotations:
        cite = ann.url_citation
        assert cite.url in urls
        link = message.content[cite.start_index : cite.end_index]  # type: ignore[index]
        assert link.startswith("[") and cite.url.replace(" ", "%20") in link


async def test_async_client_streams(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.api_base, api_key=KEY, max_retries=0)
    want = expected("async hello", True, False, stack.sim_config)
    stream = await client.chat.completions.create(
        model="deepseek-r1", messages=[{"role": "user", "content": "async hello"}], stream=True
    )
    content, reasoning = "", ""
    async for chunk in stream:
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            reasoning += reasoning_of(chunk.choices[0].delta) or ""
    assert (reasoning, content) == (want.reasoning, want.answer)
    await client.close()


def test_multi_turn_is_flattened_into_one_prompt(stack: Stack, client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
    ]
    reply = client.chat.completions.create(model="deepseek-chat", messages=messages)
    prompt = "Be brief<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜><｜User｜>2+2?"
    assert reply.choices[0].message.content == expected(prompt, False, False, stack.sim_config).answer
    assert stack.call(lambda: stack.sim.requests[-1].prompt) == prompt


def test_raw_stream_bytes_match_openai_schema(stack: Stack) -> None:
    status, headers, body = http(
        stack,
        "POST",
        "/v1/chat/completions",
        {"model": "deepseek-reasoner", "stream": True, "messages": [{"role": "user", "content": "raw"}]},
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["transfer-encoding"] == "chunked"
    assert headers.get("x-accel-buffering") == "no"
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert sum(1 for c in chunks if c["choices"][0]["finish_reason"]) == 1
    assert body.endswith(b"data: [DONE]\n\n")


def test_raw_non_stream_matches_openai_schema(stack: Stack) -> None:
    status, headers, body = http(
        stack, "POST", "/v1/chat/completions", {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 200 and headers["content-type"].startswith("application/json")
    reply = json.loads(body)
    validate(reply, "CreateChatCompletionResponse")
    message = reply["choices"][0]["message"]
    assert message["refusal"] is None and reply["choices"][0]["logprobs"] is None
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_no_parallel_generations_and_sessions_cleaned_up(stack: Stack) -> None:
    stack.wait_idle()
    counters = stack.counters()
    assert counters["parallel_violations"] == 0
    assert counters["pow_rejects"] == 0
    assert counters["max_active_per_account"] == 1
