"""The simulator as a tool-calling model: it reads ds2a's prompt and answers like a model would.

Unit tests drive ``ds2a.sim.tools`` and ``expected()`` on prompts rendered by
``ds2a.relay.prompt``; the end-to-end tests run such prompts through the real simulator
over loopback (DeepSeek client, stream parser) into the recogniser.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from ds2a.config import DeepSeekConfig
from ds2a.deepseek import pow as pow_
from ds2a.deepseek.client import DeepSeekClient
from ds2a.deepseek.events import AnswerDelta, ReasoningDelta
from ds2a.deepseek.stream import StreamParser
from ds2a.relay.conversation import (
    Conversation, Message, OutputFormat, Text, Tool, ToolCall, ToolChoice, ToolResult,
)
from ds2a.relay.prompt import CORRECTION_LEAD, json_correction, render_prompt, tool_correction
from ds2a.relay.tools import ReasoningFilter, ToolCallRecognizer
from ds2a.relay.tools.markup import CALL_CLOSE, CALL_OPEN
from ds2a.relay.tools.structured import JsonAnswerError, parse_json_answer
from ds2a.sim import SimConfig, Simulator, expected
from ds2a.sim import tools as simtools
from ds2a.sim.text import answer_prefix

WEATHER = Tool("get_weather", "Weather.", {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "metric": {"type": "boolean"},
        "detail": {"type": ["string", "null"]},
    },
    "required": ["city", "days", "metric", "detail"],
})
TIME = Tool("get_time", "Time.", {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}},
                                  "required": ["tz"]})
NOTE = Tool("write_note", "", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
TOOLS = [WEATHER, TIME, NOTE]
CONFIG = SimConfig()


def conversation(*texts: str, **kwargs: Any) -> Conversation:
    kwargs.setdefault("tools", TOOLS)
    return Conversation([Message("user", [Text(t)]) for t in texts], **kwargs)


def answer_of(conv: Conversation, thinking: bool = False, correction: str | None = None) -> tuple[str, str]:
    got = expected(render_prompt(conv, correction=correction), thinking, False, CONFIG)
    return got.answer, got.reasoning


def recognised(text: str, tools: list[Tool] = TOOLS, **kwargs: Any) -> tuple[str, list[tuple[str, Any]], list[str]]:
    rec = ToolCallRecognizer(tools, **kwargs)
    out: list[str | ToolCall] = []
    for ch in text:  # one character at a time: the hardest split
        out += rec.feed(ch)
    out += rec.flush()
    calls = [(x.name, json.loads(x.arguments)) for x in out if isinstance(x, ToolCall)]
    return "".join(x for x in out if isinstance(x, str)), calls, rec.rejected


def valid(tool: Tool, args: Any) -> bool:
    return jsonschema.Draft202012Validator(tool.parameters).is_valid(args)


# --- deciding whether to call ----------------------------------------------------------------------


def test_prompts_without_the_convention_get_the_usual_filler() -> None:
    assert simtools.read_prompt("What is the weather in Paris? get_weather") is None
    assert simtools.script_for("## Tools\nplain text that only looks like it", False) is None
    answer, _ = answer_of(conversation("hello", tools=[]))
    assert answer.startswith(answer_prefix("hello"))


def test_auto_without_naming_a_tool_answers_in_text() -> None:
    prompt = render_prompt(conversation("Tell me a story."))
    assert simtools.script_for(prompt, False) is None
    assert expected(prompt, False, False, CONFIG).answer.startswith(answer_prefix(prompt))


def test_naming_a_tool_calls_it_with_schema_valid_arguments() -> None:
    answer, _ = answer_of(conversation("Please use get_weather."))
    text, calls, rejected = recognised(answer)
    assert (text, rejected) == ("", [])
    assert [name for name, _ in calls] == ["get_weather"]
    assert valid(WEATHER, calls[0][1])


def test_several_named_tools_are_several_calls_in_mention_order() -> None:
    answer, _ = answer_of(conversation("First write_note, then get_time, and get_weather too."))
    _, calls, _ = recognised(answer)
    assert [name for name, _ in calls] == ["write_note", "get_time", "get_weather"]
    assert all(valid(tool, args) for tool, (_, args) in zip([NOTE, TIME, WEATHER], calls))


def test_parallel_off_makes_one_call() -> None:
    answer, _ = answer_of(conversation("get_time and get_weather", parallel_tool_calls=False))
    assert [name for name, _ in recognised(answer)[1]] == ["get_time"]


def test_names_are_matched_as_whole_words_in_the_last_user_turn_only() -> None:
    c = Conversation([
        Message("user", [Text("use get_time")]),
        Message("assistant", [Text("ok")]),
        Message("user", [Text("now something else: get_timezone, xget_time")]),
    ], tools=TOOLS)
    assert simtools.script_for(render_prompt(c), False) is None


def test_required_calls_the_first_tool_when_none_is_named() -> None:
    answer, _ = answer_of(conversation("Do something.", tool_choice=ToolChoice("required")))
    assert [name for name, _ in recognised(answer)[1]] == ["get_weather"]


def test_a_named_choice_calls_that_tool() -> None:
    answer, _ = answer_of(conversation("Mention get_weather but...", tool_choice=ToolChoice("tool", "write_note")))
    assert [name for name, _ in recognised(answer)[1]] == ["write_note"]


def test_choice_none_never_calls() -> None:
    prompt = render_prompt(conversation("use get_weather", tool_choice=ToolChoice("none")))
    assert simtools.script_for(prompt, False) is None


def test_args_directive_sets_argument_values() -> None:
    answer, _ = answer_of(conversation('get_weather [[sim:args={"city": "Paris", "days": 3}]]'))
    assert recognised(answer)[1] == [("get_weather", {"city": "Paris", "days": 3, "metric": True, "detail": "sim"})]


def results_conversation(choice: ToolChoice | None = None) -> Conversation:
    return Conversation([
        Message("user", [Text("use get_weather and get_time")]),
        Message("assistant", [ToolCall("call_1", "get_weather", "{}"), ToolCall("call_2", "get_time", "{}")]),
        Message("tool", [ToolResult("call_1", None, "18C and\nsunny")]),
        Message("tool", [ToolResult("call_2", None, "noon")]),
    ], tools=TOOLS, tool_choice=choice or ToolChoice())


def test_after_tool_results_it_answers_in_text_quoting_them() -> None:
    answer, _ = answer_of(results_conversation())
    assert answer == "The tool get_weather returned: 18C and sunny\nThe tool get_time returned: noon"
    assert recognised(answer) == (answer, [], [])


def test_a_forced_choice_calls_again_after_results() -> None:
    answer, _ = answer_of(results_conversation(ToolChoice("tool", "get_time")))
    assert [name for name, _ in recognised(answer)[1]] == ["get_time"]


def test_the_plain_template_is_read_too() -> None:
    prompt = render_prompt(conversation("use get_time", tool_choice=ToolChoice("required")), "plain")
    answer = expected(prompt, False, False, CONFIG).answer
    assert [name for name, _ in recognised(answer)[1]] == ["get_time"]


def test_answers_are_deterministic_and_cut_into_small_tokens() -> None:
    prompt = render_prompt(conversation("use get_time"))
    script = simtools.script_for(prompt, False)
    assert script is not None and script == simtools.script_for(prompt, False)
    tokens = script.answer_tokens()
    assert "".join(tokens) == script.answer and max(map(len, tokens)) <= 5
    assert not any(CALL_OPEN in token for token in tokens)  # markers arrive split


# --- JSON answers -------------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 5},
        "age": {"type": "integer", "exclusiveMinimum": 17, "multipleOf": 5},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": True},
        "pet": {"$ref": "#/$defs/Pet"},
        "kind": {"enum": ["a", "b"]},
        "alt": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 2.5}]},
    },
    "required": ["name", "age", "email", "tags", "pet", "kind", "alt"],
    "$defs": {"Pet": {"allOf": [{"type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"]},
                                {"properties": {"code": {"type": "string", "pattern": "^[0-9]+$"}},
                                 "required": ["code"]}]}},
}


def test_json_schema_answers_are_valid() -> None:
    answer, _ = answer_of(conversation("who?", tools=[], output=OutputFormat("json_schema", PERSON, "person")))
    jsonschema.validate(json.loads(answer), PERSON)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer", "minimum": 3}, "minItems": 1},
        {"type": "string", "maxLength": 2},
        {"type": "object", "properties": {"x": {"const": 7}}, "required": ["x"], "additionalProperties": False},
        {"type": "object", "properties": {"t": {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}]}},
         "required": ["t"]},
        {"type": "object", "properties": {"n": {"type": "number", "maximum": -3}}, "required": ["n"]},
        {"type": "object", "additionalProperties": {"type": "integer"}, "required": ["free"]},
    ],
)
def test_minimal_instances_are_valid(schema: dict[str, Any]) -> None:
    jsonschema.validate(simtools.instance(schema), schema)


def test_json_object_uses_a_schema_found_in_the_prompt() -> None:
    # instructor's JSON mode puts the schema into the system message itself.
    schema = {"properties": {"name": {"type": "string"}, "n": {"type": "integer"}}, "required": ["name", "n"],
              "type": "object"}
    c = Conversation([
        Message("system", [Text(f"Return json matching this json_schema:\n\n{json.dumps(schema)}\n")]),
        Message("user", [Text("extract it")]),
    ], output=OutputFormat("json_object"))
    answer, _ = answer_of(c)
    jsonschema.validate(json.loads(answer), schema)


def test_json_object_without_any_schema() -> None:
    answer, _ = answer_of(conversation("hi", tools=[], output=OutputFormat("json_object")))
    assert json.loads(answer) == {"answer": "sim"}


def test_json_with_tools_named_calls_first_then_answers_json_after_results() -> None:
    fmt = OutputFormat("json_schema", {"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]})
    answer, _ = answer_of(conversation("use get_time", output=fmt))
    assert [name for name, _ in recognised(answer)[1]] == ["get_time"]
    c = results_conversation()
    c.output = fmt
    c.messages[0] = Message("user", [Text("what time is it?")])
    assert answer_of(c)[0].startswith("The tool")  # results come back: it reports them


# --- messy output, every kind -------------------------------------------------------------------------

DRIFT_MESSES = ["ascii_bars", "lookalike", "double_bars", "spaces", "trailing_bar", "native", "trailing_comma",
                "single_quotes", "python_literals", "xml_params"]


@pytest.mark.parametrize("mess", DRIFT_MESSES)
def test_repairable_messes_still_give_the_right_calls(mess: str) -> None:
    clean, _ = answer_of(conversation("use get_weather and get_time"))
    messy, _ = answer_of(conversation(f"use get_weather and get_time [[sim:tool_mess={mess}]]"))
    assert messy != clean
    assert CALL_OPEN not in messy or mess in ("trailing_comma", "single_quotes", "python_literals", "xml_params")
    want = recognised(clean)[1]
    got = recognised(messy)
    assert got == ("", want, []), mess


def test_the_messes_look_as_named() -> None:
    def answer(mess: str) -> str:
        return answer_of(conversation(f"get_weather [[sim:tool_mess={mess}]]"))[0]

    assert answer("ascii_bars").startswith("<|tool▁call|>")
    assert answer("lookalike").startswith("<丨tool_call丨>")
    assert answer("double_bars").startswith("<｜｜tool▁call｜｜>")
    assert answer("spaces").startswith("< ｜ tool call ｜ >")
    assert answer("trailing_bar").startswith("<｜tool▁call｜|>")
    assert answer("native").startswith("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>")
    assert "},}" in answer("trailing_comma")
    assert "{'name': 'get_weather'" in answer("single_quotes")
    assert '"metric": True, "detail": "sim"' in answer("python_literals")
    assert '<parameter name="days">1</parameter>' in answer("xml_params")


@pytest.mark.parametrize(("mess", "value"), [("unescaped_quotes", simtools.QUOTED), ("raw_newlines", simtools.MULTILINE)])
def test_broken_strings_are_repaired_to_what_was_meant(mess: str, value: str) -> None:
    answer, _ = answer_of(conversation(f"use write_note [[sim:tool_mess={mess}]]"))
    assert f'"{value}"' in answer  # really unescaped in the text
    assert recognised(answer)[1] == [("write_note", {"text": value})]


def test_a_call_in_a_code_fence_stays_text() -> None:
    answer, _ = answer_of(conversation("use get_time [[sim:tool_mess=fenced_call]]"))
    text, calls, rejected = recognised(answer)
    assert (text, calls, rejected) == (answer, [], [])
    assert "```\n" + CALL_OPEN in answer


def test_a_call_in_the_thinking_is_never_executed() -> None:
    answer, reasoning = answer_of(conversation("use get_time [[sim:tool_mess=think_call]]"), thinking=True)
    assert CALL_OPEN in reasoning and CALL_CLOSE in reasoning
    f = ReasoningFilter()
    shown = "".join([piece for ch in reasoning for piece in f.feed(ch)] + f.flush())
    assert CALL_OPEN not in shown and "tool" not in shown.replace("I will call get_time: ", "")
    assert [name for name, _ in recognised(answer)[1]] == ["get_time"]


def test_text_after_the_calls_is_dropped() -> None:
    answer, _ = answer_of(conversation("use get_time [[sim:tool_mess=text_after]]"))
    assert answer.endswith("So the answer is 42.")
    assert recognised(answer)[:2] == ("", [("get_time", {"tz": "UTC"})])


@pytest.mark.parametrize(("mess", "reason"), [("unknown_tool", "no tool named 'sim_unknown_tool'"),
                                               ("bad_args", "not valid JSON")])
def test_unusable_calls_are_refused_and_a_retry_behaves(mess: str, reason: str) -> None:
    c = conversation(f"use get_time [[sim:tool_mess={mess}]]", tool_choice=ToolChoice("required"))
    first, _ = answer_of(c)
    _, calls, rejected = recognised(first)
    assert calls == [] and len(rejected) == 1 and reason in rejected[0]
    retry, _ = answer_of(c, correction=tool_correction(c, rejected))
    assert recognised(retry)[1:] == ([("get_time", {"tz": "UTC"})], [])


def test_no_call_then_a_retry_calls() -> None:
    c = conversation("use get_time [[sim:tool_mess=no_call]]", tool_choice=ToolChoice("required"))
    first, _ = answer_of(c)
    assert recognised(first)[1] == []
    retry, _ = answer_of(c, correction=tool_correction(c, []))
    assert [name for name, _ in recognised(retry)[1]] == ["get_time"]


def test_stubborn_messes_survive_the_retry() -> None:
    c = conversation("use get_time [[sim:tool_mess=no_call]][[sim:tool_mess_stubborn]]",
                     tool_choice=ToolChoice("required"))
    retry, _ = answer_of(c, correction=tool_correction(c, []))
    assert CORRECTION_LEAD in render_prompt(c, correction=tool_correction(c, []))
    assert recognised(retry)[1] == []


def test_fenced_json_is_stripped_to_a_valid_answer() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    answer, _ = answer_of(conversation("[[sim:tool_mess=fenced_json]]", tools=[], output=OutputFormat("json_schema", schema)))
    assert answer.startswith("```json\n") and answer.endswith("\n```")
    assert parse_json_answer(answer, schema) == {"ok": True}


@pytest.mark.parametrize("schema", [None, {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}])
def test_invalid_json_then_a_corrected_retry(schema: dict[str, Any] | None) -> None:
    fmt = OutputFormat("json_schema", schema) if schema else OutputFormat("json_object")
    c = conversation("[[sim:tool_mess=invalid_json]]", tools=[], output=fmt)
    first, _ = answer_of(c)
    with pytest.raises(JsonAnswerError) as caught:
        parse_json_answer(first, schema, require_object=True)
    retry, _ = answer_of(c, correction=json_correction(c, str(caught.value)))
    assert isinstance(parse_json_answer(retry, schema, require_object=True), dict)


def test_every_mess_is_covered_here() -> None:
    covered = set(DRIFT_MESSES) | {"unescaped_quotes", "raw_newlines", "fenced_call", "think_call", "text_after",
                                   "unknown_tool", "bad_args", "no_call", "fenced_json", "invalid_json"}
    assert covered == set(simtools.MESSES)


# --- end to end: the real simulator over loopback -------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[DeepSeekClient, str]]:
    sim = Simulator(SimConfig(chunk=2))
    base_url = await sim.start(host="127.0.0.1", port=0)
    client = DeepSeekClient(DeepSeekConfig(base_url=base_url))
    await client.start()
    token = await client.login(email="tools@example.com", password=SimConfig().password)
    yield client, token
    await client.close()
    await sim.stop()


async def stream(client: DeepSeekClient, token: str, prompt: str, thinking: bool) -> tuple[list[str], list[str]]:
    """Answer and reasoning texts, one entry per stream event, as the upstream sent them."""
    session_id = await client.create_session(token)
    challenge = await client.create_pow_challenge(token)
    header = pow_.pow_header(challenge, pow_.solve(challenge))
    completion = await client.completion(token, session_id=session_id, pow_response=header, prompt=prompt,
                                         thinking=thinking, search=False)
    parser = StreamParser()
    answer: list[str] = []
    reasoning: list[str] = []
    try:
        while data := await completion.read():
            for event in parser.feed(data):
                if type(event) is AnswerDelta:
                    answer.append(event.text)
                elif type(event) is ReasoningDelta:
                    reasoning.append(event.text)
    finally:
        completion.release()
    return answer, reasoning


async def test_end_to_end_rendered_prompt_through_the_simulator_to_calls(upstream: tuple[DeepSeekClient, str]) -> None:
    client, token = upstream
    c = Conversation([
        Message("system", [Text("You are a careful agent.")]),
        Message("user", [Text("Check get_weather and get_time for me. [[sim:tool_mess=lookalike,trailing_comma]]")]),
    ], tools=TOOLS)
    answer, reasoning = await stream(client, token, render_prompt(c), thinking=True)
    assert len(answer) > 10  # the calls really arrived in many pieces
    rec = ToolCallRecognizer(c.tools, parallel=c.parallel_tool_calls)
    out: list[str | ToolCall] = []
    for piece in answer:
        out += rec.feed(piece)
    out += rec.flush()
    calls = [x for x in out if isinstance(x, ToolCall)]
    assert [x.name for x in calls] == ["get_weather", "get_time"]
    assert valid(WEATHER, json.loads(calls[0].arguments)) and json.loads(calls[1].arguments) == {"tz": "UTC"}
    assert "".join(x for x in out if isinstance(x, str)) == ""
    assert reasoning and rec.rejected == []


async def test_end_to_end_thinking_call_and_tool_round_trip(upstream: tuple[DeepSeekClient, str]) -> None:
    client, token = upstream
    c = Conversation([Message("user", [Text("What time is it? Use get_time. [[sim:tool_mess=think_call]]")])],
                     tools=TOOLS, tool_choice=ToolChoice("required"))
    answer, reasoning = await stream(client, token, render_prompt(c), thinking=True)
    f = ReasoningFilter()
    shown = "".join([p for piece in reasoning for p in f.feed(piece)] + f.flush())
    assert CALL_OPEN in "".join(reasoning) and CALL_OPEN not in shown
    rec = ToolCallRecognizer(c.tools)
    calls = [x for piece in answer for x in rec.feed(piece) if isinstance(x, ToolCall)]
    calls += [x for x in rec.flush() if isinstance(x, ToolCall)]
    assert [x.name for x in calls] == ["get_time"]
    c.messages += [Message("assistant", [calls[0]]), Message("tool", [ToolResult(calls[0].id, None, "12:00 UTC")])]
    c.tool_choice = ToolChoice("auto")
    answer, _ = await stream(client, token, render_prompt(c), thinking=False)
    assert "".join(answer) == "The tool get_time returned: 12:00 UTC"
