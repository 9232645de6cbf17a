"""Tool calling and structured output on /v1/chat/completions, with real clients.

The simulator acts like a model that follows the gateway's tool prompt: it calls an
offered tool when the last user message names it (or a choice forces one), with
arguments valid against the tool's schema, and answers in text after a tool result.
The official ``openai`` SDK (sync, async, streamed and not), LangChain, the OpenAI
Agents SDK (chat-completions model) and instructor talk to the gateway over loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from harness import KEY, Stack, sdk
from openai_schema import validate

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
TIME_PARAMS = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Time now", "parameters": TIME_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=3) as s:
        yield s


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return sdk(stack)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def check_call(call: Any, name: str) -> dict[str, Any]:
    assert call.type == "function" and call.function.name == name
    assert call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


# --- the openai SDK -----------------------------------------------------------------------


def test_a_named_tool_is_called_non_stream(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat", messages=ask("What is the weather in Paris? Use get_weather."), tools=TOOLS
    )
    validate(reply.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionResponse")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    check_call(choice.message.tool_calls[0], "get_weather")


def test_full_round_trip(client: openai.OpenAI) -> None:
    messages: list[dict[str, Any]] = ask("Use get_weather for Oslo, please.")
    reply = client.chat.completions.create(model="deepseek-chat", messages=messages, tools=TOOLS)
    call = reply.choices[0].message.tool_calls[0]
    messages.append(reply.choices[0].message.model_dump(exclude_unset=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees"})
    final = client.chat.completions.create(model="deepseek-chat", messages=messages, tools=TOOLS)
    assert final.choices[0].finish_reason == "stop"
    assert not final.choices[0].message.tool_calls
    assert final.choices[0].message.content


def test_parallel_calls_have_distinct_ids(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat", messages=ask("Call get_weather for Rome and get_time for Europe/Rome."), tools=TOOLS
    )
    calls = reply.choices[0].message.tool_calls
    assert sorted(c.function.name for c in calls) == ["get_time", "get_weather"]
    assert len({c.id for c in calls}) == 2
    for call in calls:
        check_call(call, call.function.name)


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat",
        messages=ask("Call get_weather for Rome and get_time for Europe/Rome."),
        tools=TOOLS,
        parallel_tool_calls=False,
    )
    assert len(reply.choices[0].message.tool_calls) == 1


def test_streamed_calls_arrive_as_openai_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="deepseek-chat",
        messages=ask("Call get_weather for Rome and get_time for Asia/Tokyo."),
        tools=TOOLS,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        validate(chunk.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionStreamResponse")
        choice = chunk.choices[0]
        assert not choice.delta.content, "no text may leak around tool calls"
        for delta in choice.delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                assert not entry["id"], "the id comes once, with the first delta of a call"
                entry["id"] = delta.id
                assert delta.type == "function"
            if delta.function and delta.function.name:
                entry["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                entry["arguments"] += delta.function.arguments
        finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    for entry in calls.values():
        jsonschema.validate(json.loads(entry["arguments"]), SCHEMAS[entry["name"]])


def test_required_choice_forces_a_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat", messages=ask("Hello there."), tools=TOOLS, tool_choice="required"
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls


def test_named_choice_calls_that_tool(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat",
        messages=ask("Hello there."),
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    check_call(calls[0], "get_time")


def test_none_choice_answers_in_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat", messages=ask("Use get_weather for Paris."), tools=TOOLS, tool_choice="none"
    )
    assert reply.choices[0].finish_reason == "stop"
    assert not reply.choices[0].message.tool_calls and reply.choices[0].message.content


def test_plain_answers_with_tools_offered_stay_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="deepseek-chat", messages=ask("Tell me a story."), tools=TOOLS)
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content


def test_legacy_functions_answer_with_function_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat",
        messages=ask("Use get_weather for Lima."),
        functions=[t["function"] for t in TOOLS],
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), WEATHER_PARAMS)
    assert not choice.message.tool_calls


def test_async_client_streams_a_call(stack: Stack) -> None:
    async def main() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=stack.api_base, api_key=KEY, max_retries=0)
        stream = await client.chat.completions.create(
            model="deepseek-reasoner", messages=ask("Use get_time for UTC."), tools=TOOLS, stream=True
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
        return chunks

    chunks = asyncio.run(main())
    names = [d.function.name for c in chunks for d in (c.choices[0].delta.tool_calls or []) if d.function.name]
    assert names == ["get_time"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_schema_output_is_valid(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    for stream in (False, True):
        kwargs = {"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}}
        if stream:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(model="deepseek-chat", messages=ask("A person."), stream=True, **kwargs)
            )
        else:
            text = client.chat.completions.create(model="deepseek-chat", messages=ask("A person."), **kwargs).choices[0].message.content
        jsonschema.validate(json.loads(text), schema)


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-chat", messages=ask("Answer in JSON."), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_unknown_response_format_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="deepseek-chat", messages=ask("x"), response_format={"type": "bogus"})
    assert info.value.body["param"] == "response_format.type"


# --- frameworks -----------------------------------------------------------------------------


def test_langchain_bind_tools_agent_loop(stack: Stack) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    ran: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Weather now in a city."""
        ran.append(city)
        return f"It is sunny in {city}."

    llm = langchain_openai.ChatOpenAI(model="deepseek-chat", base_url=stack.api_base, api_key=KEY, max_retries=0)
    bound = llm.bind_tools([get_weather])
    messages: list[Any] = [HumanMessage("Use get_weather to tell me the weather in Berlin.")]
    for _ in range(4):
        ai = bound.invoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            break
        for call in ai.tool_calls:
            messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    assert ran, "the agent loop never ran the tool"
    assert isinstance(messages[-1].content, str) and messages[-1].content and not messages[-1].tool_calls


