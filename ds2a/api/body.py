"""A request body as a JSON object, for every API dialect: valid JSON, valid Unicode.

JSON can spell text that Unicode cannot hold: a lone surrogate (``"\\ud800"``, or the
same code point smuggled as raw bytes, which Python's JSON decoder lets through).
Such a string cannot be encoded as UTF-8, so it would fail deep in the relay (after
an account, a session and a proof of work were spent on it) as a 500. Every string
of the body, keys included, is checked here instead, and the first bad one is
answered 400 with its JSON path as ``param`` (``messages[0].content``; a dialect that
spells paths ``messages.0.content``, as Anthropic's does, passes ``indexes="dots"``).
"""

from __future__ import annotations

import json
from typing import Any, Literal, NoReturn

from ds2a.api.errors import ApiError
from ds2a.api.fields import kind

IndexStyle = Literal["brackets", "dots"]


def load_json_object(body: bytes, *, indexes: IndexStyle = "brackets") -> dict[str, Any]:
    """The body as a JSON object, or ApiError(400) saying what is wrong and where."""
    if not body.strip():
        _fail("The request body is empty; expected a JSON object.", None, "invalid_json")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        _fail(
            f"The request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
            None,
            "invalid_json",
        )
    except (ValueError, RecursionError) as exc:  # bad UTF-8, NaN, huge ints, absurd nesting
        _fail(f"The request body is not valid JSON: {exc}.", None, "invalid_json")
    if not isinstance(data, dict):
        _fail(f"The request body must be a JSON object, got {kind(data)}.", None, "invalid_type")
    check_strings(data, indexes=indexes)
    return data


def check_strings(data: dict[str, Any], *, indexes: IndexStyle = "brackets") -> None:
    """ApiError(400) naming the first string (value or key) that is not valid Unicode."""
    index = "{}[{}]" if indexes == "brackets" else "{}.{}"
    # Iterative: the decoder already bounded the nesting, but a walk must not recurse again.
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key in value:
                if not _encodable(key):
                    _bad_string(path or None, f"a key of {_where(path)}")
            # Reversed onto the stack, so the first bad string in the document is the one named.
            stack.extend((f"{path}.{key}" if path else key, item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((index.format(path, i), value[i]) for i in range(len(value) - 1, -1, -1))
        elif isinstance(value, str) and not _encodable(value):
            _bad_string(path, f"'{path}'")


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(path: str) -> str:
    return f"'{path}'" if path else "the request body"


def _bad_string(param: str | None, where: str) -> NoReturn:
    _fail(
        f"Invalid string in {where}: it contains a lone UTF-16 surrogate (such as \\ud800), "
        "which is not valid Unicode.",
        param,
        "invalid_unicode",
    )


def _fail(message: str, param: str | None, code: str) -> NoReturn:
    raise ApiError(400, message, param=param, code=code)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
