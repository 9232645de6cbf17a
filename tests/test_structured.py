"""JSON answers: finding, repairing and checking them, and stripping fences while streaming."""

from __future__ import annotations

from typing import Any

import pytest

from ds2a.relay.tools.structured import JsonAnswerError, JsonFenceStripper, json_answer_text, parse_json_answer

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "age": 36}',
        '  \n{"name": "Ada", "age": 36}\n',
        '```json\n{"name": "Ada", "age": 36}\n```',
        '```\n{"name": "Ada", "age": 36}\n```\n',
        'Here you go:\n```json\n{"name": "Ada", "age": 36}\n```\nAnything else?',
        'Sure! {"name": "Ada", "age": 36}',
        '{"name": "Ada", "age": 36} I hope this helps.',
        "{'name': 'Ada', 'age': 36,}",
        '{"name": "Ada", "age": "36"}',  # coerced by the schema
    ],
)
def test_parse_json_answer_finds_the_value(text: str) -> None:
    assert parse_json_answer(text, PERSON) == {"name": "Ada", "age": 36}


@pytest.mark.parametrize(
    ("text", "schema", "require_object", "message"),
    [
        ("", None, False, "empty"),
        ("I cannot do that.", None, False, "not valid JSON"),
        ('{"name": "Ada"}', PERSON, False, "the value: 'age' is a required property"),
        ('{"name": "Ada", "age": -1}', PERSON, False, "age: -1 is less than the minimum of 0"),
        ('{"name": "Ada", "age": 1, "x": 0}', PERSON, False, "Additional properties"),
        ("[1, 2]", None, True, "must be a JSON object"),
    ],
)
def test_parse_json_answer_says_what_is_wrong(text: str, schema: Any, require_object: bool, message: str) -> None:
    with pytest.raises(JsonAnswerError) as caught:
        parse_json_answer(text, schema, require_object=require_object)
    assert message in str(caught.value)


def test_json_answer_text_keeps_valid_json_as_written() -> None:
    assert json_answer_text('```json\n{"name": "Ada",  "age": 36}\n```', PERSON) == '{"name": "Ada",  "age": 36}'


def test_json_answer_text_reserialises_a_repaired_answer() -> None:
    assert json_answer_text("{'name': 'Ada', 'age': '36'}", PERSON) == '{"name":"Ada","age":36}'
    assert json_answer_text('{"a": 1} trailing', None) == '{"a":1}'


def pieces_of(text: str) -> list[list[str]]:
    splits = [[text], list(text), [text[i : i + 3] for i in range(0, len(text), 3)]]
    return splits + [[text[:i], text[i:]] for i in range(1, len(text))]


def stripped(pieces: list[str]) -> str:
    s = JsonFenceStripper()
    return "".join([s.feed(p) for p in pieces] + [s.flush()])


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('\n  ```JSON\n{\n  "a": [1, 2]\n}\n```\n\nHope that helps!', '{\n  "a": [1, 2]\n}'),
        ('~~~\n{"a": 1}\n~~~', '{"a": 1}'),
        ('```json\n{"code": "```py\\nx\\n```", "t": "`"}\n```', '{"code": "```py\\nx\\n```", "t": "`"}'),
        ('```json\n{"a": 1}', '{"a": 1}'),  # never closed
        ('{"a": "no fence"}', '{"a": "no fence"}'),
        ('  {"a": 1}  ', '{"a": 1}  '),
        ("``", "``"),
        ("", ""),
    ],
)
def test_fence_stripper_at_every_split(text: str, want: str) -> None:
    for pieces in pieces_of(text):
        assert stripped(pieces) == want, pieces


def test_fence_stripper_passes_unfenced_text_through_at_once() -> None:
    s = JsonFenceStripper()
    assert s.feed('{"a"') == '{"a"'
    assert s.feed(": 1}") == ": 1}"


def test_fence_stripper_holds_only_whitespace_and_backticks_inside_a_fence() -> None:
    s = JsonFenceStripper()
    assert s.feed("```json\n{") == "{"
    assert s.feed('"a": 1 \n') == '"a": 1'
    assert s.feed("`") == ""
    assert s.feed("x") == " \n`x"
    assert s.feed("}\n``") == "}"
    assert s.feed("`\nbye") == ""
    assert s.flush() == ""
