"""Lenient JSON (``loads_lenient``) and schema-guided coercion, rule by rule."""

from __future__ import annotations

from typing import Any

import pytest

from ds2a.relay.tools.repair import loads_lenient
from ds2a.relay.tools.schema import Checker, coerce


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('{"a": "x\ny"}', {"a": "x\ny"}),  # raw newline
        ('{"a": "tab\there"}', {"a": "tab\there"}),
        ('{"a": "say "hi" now"}', {"a": 'say "hi" now'}),
        ('{"a": "ends with "quote""}', {"a": 'ends with "quote"'}),
        ('{"q": "a "b", c", "d": 1}', {"q": 'a "b", c', "d": 1}),
        ('{"a": "x", "b": "y"}', {"a": "x", "b": "y"}),  # well-formed stays exact
        ('["say "hi"", "bye"]', ['say "hi"', "bye"]),
        ("{'a': 'it's fine'}", {"a": "it's fine"}),
        ("{'a': 'single', \"b\": \"double\"}", {"a": "single", "b": "double"}),
        ("{'a': 'esc\\'aped'}", {"a": "esc'aped"}),
        ('{"a": [1, 2,], "b": {"c": 3,},}', {"a": [1, 2], "b": {"c": 3}}),
        ('{"a": 1,, "b": 2}', {"a": 1, "b": 2}),
        ('{"a": 1 "b": 2}', {"a": 1, "b": 2}),  # a missing comma
        ('{"a": True, "b": False, "c": None, "d": undefined}', {"a": True, "b": False, "c": None, "d": None}),
        ("{a: 1, b_2: 'x'}", {"a": 1, "b_2": "x"}),  # unquoted keys
        ('{"re": "\\d+\\s"}', {"re": "\\d+\\s"}),  # unknown escapes kept
        ('{"u": "\\u00e9\\ud83d\\ude00"}', {"u": "é😀"}),
        ('{"n": +1, "f": .5, "e": 1e3, "neg": -2.5}', {"n": 1, "f": 0.5, "e": 1000.0, "neg": -2.5}),
        ('{"a": {"b": [1, {"c": "d"', {"a": {"b": [1, {"c": "d"}]}}),  # truncated: closed
        ('{"a": 1} and some words', {"a": 1}),  # text after the value
        ('{"word": celsius}', {"word": "celsius"}),  # a bare word: left for the schema to judge
        ("  [ ]  ", []),
        ('"just a string"', "just a string"),
    ],
)
def test_loads_lenient_repairs(text: str, value: Any) -> None:
    assert loads_lenient(text) == value


@pytest.mark.parametrize("text", ["", "   ", "@@", '{"a": @}', '{"a": NaN}', '{"a": Infinity}', "{:}", "[" * 500])
def test_loads_lenient_refuses_hopeless_text(text: str) -> None:
    with pytest.raises(ValueError):
        loads_lenient(text)


def test_loads_lenient_prefers_the_standard_parser() -> None:
    # Valid JSON whose string holds quote-comma sequences must not be "repaired".
    text = '{"a": "x\\", \\"b\\": 1"}'
    assert loads_lenient(text) == {"a": 'x", "b": 1'}


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "x": {"type": "number"},
        "ok": {"type": "boolean"},
        "s": {"type": "string"},
        "obj": {"$ref": "#/$defs/Inner"},
        "list": {"type": "array", "items": {"type": "integer"}},
        "maybe": {"type": ["integer", "null"]},
    },
    "$defs": {"Inner": {"type": "object", "properties": {"k": {"type": "integer"}}}},
}


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ({"n": "3"}, {"n": 3}),
        ({"n": "3.0"}, {"n": 3}),
        ({"x": "2.5"}, {"x": 2.5}),
        ({"ok": "TRUE"}, {"ok": True}),
        ({"s": 12}, {"s": "12"}),
        ({"s": 1.5}, {"s": "1.5"}),
        ({"obj": '{"k": "4"}'}, {"obj": {"k": 4}}),
        ({"list": ["1", 2, "3"]}, {"list": [1, 2, 3]}),
        ({"list": "[1, 2]"}, {"list": [1, 2]}),
        ({"maybe": "null"}, {"maybe": None}),
        ({"maybe": "7"}, {"maybe": 7}),
    ],
)
def test_coerce_converts_where_the_schema_asks(value: dict[str, Any], want: dict[str, Any]) -> None:
    assert coerce(value, SCHEMA, SCHEMA) == want
    assert Checker(SCHEMA).fit(value) == (want, None)


def test_coerce_leaves_valid_and_unconvertible_values_alone() -> None:
    value = {"n": "many", "s": "text"}
    assert coerce({"s": "text"}, SCHEMA, SCHEMA) == {"s": "text"}
    fitted, problem = Checker(SCHEMA).fit(value)
    assert fitted is value
    assert problem is not None and problem.startswith("n:") and "'many' is not of type 'integer'" in problem


def test_checker_names_the_path_of_the_first_violation() -> None:
    problem = Checker(SCHEMA).problem({"obj": {"k": "x"}, "list": [1, "y"]})
    assert problem is not None and (problem.startswith("obj.k:") or problem.startswith("list[1]:"))


def test_checker_without_schema_or_with_a_broken_one_accepts() -> None:
    assert Checker(None).problem({"anything": 1}) is None
    assert Checker({"type": 12}).problem({"a": 1}) is None
