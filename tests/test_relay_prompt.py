"""render_prompt: byte-identical without tools, and the documented tool / JSON convention with them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ds2a.relay import prompt as P
from ds2a.relay.conversation import (
    Conversation, Message, OutputFormat, Reasoning, Text, Tool, ToolCall, ToolChoice, ToolResult,
)
from ds2a.relay.prompt import build_prompt, render_prompt, render_tool_calls, render_tool_result
from ds2a.relay.tools import ToolCallRecognizer
from ds2a.relay.tools.markup import CALL_CLOSE, CALL_OPEN, RESULT_CLOSE, RESULT_OPEN

WEATHER = Tool(
    "get_weather",
    "Current weather.\nUse it for any city.",
    {"type": "object", "properties": {"city": {"type": "string", "description": "城市"}}, "required": ["city"]},
)
TIME = Tool("get_time")


def msg(role: str, *parts: Any) -> Message:
    return Message(role, [Text(p) if isinstance(p, str) else p for p in parts])  # type: ignore[arg-type]


def conv(*messages: Message, **kwargs: Any) -> Conversation:
    return Conversation(list(messages), **kwargs)


# --- without tools: exactly the old builder -------------------------------------------------------

TEXT_ONLY = [
    [("system", "Be brief"), ("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?")],
    [("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d"), ("user", "e")],
    [("user", "q"), ("assistant", "a"), ("system", "now in French"), ("user", "q2")],
    [("assistant", "Hi!"), ("user", "yo")],
    [("user", "see ![a cat](http://x/c.png)")],
    [("user", "  x  "), ("user", ""), ("assistant", "\n")],
    [("user", "只说中文 🙂")],
    [("developer", "d"), ("system", "s"), ("user", "u")],  # the chat dialect keeps "developer" as is
]


@pytest.mark.parametrize("template", ["deepseek", "plain"])
@pytest.mark.parametrize("pairs", TEXT_ONLY)
def test_text_only_conversations_render_exactly_as_before(pairs: list[tuple[str, str]], template: str) -> None:
    c = conv(*(msg(role, text) for role, text in pairs))
    assert render_prompt(c, template) == build_prompt(pairs, template)


def test_multi_part_text_joins_like_validation_did() -> None:
    c = conv(msg("user", "one", "two"))
    assert render_prompt(c) == "one\ntwo"


def test_tool_history_without_tools_renders_as_before() -> None:
    c = conv(
        msg("user", "weather?"),
        msg("assistant", "Let me check.", ToolCall("call_1", "get_weather", '{"city":"Paris"}'), ToolCall("", "legacy", "{}")),
        Message("tool", [ToolResult("call_1", None, "18C")]),
        Message("tool", [ToolResult("", "legacy", "ok")]),
    )
    calls = render_tool_calls([("call_1", "get_weather", '{"city":"Paris"}'), ("", "legacy", "{}")])
    pairs = [
        ("user", "weather?"),
        ("assistant", f"Let me check.\n{calls}"),
        ("tool", render_tool_result("get_weather", "call_1", "18C")),
        ("tool", render_tool_result("legacy", None, "ok")),
    ]
    assert render_prompt(c) == build_prompt(pairs)


def test_reasoning_parts_stay_out_of_the_prompt() -> None:
    c = conv(msg("user", "q"), msg("assistant", Reasoning("secret thoughts"), "answer"), msg("user", "next"))
    assert "secret" not in render_prompt(c)
    assert "secret" not in render_prompt(conv(*c.messages, tools=[TIME]))


def test_unknown_template() -> None:
    with pytest.raises(ValueError, match="chatml"):
        render_prompt(conv(msg("user", "x"), tools=[TIME]), "chatml")


# --- with tools -------------------------------------------------------------------------------------


def test_the_tools_section_lists_every_tool_with_its_schema() -> None:
    prompt = render_prompt(conv(msg("user", "hi"), tools=[WEATHER, TIME]))
    assert prompt.startswith(P.TOOLS_HEADING + "\n\n" + P.TOOLS_INTRO + "\n\n### get_weather\n")
    assert "Description: Current weather.\nUse it for any city.\nParameters: " + json.dumps(
        WEATHER.parameters, ensure_ascii=False, separators=(",", ":")) + "\n\n### get_time\nParameters: " in prompt
    assert '{"type":"object","properties":{}}' in prompt  # a tool without parameters
    assert prompt.endswith("<｜User｜>hi")


def test_the_rules_show_the_markers_and_forbid_results_and_fences() -> None:
    prompt = render_prompt(conv(msg("user", "hi"), tools=[WEATHER]))
    rules = prompt[prompt.index(P.HOW_HEADING):]
    assert CALL_OPEN in rules and CALL_CLOSE in rules and RESULT_OPEN in rules and RESULT_CLOSE in rules
    assert "never in your thinking and never inside a code block" in rules
    assert "Never write a tool result yourself." in rules
    assert P.PARALLEL_YES in rules
    assert rules.rstrip(">").split("\n")[-1].startswith("- " + P.CHOICE_AUTO)


@pytest.mark.parametrize(
    ("choice", "rule", "repeated"),
    [
        (ToolChoice("auto"), P.CHOICE_AUTO, False),
        (ToolChoice("none"), P.CHOICE_NONE, False),
        (ToolChoice("required"), P.CHOICE_REQUIRED, True),
        (ToolChoice("tool", "get_weather"), "In this answer you must call the tool `get_weather`.", True),
    ],
)
def test_tool_choice_rules(choice: ToolChoice, rule: str, repeated: bool) -> None:
    prompt = render_prompt(conv(msg("user", "hi"), tools=[WEATHER], tool_choice=choice))
    assert f"- {rule}<｜User｜>hi" in prompt
    assert prompt.endswith(f"hi\n\n{rule}") == repeated
    others = {P.CHOICE_AUTO, P.CHOICE_NONE, P.CHOICE_REQUIRED, P.CHOICE_TOOL.format(name="get_weather")} - {rule}
    assert not any(other in prompt for other in others)


def test_parallel_off() -> None:
    prompt = render_prompt(conv(msg("user", "hi"), tools=[WEATHER], parallel_tool_calls=False))
    assert P.PARALLEL_NO in prompt and P.PARALLEL_YES not in prompt


def test_a_long_system_prompt_survives_whole_and_comes_first() -> None:
    system = "You are an agent.\n" + "".join(f"Rule {i}: be careful with <tags> and ``` fences.\n" for i in range(3000))
    c = conv(msg("system", system), msg("system", "Second system part."), msg("user", "go"), tools=[WEATHER])
    prompt = render_prompt(c)
    assert prompt.startswith(system + "\n\nSecond system part.\n\n" + P.TOOLS_HEADING)
    assert len(system) > 100_000


def test_developer_text_counts_as_system_text_with_tools() -> None:
    c = conv(msg("developer", "Be terse."), msg("user", "hi"), tools=[TIME])  # type: ignore[arg-type]
    prompt = render_prompt(c)
    assert prompt.startswith("Be terse.\n\n" + P.TOOLS_HEADING) and prompt.count("<｜User｜>") == 1


def test_earlier_calls_and_results_use_the_markup() -> None:
    c = conv(
        msg("user", "Weather in Paris and Rome?"),
        msg("assistant", "Checking.", ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
            ToolCall("call_b", "get_weather", '{"city":"Rome"}')),
        Message("tool", [ToolResult("call_a", None, "18C")]),
        Message("tool", [ToolResult("call_b", "get_weather", "", is_error=False)]),
        msg("user", "And tomorrow?"),
        tools=[WEATHER],
    )
    prompt = render_prompt(c)
    tail = prompt[prompt.index("<｜User｜>Weather"):]
    assert tail == (
        "<｜User｜>Weather in Paris and Rome?"
        "<｜Assistant｜>Checking.\n"
        '<｜tool▁call｜>{"id":"call_a","name":"get_weather","arguments":{"city":"Paris"}}<｜/tool▁call｜>\n'
        '<｜tool▁call｜>{"id":"call_b","name":"get_weather","arguments":{"city":"Rome"}}<｜/tool▁call｜>'
        "<｜end▁of▁sentence｜>"
        '<｜User｜><｜tool▁result｜>{"id":"call_a","name":"get_weather"}\n18C\n<｜/tool▁result｜>\n\n'
        '<｜tool▁result｜>{"id":"call_b","name":"get_weather"}\n(no output)\n<｜/tool▁result｜>\n\n'
        "And tomorrow?"
    )
    assert "Tool result" not in prompt  # no heading line a model could imitate


def test_an_error_result_and_results_inside_a_user_message() -> None:
    c = conv(
        msg("user", "x"),
        msg("assistant", ToolCall("toolu_1", "get_time", "")),
        msg("user", ToolResult("toolu_1", None, "boom", is_error=True), "Try again."),
        tools=[TIME],
    )
    assert render_prompt(c).endswith(
        '<｜tool▁call｜>{"id":"toolu_1","name":"get_time","arguments":{}}<｜/tool▁call｜><｜end▁of▁sentence｜>'
        '<｜User｜><｜tool▁result｜>{"id":"toolu_1","name":"get_time","error":true}\nboom\n<｜/tool▁result｜>\nTry again.'
    )


def test_arguments_that_are_not_json_are_shown_as_a_string() -> None:
    c = conv(msg("user", "x"), msg("assistant", ToolCall("c", "get_time", "not json")), tools=[TIME])
    assert '"arguments":"not json"' in render_prompt(c)


def test_a_rendered_history_call_is_what_the_recogniser_reads() -> None:
    # A model copying the history's form must produce a call the recogniser accepts.
    c = conv(msg("user", "x"), msg("assistant", ToolCall("call_9", "get_weather", '{"city":"Oslo"}')), tools=[WEATHER])
    blocks = re.findall(re.escape(CALL_OPEN) + ".*?" + re.escape(CALL_CLOSE), render_prompt(c))
    assert len(blocks) == 3  # two in the rules (the wording, the example), then the history's call
    rec = ToolCallRecognizer([WEATHER])
    out = rec.feed(blocks[-1]) + rec.flush()
    assert [(x.name, x.arguments) for x in out if isinstance(x, ToolCall)] == [("get_weather", '{"city":"Oslo"}')]


def test_plain_template_with_tools() -> None:
    c = conv(
        msg("system", "sys"), msg("user", "q"), msg("assistant", ToolCall("c1", "get_time", "{}")),
        Message("tool", [ToolResult("c1", None, "noon")]), tools=[TIME],
    )
    prompt = render_prompt(c, "plain")
    assert prompt.startswith("System: sys\n\n## Tools")
    assert prompt.endswith(
        '\n\nUser: q\n\nAssistant: <｜tool▁call｜>{"id":"c1","name":"get_time","arguments":{}}<｜/tool▁call｜>'
        '\n\nUser: <｜tool▁result｜>{"id":"c1","name":"get_time"}\nnoon\n<｜/tool▁result｜>'
    )


def test_rendering_is_deterministic() -> None:
    c = conv(msg("user", "x"), tools=[WEATHER, TIME], tool_choice=ToolChoice("required"),
             output=OutputFormat("json_schema", {"type": "object"}, "o"))
    assert render_prompt(c) == render_prompt(c)


# --- JSON answers -------------------------------------------------------------------------------------


def test_json_object_format() -> None:
    prompt = render_prompt(conv(msg("system", "s"), msg("user", "list three colours"), output=OutputFormat("json_object")))
    assert prompt == (
        f"s\n\n{P.FORMAT_HEADING}\n\n{P.JSON_OBJECT_RULE}<｜User｜>list three colours\n\n{P.JSON_REMINDER}"
    )


def test_json_schema_format_includes_the_schema() -> None:
    schema = {"type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"}}},
              "required": ["colours"]}
    prompt = render_prompt(conv(msg("user", "go"), output=OutputFormat("json_schema", schema, "palette", True)))
    assert prompt.startswith(f"{P.FORMAT_HEADING}\n\n{P.JSON_OBJECT_RULE}\n")
    assert ('The JSON must be valid against this JSON Schema ("palette"): '
            '{"type":"object","properties":{"colours":{"type":"array","items":{"type":"string"}}},'
            '"required":["colours"]}<｜User｜>go') in prompt


def test_json_schema_with_a_non_object_top_level() -> None:
    prompt = render_prompt(conv(msg("user", "go"), output=OutputFormat("json_schema", {"type": "array"})))
    assert P.JSON_OBJECT_RULE not in prompt and "one JSON value" in prompt


def test_json_format_with_tools_applies_to_text_answers() -> None:
    prompt = render_prompt(conv(msg("user", "go"), tools=[TIME], output=OutputFormat("json_object")))
    assert prompt.index(P.HOW_HEADING) < prompt.index(P.FORMAT_HEADING)
    assert P.JSON_WITH_TOOLS in prompt


# --- corrections ------------------------------------------------------------------------------------------


def test_tool_correction_ends_the_prompt() -> None:
    c = conv(msg("user", "weather?"), tools=[WEATHER], tool_choice=ToolChoice("tool", "get_weather"))
    note = P.tool_correction(c, ["there is no tool named 'x'"])
    assert note.startswith(P.CORRECTION_LEAD + ": there is no tool named 'x'. In this answer you must call the tool")
    assert CALL_OPEN in note and CALL_CLOSE in note
    prompt = render_prompt(c, correction=note)
    assert prompt.endswith(f"weather?\n\n{P.choice_rule(c.tool_choice)} {note}")


def test_tool_correction_without_reasons() -> None:
    c = conv(msg("user", "x"), tools=[WEATHER], tool_choice=ToolChoice("required"))
    assert "it did not call a tool" in P.tool_correction(c, [])


def test_json_correction() -> None:
    c = conv(msg("user", "x"), output=OutputFormat("json_object"))
    note = P.json_correction(c, "the answer is not valid JSON")
    assert render_prompt(c, correction=note).endswith(f"x\n\n{P.JSON_REMINDER} {note}")


def test_a_correction_after_an_assistant_prefill_gets_its_own_user_block() -> None:
    c = conv(msg("user", "x"), msg("assistant", "partial"))
    assert render_prompt(c, correction="fix it").endswith("<｜end▁of▁sentence｜><｜User｜>fix it")
