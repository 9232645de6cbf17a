"""ToolCallRecognizer and ReasoningFilter: every rule at every split of the stream.

Each case is fed whole, in two pieces at every index, one character at a time and in
3-character tokens; all feedings must give the same visible text, the same calls and the
same refusals. The visible text is compared exactly, so a marker fragment that leaked
into it would fail the case.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ds2a.relay.conversation import Tool, ToolCall, ToolChoice
from ds2a.relay.tools import ReasoningFilter, ToolCallRecognizer, strip_calls
from ds2a.relay.tools.markup import CALL_CLOSE as CC
from ds2a.relay.tools.markup import CALL_OPEN as CO
from ds2a.relay.tools.markup import MAX_MARKER
from ds2a.relay.tools.markup import RESULT_CLOSE as RC
from ds2a.relay.tools.markup import RESULT_OPEN as RO

WEATHER = Tool(
    "get_weather",
    "Weather in a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1},
            "metric": {"type": "boolean"},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = Tool("get_time", "", {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}}})
NOTE = Tool("write_note", "", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
TOOLS = [WEATHER, TIME, NOTE]

PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
PARIS_ARGS = '{"city":"Paris"}'


def pieces_of(text: str) -> Iterator[list[str]]:
    """Every way this suite splits a stream: whole, at each index, per character, per 3 characters."""
    yield [text]
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
    yield list(text)
    yield [text[i : i + 3] for i in range(0, len(text), 3)]


@dataclass
class Result:
    text: str
    calls: list[tuple[str, str]]
    rejected: list[str] = field(default_factory=list)
    done: bool = False


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"call_{next(counter)}"


def recognise(pieces: list[str], tools: list[Tool] = TOOLS, **kwargs: Any) -> Result:
    rec = ToolCallRecognizer(tools, new_id=ids(), **kwargs)
    out: list[str | ToolCall] = []
    for piece in pieces:
        out += rec.feed(piece)
    done = rec.calls_done
    out += rec.flush()
    text = "".join(x for x in out if isinstance(x, str))
    calls = [(x.name, x.arguments) for x in out if isinstance(x, ToolCall)]
    assert [x.id for x in out if isinstance(x, ToolCall)] == [f"call_{i + 1}" for i in range(len(calls))]
    return Result(text, calls, rec.rejected, done)


def check(text: str, want_text: str, want_calls: list[tuple[str, str]], *, rejected: int = 0, **kwargs: Any) -> None:
    for pieces in pieces_of(text):
        got = recognise(pieces, **kwargs)
        assert (got.text, got.calls) == (want_text, want_calls), pieces
        assert len(got.rejected) == rejected, (pieces, got.rejected)


# --- the canonical form ---------------------------------------------------------------------


def test_plain_text_passes_through_unchanged() -> None:
    text = "Hello | world ~ not a fence `code` and a < b > c, 1<2, <div>ok</div>, <|im_start|>, <｜User｜>.\n"
    check(text, text, [])


def test_text_then_one_call() -> None:
    check(f"Let me look.\n{CO}{PARIS}{CC}", "Let me look.\n", [("get_weather", PARIS_ARGS)])


def test_call_only() -> None:
    check(f"{CO}{PARIS}{CC}", "", [("get_weather", PARIS_ARGS)])


def test_several_calls_with_whitespace_between() -> None:
    text = f"{CO}{PARIS}{CC}\n\n {CO}{{\"name\": \"get_time\", \"arguments\": {{\"tz\": \"CET\"}}}}{CC}\n"
    check(text, "", [("get_weather", PARIS_ARGS), ("get_time", '{"tz":"CET"}')])


def test_parallel_off_keeps_the_first_call_and_is_done() -> None:
    text = f"{CO}{PARIS}{CC}{CO}{{\"name\": \"get_time\", \"arguments\": {{}}}}{CC}"
    for pieces in pieces_of(text):
        got = recognise(pieces, parallel=False)
        assert got.calls == [("get_weather", PARIS_ARGS)]
        assert got.done


def test_text_after_the_calls_is_dropped_and_calls_are_done() -> None:
    text = f"Sure.{CO}{PARIS}{CC}\nThe weather is fine, I think.{CO}{PARIS}{CC}"
    for pieces in pieces_of(text):
        got = recognise(pieces)
        assert (got.text, got.calls, got.done) == ("Sure.", [("get_weather", PARIS_ARGS)], True)


def test_an_invented_result_after_a_call_is_dropped() -> None:
    text = f"{CO}{PARIS}{CC}\n{RO}{{\"name\": \"get_weather\"}}\n18C\n{RC}\nIt is 18C."
    check(text, "", [("get_weather", PARIS_ARGS)])


def test_an_invented_result_in_text_ends_the_answer() -> None:
    check(f"Answer: {RO}fake{RC} more", "Answer: ", [])


def test_calls_are_not_done_while_only_whitespace_follows() -> None:
    rec = ToolCallRecognizer(TOOLS)
    rec.feed(f"{CO}{PARIS}{CC}\n  ")
    assert not rec.calls_done
    rec.feed("x")
    assert rec.calls_done
    assert rec.feed(f"{CO}{PARIS}{CC}") == []


def test_unclosed_call_is_read_at_the_end() -> None:
    check(f"ok {CO}{PARIS}", "ok ", [("get_weather", PARIS_ARGS)])


def test_a_new_opening_marker_ends_an_unclosed_call() -> None:
    text = f"{CO}{PARIS}\n{CO}{{\"name\": \"get_time\", \"arguments\": {{}}}}{CC}"
    check(text, "", [("get_weather", PARIS_ARGS), ("get_time", "{}")])


def test_markers_inside_json_strings_of_the_body_do_not_end_it() -> None:
    body = '{"name": "write_note", "arguments": {"text": "a < b and <b>bold</b> and <|x|>"}}'
    check(f"{CO}{body}{CC}", "", [("write_note", '{"text":"a < b and <b>bold</b> and <|x|>"}')])


def test_empty_input_and_flush_only() -> None:
    rec = ToolCallRecognizer(TOOLS)
    assert rec.feed("") == []
    assert rec.flush() == []


# --- marker drift ---------------------------------------------------------------------------

DRIFTED = {
    "ascii bars": ("<|tool▁call|>", "<|/tool▁call|>"),
    "full-width angle brackets": ("＜｜tool▁call｜＞", "＜｜/tool▁call｜＞"),
    "CJK look-alike and underscore": ("<丨tool_call丨>", "<丨/tool_call丨>"),
    "box-drawing bar": ("<│tool call│>", "<│/tool call│>"),
    "doubled bars": ("<｜｜tool▁call｜｜>", "<｜｜/tool▁call｜｜>"),
    "stray spaces": ("< ｜ tool ▁ call ｜ >", "< ｜ / tool ▁ call ｜ >"),
    "trailing bar": ("<｜tool▁call｜|>", "<｜/tool▁call｜|>"),
    "upper case": ("<｜TOOL▁CALL｜>", "<｜/Tool▁Call｜>"),
    "no joiner": ("<｜toolcall｜>", "<｜/toolcall｜>"),
    "hyphen": ("<|tool-call|>", "<|/tool-call|>"),
    "bar on one side only": ("<tool_call|>", "</tool_call|>"),
    "slash before the bar": ("<｜tool▁call｜>", "</｜tool▁call｜>"),
    "begin / end suffixes": ("<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"),
    "start suffix": ("<|tool_call_start|>", "<|tool_call_end|>"),
    "mixed": ("<|｜tool▁call｜|>", "<｜/tool_call|>"),
}


@pytest.mark.parametrize("kind", list(DRIFTED))
def test_drifted_markers_are_recognised(kind: str) -> None:
    opening, closing = DRIFTED[kind]
    check(f"Checking.{opening}{PARIS}{closing}", "Checking.", [("get_weather", PARIS_ARGS)])


def test_native_deepseek_markup() -> None:
    text = (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜>"
        "<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    )
    check(text, "", [("get_weather", PARIS_ARGS), ("get_time", "{}")])


def test_native_v3_markup_with_function_type_and_fenced_arguments() -> None:
    text = (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
        "{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    )
    check(text, "", [("get_weather", PARIS_ARGS)])


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>no bars is prose</tool_call>",
        "<｜User｜>role markers are text",
        "<|im_start|>assistant",
        "<｜tool▁callx｜>",
        "<｜tooling｜>",
        "<｜tool▁caller｜>",
        "<| tool" + " " * MAX_MARKER + "call |>",
        "<｜tool▁call｜ and then words",
    ],
)
def test_near_misses_stay_text(text: str) -> None:
    check(text, text, [])


def test_a_possible_marker_start_is_the_only_thing_held_back() -> None:
    rec = ToolCallRecognizer(TOOLS)
    assert rec.feed("Hello") == ["Hello"]
    assert rec.feed(" <") == [" "]  # "<" could open a marker
    assert rec.feed("｜to") == []
    assert rec.feed("y") == ["<｜toy"]  # no longer a marker: released at once
    assert rec.feed(" a < b") == [" a < b"]  # "< b" cannot be a marker any more
    assert rec.feed(" c <| ") == [" c "]
    assert rec.feed("| t") == []
    assert rec.feed("x") == ["<| | tx"]
    assert rec.flush() == []


def test_a_held_back_start_is_released_at_the_end() -> None:
    rec = ToolCallRecognizer(TOOLS)
    assert rec.feed("x <｜tool▁ca") == ["x "]
    assert rec.flush() == ["<｜tool▁ca"]


def test_plain_characters_are_never_held() -> None:
    text = "A plain answer, with *Markdown*, | tables |, 数据 🙂 and\nnew lines.\n"
    rec = ToolCallRecognizer(TOOLS)
    for ch in text:
        assert rec.feed(ch) == [ch]


# --- code fences -------------------------------------------------------------------------------


def test_a_call_in_a_code_fence_is_text() -> None:
    text = f"Example:\n```\n{CO}{PARIS}{CC}\n```\nThat is all."
    check(text, text, [])


def test_a_call_in_a_tilde_fence_with_info_string_is_text() -> None:
    text = f"  ~~~~text\n{CO}{PARIS}{CC}\n~~~~\n"
    check(text, text, [])


def test_a_call_after_the_fence_closes_is_a_call() -> None:
    text = f"```json\n{CO}{PARIS}{CC}\n```\n{CO}{PARIS}{CC}"
    check(text, f"```json\n{CO}{PARIS}{CC}\n```\n", [("get_weather", PARIS_ARGS)])


def test_a_shorter_or_different_fence_does_not_close() -> None:
    text = f"````\n```\n~~~\n{CO}{PARIS}{CC}\n````\nok"
    check(text, text, [])


def test_an_unclosed_fence_keeps_everything_text() -> None:
    text = f"```python\nx = '{CO}{PARIS}{CC}'"
    check(text, text, [])


def test_backticks_mid_line_or_too_few_or_over_indented_are_not_fences() -> None:
    for prefix in ("say ```\n", "``\n", "    ```\n", "`` `\n"):
        check(f"{prefix}{CO}{PARIS}{CC}", prefix, [("get_weather", PARIS_ARGS)])


def test_inline_code_span_with_fence_chars_then_call() -> None:
    check(f"Use `~` here.\n{CO}{PARIS}{CC}", "Use `~` here.\n", [("get_weather", PARIS_ARGS)])


def test_a_marker_right_after_a_fence_run_is_fence_text() -> None:
    text = f"```{CO}{PARIS}{CC}\nstill code\n```\n"
    check(text, text, [])


# --- argument repair ---------------------------------------------------------------------------

REPAIRS = {  # damage: (body, tool, canonical arguments)
    'unescaped quotes': ('{"name": "write_note", "arguments": {"text": "say "hi" now"}}', 'write_note', '{"text":"say \\"hi\\" now"}'),
    'raw newlines': ('{"name": "write_note", "arguments": {"text": "line one\nline two"}}', 'write_note', '{"text":"line one\\nline two"}'),
    'trailing commas': ('{"name": "get_weather", "arguments": {"city": "Paris", "days": 2,},}', 'get_weather', '{"city":"Paris","days":2}'),
    'single quotes': ("{'name': 'write_note', 'arguments': {'text': 'it's fine'}}", 'write_note', '{"text":"it\'s fine"}'),
    'python literals': ('{"name": "get_weather", "arguments": {"city": "Paris", "metric": True}}', 'get_weather', '{"city":"Paris","metric":true}'),
    'arguments as a JSON text': ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', 'get_weather', '{"city":"Paris"}'),
    'parameters key': ('{"name": "get_weather", "parameters": {"city": "Paris"}}', 'get_weather', '{"city":"Paris"}'),
    'flattened arguments': ('{"name": "get_weather", "city": "Paris"}', 'get_weather', '{"city":"Paris"}'),
    'OpenAI function shape': ('{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\":\\"Paris\\"}"}}', 'get_weather', '{"city":"Paris"}'),
    'functions. prefix': ('{"name": "functions.get_weather", "arguments": {"city": "Paris"}}', 'get_weather', '{"city":"Paris"}'),
    'name in another case': ('{"name": "Get_Weather", "arguments": {"city": "Paris"}}', 'get_weather', '{"city":"Paris"}'),
    'string numbers and booleans': ('{"name": "get_weather", "arguments": {"city": "Paris", "days": "3", "metric": "false"}}', 'get_weather', '{"city":"Paris","days":3,"metric":false}'),
    'number for a string': ('{"name": "write_note", "arguments": {"text": 42}}', 'write_note', '{"text":"42"}'),
    'no arguments': ('{"name": "get_time"}', 'get_time', '{}'),
    'null arguments': ('{"name": "get_time", "arguments": null}', 'get_time', '{}'),
    'fenced body': ('\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n', 'get_weather', '{"city":"Paris"}'),
    'id key ignored': ('{"id": "call_9", "name": "get_weather", "arguments": {"city": "Paris"}}', 'get_weather', '{"city":"Paris"}'),
    'XML parameters': ('<invoke name="get_weather"><parameter name="city">Paris</parameter><parameter name="days">2</parameter></invoke>', 'get_weather', '{"city":"Paris","days":2}'),
    'XML equals style': ('<function=write_note>\n<parameter=text>\nmulti\nline\n</parameter>\n</function>', 'write_note', '{"text":"multi\\nline"}'),
    'name then JSON': ('get_weather {"city": "Paris"}', 'get_weather', '{"city":"Paris"}'),
    'name(JSON)': ('get_weather({"city": "Paris"})', 'get_weather', '{"city":"Paris"}'),
    'non-ASCII kept': ('{"name": "write_note", "arguments": {"text": "数据 🙂"}}', 'write_note', '{"text":"数据 🙂"}'),
}

@pytest.mark.parametrize("kind", list(REPAIRS))
def test_argument_damage_is_repaired(kind: str) -> None:
    body, name, args = REPAIRS[kind]
    check(f"{CO}{body}{CC}", "", [(name, args)])


def test_an_array_body_is_several_calls() -> None:
    body = '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'
    check(f"{CO}{body}{CC}", "", [("get_weather", PARIS_ARGS), ("get_time", "{}")])


# --- refusals ------------------------------------------------------------------------------------

REFUSALS = {
    "unknown tool": ('{"name": "delete_everything", "arguments": {}}', "no tool named 'delete_everything'"),
    "unrepairable JSON": ('{"name": "get_weather", "arguments": {"city": @@}}', "not valid JSON"),
    "missing required": ('{"name": "get_weather", "arguments": {"days": 2}}', "'city' is a required property"),
    "wrong type": ('{"name": "get_weather", "arguments": {"city": "Paris", "days": "many"}}', "days"),
    "below minimum": ('{"name": "get_weather", "arguments": {"city": "Paris", "days": 0}}', "minimum"),
    "extra property": ('{"name": "get_weather", "arguments": {"city": "Paris", "x": 1}}', "Additional properties"),
    "not in enum": ('{"name": "get_time", "arguments": {"tz": "PST"}}', "is not one of"),
    "arguments not an object": ('{"name": "get_time", "arguments": [1, 2]}', "must be a JSON object"),
    "no name": ('{"arguments": {"city": "Paris"}}', 'no "name"'),
    "empty body": ("  ", "empty"),
    "prose body": ("I want the weather please", "not a JSON object"),
}


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_bad_calls_are_refused_with_a_reason(kind: str) -> None:
    body, reason = REFUSALS[kind]
    text = f"Let me see.{CO}{body}{CC} and more text"
    for pieces in pieces_of(text):
        got = recognise(pieces)
        assert (got.text, got.calls) == ("Let me see.", []), pieces
        assert len(got.rejected) == 1 and reason in got.rejected[0], got.rejected


def test_a_refused_call_does_not_stop_a_good_one() -> None:
    text = f"{CO}{{\"name\": \"nope\"}}{CC}{CO}{PARIS}{CC}"
    check(text, "", [("get_weather", PARIS_ARGS)], rejected=1, parallel=False)


def test_tool_choice_none_refuses_every_call() -> None:
    check(f"Hi.{CO}{PARIS}{CC}", "Hi.", [], rejected=1, choice=ToolChoice("none"))


def test_named_tool_choice_refuses_other_tools() -> None:
    text = f"{CO}{PARIS}{CC}{CO}{{\"name\": \"get_time\", \"arguments\": {{}}}}{CC}"
    check(text, "", [("get_time", "{}")], rejected=1, choice=ToolChoice("tool", "get_time"))


def test_a_broken_client_schema_does_not_refuse_calls() -> None:
    odd = Tool("odd", "", {"type": "object", "properties": {"a": {"type": "not-a-type"}}})
    remote = Tool("remote", "", {"$ref": "https://example.invalid/schema.json"})
    text = f'{CO}{{"name": "odd", "arguments": {{"a": 1}}}}{CC}{CO}{{"name": "remote", "arguments": {{"b": 2}}}}{CC}'
    check(text, "", [("odd", '{"a":1}'), ("remote", '{"b":2}')], tools=[odd, remote])


def test_call_ids_are_openai_shaped_and_distinct() -> None:
    rec = ToolCallRecognizer(TOOLS)
    out = rec.feed(f"{CO}{PARIS}{CC}{CO}{PARIS}{CC}") + rec.flush()
    got = [x.id for x in out if isinstance(x, ToolCall)]
    assert len(got) == 2 and got[0] != got[1]
    for call_id in got:
        assert call_id.startswith("call_") and len(call_id) == 29 and call_id[5:].isalnum()


# --- reasoning ------------------------------------------------------------------------------------


def filtered(pieces: list[str]) -> str:
    f = ReasoningFilter()
    out: list[str] = []
    for piece in pieces:
        out += f.feed(piece)
    out += f.flush()
    assert all(isinstance(x, str) for x in out)
    return "".join(out)


@pytest.mark.parametrize(
    ("thought", "want"),
    [
        (f"I should call it: {CO}{PARIS}{CC} and then wait.", "I should call it:  and then wait."),
        (f"Two: <|tool_call|>{PARIS}<|/tool_call|><｜｜tool▁call｜｜>{PARIS}<｜｜/tool▁call｜｜>.", "Two: ."),
        (f"Unclosed {CO}{PARIS}", "Unclosed "),
        (f"Native <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>x<｜tool▁sep｜>{{}}<｜tool▁call▁end｜><｜tool▁calls▁end｜>!",
         "Native !"),
        (f"Results {RO}fake{RC} stay as words", "Results fake stay as words"),
        ("Plain thoughts with a < b and | bars |.", "Plain thoughts with a < b and | bars |."),
        (f"In a fence:\n```\n{CO}{PARIS}{CC}\n```\n", f"In a fence:\n```\n{CO}{PARIS}{CC}\n```\n"),
    ],
)
def test_reasoning_filter_removes_call_markup_at_every_split(thought: str, want: str) -> None:
    for pieces in pieces_of(thought):
        assert filtered(pieces) == want, pieces
    assert strip_calls(thought) == want


def test_reasoning_filter_never_yields_calls() -> None:
    f = ReasoningFilter()
    out = f.feed(f"{CO}{PARIS}{CC}") + f.flush()
    assert out == []


def test_a_remote_schema_reference_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    fetched: list[object] = []

    def no_network(*args: object, **kwargs: object) -> None:
        fetched.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    tool = Tool("fetchy", "", {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/a.json"}}})
    got = recognise([f'{CO}{{"name": "fetchy", "arguments": {{"a": 1}}}}{CC}'], tools=[tool])
    assert got.calls == [("fetchy", '{"a":1}')]
    assert fetched == []