def test_agents_sdk_chat_completions_model_runs_a_tool(stack: Stack) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    ran: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather now in a city."""
        ran.append(city)
        return f"Sunny in {city}"

    client = openai.AsyncOpenAI(base_url=stack.api_base, api_key=KEY, max_retries=0)
    model = agents.OpenAIChatCompletionsModel(model="deepseek-chat", openai_client=client)
    agent = agents.Agent(name="weather", instructions="Answer with tools.", tools=[get_weather], model=model)
    result = agents.Runner.run_sync(agent, "Use get_weather for Madrid.")
    assert ran
    assert isinstance(result.final_output, str) and result.final_output


@pytest.mark.parametrize("mode_name", ["TOOLS", "JSON_SCHEMA"])
def test_instructor_returns_validated_objects(stack: Stack, mode_name: str) -> None:
    instructor = pytest.importorskip("instructor")
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int
        landmarks: list[str]

    client = instructor.from_openai(sdk(stack), mode=getattr(instructor.Mode, mode_name))
    city = client.chat.completions.create(
        model="deepseek-chat", response_model=City, messages=ask("Describe Paris."), max_retries=0
    )
    assert isinstance(city, City) and isinstance(city.population, int)


# --- messy models: the recogniser end to end -------------------------------------------------


@pytest.mark.parametrize("mess", ["ascii_bars", "lookalike", "double_bars", "spaces", "trailing_bar", "native", "think_call", "unescaped_quotes", "raw_newlines", "trailing_comma", "single_quotes", "python_literals", "xml_params", "text_after"])
def test_drifted_calls_are_still_calls_and_never_text(client: openai.OpenAI, mess: str) -> None:
    for stream in (False, True):
        kwargs: dict[str, Any] = {"model": "deepseek-chat", "tools": TOOLS,
                                  "messages": ask(f"Use get_weather for Quito. [[sim:tool_mess={mess}]]")}
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            names = [d.function.name for c in chunks for d in (c.choices[0].delta.tool_calls or []) if d.function.name]
        else:
            message = client.chat.completions.create(**kwargs).choices[0].message
            text = message.content or ""
            names = [c.function.name for c in message.tool_calls or []]
        assert names == ["get_weather"], (mess, stream)
        assert "tool" not in text.lower() and "｜" not in text and "|" not in text, (mess, stream, text)


def test_a_forced_call_that_never_comes_is_retried_once_then_an_error(stack: Stack, client: openai.OpenAI) -> None:
    before = stack.counters()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="deepseek-chat", tools=TOOLS, tool_choice="required",
            messages=ask("Hello. [[sim:tool_mess=no_call]] [[sim:tool_mess_stubborn]]"),
        )
    assert info.value.status_code == 502
    assert "tool_choice requires" in info.value.message
    after = stack.counters()
    assert after["completions"] - before["completions"] == 2  # the answer and one retry


def test_a_forced_call_comes_on_the_retry(stack: Stack, client: openai.OpenAI) -> None:
    before = stack.counters()
    reply = client.chat.completions.create(
        model="deepseek-chat", tools=TOOLS, tool_choice="required", stream=True,
        messages=ask("Hello. [[sim:tool_mess=no_call]]"),
    )
    chunks = list(reply)
    assert not "".join(c.choices[0].delta.content or "" for c in chunks), "the first answer is never shown"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert stack.counters()["completions"] - before["completions"] == 2


def test_a_call_inside_a_code_fence_is_text(client: openai.OpenAI) -> None:
    message = client.chat.completions.create(
        model="deepseek-chat", tools=TOOLS, messages=ask("Use get_weather for Lima. [[sim:tool_mess=fenced_call]]")
    ).choices[0].message
    assert not message.tool_calls
    assert "```" in message.content


@pytest.mark.parametrize("mess", ["unknown_tool", "bad_args"])
def test_unusable_calls_are_never_passed_on(client: openai.OpenAI, mess: str) -> None:
    choice = client.chat.completions.create(
        model="deepseek-chat", tools=TOOLS, messages=ask(f"Use get_weather for Lima. [[sim:tool_mess={mess}]]")
    ).choices[0]
    names = [c.function.name for c in choice.message.tool_calls or []]
    assert "not_a_tool" not in names and all(n in SCHEMAS for n in names)
    for call in choice.message.tool_calls or []:
        check_call(call, call.function.name)
    assert "｜" not in (choice.message.content or "")


def test_a_prompt_over_the_limit_is_refused_before_any_upstream_call(make_stack: Any) -> None:
    small = make_stack(accounts=1, config={"api": {"max_prompt_chars": 500}})
    before = small.counters()
    with pytest.raises(openai.BadRequestError) as info:
        sdk(small).chat.completions.create(model="deepseek-chat", messages=ask("x" * 600))
    assert info.value.body["code"] == "context_length_exceeded"
    assert info.value.body["param"] == "messages"
    assert "500" in info.value.message
    assert small.counters()["completions"] == before["completions"]


def test_an_answer_past_the_size_bound_ends_with_an_error_and_frees_the_account(make_stack: Any) -> None:
    small = make_stack(accounts=1, config={"api": {"max_answer_chars": 2000}})
    prompt = ask("[[sim:tokens=5000]] a very long answer")
    with pytest.raises(openai.APIStatusError) as info:
        sdk(small).chat.completions.create(model="deepseek-chat", messages=prompt)
    assert info.value.status_code == 502 and "exceeded 2000 characters" in info.value.message
    with pytest.raises(openai.APIError, match="exceeded 2000 characters"):
        for _ in sdk(small).chat.completions.create(model="deepseek-chat", messages=prompt, stream=True):
            pass
    small.wait_idle()
    counters = small.counters()
    assert counters["stops"] == 2, "the generation behind each cut answer is stopped"
    assert counters["max_active_per_account"] == 1
    # The account is free again: a short answer goes through.
    assert sdk(small).chat.completions.create(model="deepseek-chat", messages=ask("short")).choices[0].message.content
