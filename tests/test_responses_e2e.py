"""The Responses API end to end: the official ``openai`` SDK (``responses.create`` /
``responses.stream``) and raw HTTP against the gateway, the gateway against the simulator.

Every body and every stream event is validated against OpenAI's schemas
(``../shared/openai/openapi_subset.json``); answers are compared with the text the
simulator is known to stream for the prompt it received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ds2a.sim import expected
from ds2a.sim.bodies import TEMPLATE_TEXT
from harness import KEY, Stack, http, sdk
from openai_schema import validate
from responses_events import check_events, check_response, last_prompt, parse_sse


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2) as s:
        yield s


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return sdk(stack)


def post(stack: Stack, body: dict[str, Any], **kw: Any) -> tuple[int, dict[str, str], bytes]:
    return http(stack, "POST", "/v1/responses", body, **kw)


def create_raw(stack: Stack, **body: Any) -> dict[str, Any]:
    """A non-stream response over raw HTTP, checked against the Response schema."""
    body.setdefault("model", "deepseek-chat")
    status, headers, raw = post(stack, body)
    assert status == 200, raw
    assert headers["content-type"].startswith("application/json")
    data = json.loads(raw)
    check_response(data)
    return data


def stream_raw(stack: Stack, **body: Any) -> list[dict[str, Any]]:
    """A streamed response over raw HTTP: every event checked, in order."""
    body.setdefault("model", "deepseek-chat")
    status, headers, raw = post(stack, {**body, "stream": True})
    assert status == 200, raw
    assert headers["content-type"].startswith("text/event-stream")
    return check_events(parse_sse(raw))


def output_text(body: dict[str, Any]) -> str:
    return "".join(
        part["text"] for item in body["output"] if item["type"] == "message" for part in item["content"]
    )


# --- text, streamed and not -----------------------------------------------------------------


def test_create_answers_the_upstream_text(stack: Stack, client: openai.OpenAI) -> None:
    reply = client.responses.create(model="deepseek-chat", input="Hello there", instructions="Be brief.")
    prompt = last_prompt(stack)
    assert prompt.startswith("Be brief.") and prompt.endswith("Hello there")
    want = expected(prompt, False, False, stack.sim_config)
    assert reply.status == "completed" and reply.object == "response" and reply.id.startswith("resp_")
    assert reply.output_text == want.answer
    assert [item.type for item in reply.output] == ["message"]
    assert reply.model == "deepseek-chat" and reply.instructions == "Be brief."
    assert reply.usage is not None
    assert reply.usage.output_tokens == want.usage and reply.usage.input_tokens > 0
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens


def test_raw_body_matches_the_schema(stack: Stack) -> None:
    body = create_raw(stack, input=[{"role": "user", "content": [{"type": "input_text", "text": "schema check"}]}],
                      metadata={"run": "1"}, temperature=0.3)
    assert body["status"] == "completed" and body["metadata"] == {"run": "1"} and body["temperature"] == 0.3
    assert output_text(body) == expected("schema check", False, False, stack.sim_config).answer


def test_stream_with_the_sdk_accumulates_the_same_answer(stack: Stack, client: openai.OpenAI) -> None:
    deltas = []
    with client.responses.stream(model="deepseek-chat", input="Stream me") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
                assert event.snapshot.endswith(event.delta)
        final = stream.get_final_response()
    want = expected("Stream me", False, False, stack.sim_config)
    assert "".join(deltas) == want.answer == final.output_text
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens == want.usage


def test_raw_stream_is_the_official_event_sequence(stack: Stack) -> None:
    events = stream_raw(stack, input="Raw stream")
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == expected("Raw stream", False, False, stack.sim_config).answer
    assert output_text(events[-1]["response"]) == text


def test_sdk_async_stream(stack: Stack) -> None:
    import asyncio

    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=stack.api_base, api_key=KEY, max_retries=0)
        async with client.responses.stream(model="deepseek-chat", input="async responses") as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
        await client.close()
        return final.output_text

    assert asyncio.run(run()) == expected("async responses", False, False, stack.sim_config).answer


# --- reasoning ---------------------------------------------------------------------------------


def test_the_reasoner_thoughts_are_a_reasoning_item(stack: Stack, client: openai.OpenAI) -> None:
    reply = client.responses.create(model="deepseek-reasoner", input="Think first")
    want = expected("Think first", True, False, stack.sim_config)
    reasoning, message = reply.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert reasoning.summary == [] and reasoning.content is not None
    assert "".join(c.text for c in reasoning.content) == want.reasoning
    assert reply.output_text == want.answer
    assert reply.usage is not None
    assert reply.usage.output_tokens_details.reasoning_tokens == stack.sim_config.thinking_tokens


def test_a_requested_summary_streams_the_thoughts_as_summary_text(stack: Stack, client: openai.OpenAI) -> None:
    want = expected("Summarise your thinking", True, False, stack.sim_config)
    events = stream_raw(
        stack, model="deepseek-reasoner", input="Summarise your thinking", reasoning={"summary": "auto"}
    )
    thoughts = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
    assert thoughts == want.reasoning
    with client.responses.stream(model="deepseek-r1", input="Summarise your thinking",
                                 reasoning={"effort": "high", "summary": "detailed"}) as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "reasoning"
    assert final.output[0].summary[0].text == want.reasoning and final.output_text == want.answer
    assert final.reasoning is not None and final.reasoning.summary == "detailed"


def test_raw_reasoning_stream_is_valid(stack: Stack) -> None:
    events = stream_raw(stack, model="deepseek-reasoner", input="raw thoughts")
    want = expected("raw thoughts", True, False, stack.sim_config)
    assert "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta") == want.reasoning
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]


# --- search ------------------------------------------------------------------------------------


def test_web_search_uses_the_search_model_and_cites_with_annotations(stack: Stack) -> None:
    body = create_raw(stack, input="weather in Guangzhou", tools=[{"type": "web_search"}])
    assert stack.call(lambda: stack.sim.requests[-1].search) is True
    want = expected("weather in Guangzhou", False, True, stack.sim_config)
    assert want.citations
    part = body["output"][0]["content"][0]
    assert "[reference:" not in part["text"] and part["annotations"]
    urls = {c.url for c in want.citations}
    for annotation in part["annotations"]:
        assert annotation["type"] == "url_citation" and annotation["url"] in urls
        link = part["text"][annotation["start_index"]:annotation["end_index"]]
        assert link.startswith("[") and annotation["url"].replace(" ", "%20") in link
    assert body["tools"] == [{"type": "web_search"}]
    events = stream_raw(stack, input="weather in Guangzhou", tools=[{"type": "web_search_preview"}])
    assert any(e["type"] == "response.output_text.annotation.added" for e in events)


def test_web_search_without_live_access_stays_on_the_chat_model(stack: Stack) -> None:
    create_raw(stack, input="no web please", tools=[{"type": "web_search", "external_web_access": False}])
    assert stack.call(lambda: stack.sim.requests[-1].search) is False


# --- stored responses ------------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(stack: Stack, client: openai.OpenAI) -> None:
    first = client.responses.create(model="deepseek-chat", input="My name is Ada.", instructions="Old rules.")
    second = client.responses.create(model="deepseek-chat", input="What is my name?", previous_response_id=first.id,
                                     instructions="New rules.")
    prompt = last_prompt(stack)
    # The stored input and output come before the new input; instructions are not carried over.
    assert "My name is Ada." in prompt and first.output_text in prompt and prompt.endswith("What is my name?")
    assert "Old rules." not in prompt and prompt.startswith("New rules.")
    assert second.output_text == expected(prompt, False, False, stack.sim_config).answer
    assert second.previous_response_id == first.id
    with client.responses.stream(model="deepseek-chat", input="And a third turn", previous_response_id=second.id) as s:
        third = s.get_final_response()
    prompt = last_prompt(stack)
    assert "My name is Ada." in prompt and second.output_text in prompt and prompt.endswith("And a third turn")
    assert third.output_text == expected(prompt, False, False, stack.sim_config).answer


def test_retrieve_delete_and_input_items(stack: Stack, client: openai.OpenAI) -> None:
    first = client.responses.create(model="deepseek-chat", input=[
        {"role": "developer", "content": "Rules."},
        {"type": "message", "id": "msg_mine", "role": "user", "content": [{"type": "input_text", "text": "One"}]},
    ])
    second = client.responses.create(model="deepseek-chat", input="Two", previous_response_id=first.id)
    status, _, raw = http(stack, "GET", f"/v1/responses/{second.id}")
    assert status == 200
    stored = json.loads(raw)
    check_response(stored)
    assert stored["id"] == second.id and output_text(stored) == second.output_text
    assert client.responses.retrieve(second.id).output_text == second.output_text

    items = client.responses.input_items.list(second.id, order="asc")
    texts = [(item.type, getattr(item, "role", None)) for item in items.data]
    assert texts == [("message", "developer"), ("message", "user"), ("message", "assistant"), ("message", "user")]
    assert items.data[1].id == "msg_mine" and items.data[2].id == first.output[0].id
    status, _, raw = http(stack, "GET", f"/v1/responses/{second.id}/input_items?limit=2&order=desc")
    page = json.loads(raw)
    assert status == 200 and page["object"] == "list" and page["has_more"] is True
    assert [i["id"] for i in page["data"]] == [items.data[3].id, items.data[2].id]
    assert (page["first_id"], page["last_id"]) == (items.data[3].id, items.data[2].id)
    for item in page["data"]:
        validate(item, "Item")
    status, _, raw = http(stack, "GET", f"/v1/responses/{second.id}/input_items?order=desc&after={page['last_id']}")
    rest = json.loads(raw)
    assert [i["id"] for i in rest["data"]] == [items.data[1].id, items.data[0].id] and rest["has_more"] is False
    status, _, raw = http(stack, "GET", f"/v1/responses/{second.id}/input_items?limit=500")
    assert status == 400 and json.loads(raw)["error"]["param"] == "limit"

    status, _, raw = http(stack, "DELETE", f"/v1/responses/{second.id}")
    assert status == 200 and json.loads(raw) == {"id": second.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(second.id)
    assert info.value.body["code"] == "not_found"  # type: ignore[index]
    client.responses.delete(first.id)  # the SDK's own delete
    status, _, raw = http(stack, "DELETE", f"/v1/responses/{first.id}")
    assert status == 404 and json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_store_false_is_not_retrievable_nor_continuable(stack: Stack, client: openai.OpenAI) -> None:
    reply = client.responses.create(model="deepseek-chat", input="forget me", store=False)
    assert reply.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="deepseek-chat", input="again", previous_response_id=reply.id)
    assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"


def test_a_stored_response_is_private_to_its_credential(stack: Stack, client: openai.OpenAI) -> None:
    reply = client.responses.create(model="deepseek-chat", input="mine only")
    other = sdk(stack, key="someone-elses-deepseek-token")  # a direct token: authenticated, another caller
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(reply.id)
    with pytest.raises(openai.BadRequestError):
        other.responses.create(model="deepseek-chat", input="steal", previous_response_id=reply.id)
    status, _, _ = http(stack, "DELETE", f"/v1/responses/{reply.id}", key="someone-elses-deepseek-token")
    assert status == 404
    assert client.responses.retrieve(reply.id).id == reply.id


def test_the_store_limits_come_from_config(make_stack: Any) -> None:
    s = make_stack(accounts=1, config={"responses": {"store_max_count": 1}})
    client = sdk(s)
    first = client.responses.create(model="deepseek-chat", input="first")
    second = client.responses.create(model="deepseek-chat", input="second")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert client.responses.retrieve(second.id).id == second.id


# --- limits, filters, failures -------------------------------------------------------------------


def test_max_output_tokens_makes_an_incomplete_response(stack: Stack, client: openai.OpenAI) -> None:
    reply = client.responses.create(model="deepseek-chat", input="[[sim:tokens=200]] long", max_output_tokens=16)
    assert reply.status == "incomplete" and reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens" and reply.max_output_tokens == 16
    events = stream_raw(stack, input="[[sim:tokens=200]] long stream", max_output_tokens=16)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"


def test_content_filter_is_incomplete_with_the_refusal(stack: Stack, client: openai.OpenAI) -> None:
    reply = client.responses.create(model="deepseek-chat", input="[[sim:content_filter]] risky")
    assert reply.status == "incomplete" and reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "content_filter"
    assert reply.output_text == TEMPLATE_TEXT  # the upstream's canned refusal replaces the answer
    events = stream_raw(stack, input="[[sim:content_filter]] risky stream")
    assert events[-1]["type"] == "response.incomplete"
    assert output_text(events[-1]["response"]) == TEMPLATE_TEXT


def test_a_failure_mid_stream_is_response_failed(stack: Stack, client: openai.OpenAI) -> None:
    events = stream_raw(stack, input="[[sim:delay=0.005]] [[sim:drop=12]] cut me")
    final = events[-1]
    assert final["type"] == "response.failed" and final["response"]["status"] == "failed"
    assert final["response"]["error"]["code"] == "server_error"
    with client.responses.stream(model="deepseek-chat", input="[[sim:delay=0.005]] [[sim:drop=12]] cut sdk") as s:
        kinds = [event.type for event in s]
    assert kinds[-1] == "response.failed"


def test_a_failure_before_any_text_is_an_http_error(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model="deepseek-chat", input="[[sim:input_too_long]] huge")
    assert info.value.status_code == 400 and info.value.code == "context_length_exceeded"
    status, _, raw = post(stack, {"model": "deepseek-chat", "input": "[[sim:input_too_long]] huge", "stream": True})
    assert status == 400 and json.loads(raw)["error"]["code"] == "context_length_exceeded"
    validate(json.loads(raw), "ErrorResponse")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "deepseek-chat",
          "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         400, "input[0].content[0]"),
        ({"model": "deepseek-chat", "input": "hi", "tools": [{"type": "file_search"}],
          "tool_choice": {"type": "file_search"}}, 400, "tool_choice"),
        ({"model": "deepseek-chat", "input": "hi", "max_output_tokens": -1}, 400, "max_output_tokens"),
        ({"model": "gpt-unknown", "input": "hi"}, 404, "model"),
        ({"input": "hi"}, 400, "model"),
    ],
)
def test_bad_requests_are_openai_errors(stack: Stack, body: dict[str, Any], status: int, param: str) -> None:
    got, _, raw = post(stack, body)
    error = json.loads(raw)
    validate(error, "ErrorResponse")
    assert got == status and error["error"]["param"] == param


def test_auth_is_required(stack: Stack) -> None:
    status, _, raw = post(stack, {"model": "deepseek-chat", "input": "hi"}, key=None)
    assert status == 401 and json.loads(raw)["error"]["code"] == "missing_api_key"
    status, _, _ = http(stack, "GET", "/v1/responses/resp_x", key=None)
    assert status == 401


def test_routes_without_the_v1_prefix(stack: Stack, client: openai.OpenAI) -> None:
    bare = sdk(stack, base_url=stack.base_url)
    reply = bare.responses.create(model="deepseek-chat", input="no prefix")
    assert reply.output_text == expected("no prefix", False, False, stack.sim_config).answer
    assert bare.responses.retrieve(reply.id).id == reply.id


# --- tools ------------------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
    "strict": True,
}


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_tool_round_trip(stack: Stack, client: openai.OpenAI, stream: bool) -> None:
    ask = "Use get_weather to tell me the weather in Paris."
    if stream:
        with client.responses.stream(model="deepseek-chat", input=ask, tools=[WEATHER]) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(model="deepseek-chat", input=ask, tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and set(json.loads(call.arguments)) == {"city"}
    assert first.status == "completed" and call.status == "completed"
    second = client.responses.create(
        model="deepseek-chat", tools=[WEATHER], previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
    )
    prompt = last_prompt(stack)
    assert "sunny, 21 C" in prompt and "get_weather" in prompt
    assert second.status == "completed" and "sunny, 21 C" in second.output_text  # the model read the result
    # The same, with the history sent back by the client instead of stored.
    replay = client.responses.create(
        model="deepseek-chat", tools=[WEATHER], store=False,
        input=[{"role": "user", "content": ask}, *[item.model_dump(exclude_none=True) for item in first.output],
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
    )
    assert replay.status == "completed" and last_prompt(stack) == prompt


def test_tool_events_match_the_schema(stack: Stack) -> None:
    events = stream_raw(stack, input="Use get_weather for Rome.", tools=[WEATHER],
                        tool_choice={"type": "function", "name": "get_weather"})
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    final = events[-1]["response"]
    assert any(item["type"] == "function_call" for item in final["output"])


TIME = {"type": "function", "name": "get_time", "description": "The local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_calls_are_several_function_call_items(client: openai.OpenAI, parallel: bool) -> None:
    reply = client.responses.create(
        model="deepseek-chat", tools=[WEATHER, TIME], parallel_tool_calls=parallel,
        input="Use get_weather and get_time for Oslo.",
    )
    names = [item.name for item in reply.output if item.type == "function_call"]
    assert names == (["get_weather", "get_time"] if parallel else ["get_weather"])
    assert len({item.call_id for item in reply.output if item.type == "function_call"}) == len(names)
    assert reply.parallel_tool_calls is parallel


@pytest.mark.parametrize("mess", ["ascii_bars", "native", "single_quotes", "xml_params"])
def test_messy_calls_arrive_as_clean_function_calls(stack: Stack, mess: str) -> None:
    events = stream_raw(stack, input=f"Use get_weather for Lima. [[sim:tool_mess={mess}]]", tools=[WEATHER])
    (call,) = [item for item in events[-1]["response"]["output"] if item["type"] == "function_call"]
    assert call["name"] == "get_weather" and set(json.loads(call["arguments"])) == {"city"}
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    for marker in ("tool\u2581call", "tool_call", "<parameter", "{'city'"):
        assert marker not in text  # no call markup leaks into the answer text


def test_a_forced_call_that_never_comes_is_an_error(stack: Stack, client: openai.OpenAI) -> None:
    ask = "Hello. [[sim:tool_mess=no_call]] [[sim:tool_mess_stubborn]]"
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model="deepseek-chat", tools=[WEATHER], tool_choice="required", input=ask)
    assert info.value.status_code == 502
    events = stream_raw(stack, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}, input=ask)
    assert events[-1]["type"] == "response.failed"
    assert not any(e["type"] == "response.output_text.delta" for e in events)  # the text was held back


def test_json_schema_output_is_valid_json(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    for stream in (False, True):
        if stream:
            with client.responses.stream(model="deepseek-chat", input="Describe Oslo.", text={
                    "format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}}) as s:
                reply = s.get_final_response()
        else:
            reply = client.responses.create(model="deepseek-chat", input="Describe Oslo.", text={
                "format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}})
        data = json.loads(reply.output_text)
        assert set(data) == {"city", "population"} and isinstance(data["population"], int)
        assert reply.text.format.type == "json_schema"  # type: ignore[union-attr]
    reply = client.responses.create(
        model="deepseek-chat", input="Answer in JSON.", text={"format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(reply.output_text), dict)
