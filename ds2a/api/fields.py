"""Checks of JSON request fields, worded as OpenAI words them: one home for both OpenAI
dialects (chat completions and Responses).

Each check raises ``ApiError(400)`` with ``param`` naming the field as a JSON path.
"""

from __future__ import annotations

from typing import Any, NoReturn

from ds2a.api.errors import ApiError


# JSON types as the checks below take them: (Python types, how a message names them).
JsonType = tuple[tuple[type, ...], str]
NUMBER: JsonType = ((int, float), "a number")
INTEGER: JsonType = ((int,), "an integer")
STRING: JsonType = ((str,), "a string")
BOOLEAN: JsonType = ((bool,), "a boolean")
OBJECT: JsonType = ((dict,), "an object")
ARRAY: JsonType = ((list,), "an array")


def fail(message: str, param: str | None, code: str) -> NoReturn:
    raise ApiError(400, message, param=param, code=code)


def kind(value: Any) -> str:
    """How a JSON value's type is named in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def is_a(value: Any, types: tuple[type, ...]) -> bool:
    # JSON booleans are Python ints; only a field declared boolean accepts them.
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def wrong_type(param: str, expected: str, value: Any) -> NoReturn:
    fail(f"Invalid type for '{param}': expected {expected}, but got {kind(value)} instead.", param, "invalid_type")


def missing(param: str) -> NoReturn:
    fail(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def require(data: dict[str, Any], key: str, typ: type, expected: str, path: str | None = None) -> Any:
    where = path or key
    if data.get(key) is None:
        missing(where)
    value = data[key]
    if not is_a(value, (typ,)):
        wrong_type(where, expected, value)
    return value


def optional(data: dict[str, Any], key: str, types: tuple[type, ...], expected: str, path: str | None = None) -> Any:
    value = data.get(key)
    if value is not None and not is_a(value, types):
        wrong_type(path or key, expected, value)
    return value
