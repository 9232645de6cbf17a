"""No input produces a 500: every field of a valid request of every route, replaced by every
JSON type in turn, is answered with a 2xx or a 4xx in the route's own error shape.

Mutations are made from valid requests (tools, tool results, history, formats), one field
at a time, so each reaches the parser past the fields before it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from harness import Stack, http

REPLACEMENTS: list[Any] = [None, 0, -1, 1.5, 10**30, -1e308, "", "x", True, [], {}, [{}], {"type": "bogus"}, "\ud800"]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "deepseek-chat",
        "max_tokens": 5,
        "stop": ["zz"],
        "tools": [TOOL],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "call f"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
        ],
    },
    "/v1/messages": {
        "model": "claude-sonnet-4-5",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "s"}],
        "stop_sequences": ["zz"],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}],
        "tool_choice": {"type": "auto"},
        "messages": [
            {"role": "user", "content": "call f"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}, {"type": "text", "text": "go"}]},
        ],
    },
    "/v1/responses": {
        "model": "deepseek-chat",
        "instructions": "s",
        "max_output_tokens": 16,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}],
        "tool_choice": "auto",
        "text": {"format": {"type": "json_object"}},
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "call f"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
        ],
    },
}
HEADERS = {"/v1/messages": {"anthropic-version": "2023-06-01"}}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document, containers included, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*prefix, i)
            yield from paths(item, (*prefix, i))


def replaced(doc: Any, where: tuple[Any, ...], new: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    target = doc
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = new
    return doc


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2, config={"api": {"max_answer_chars": 200}}) as s:
        yield s


@pytest.mark.parametrize("route", sorted(VALID))
def test_no_mutation_of_a_valid_request_is_a_500(stack: Stack, route: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    valid = VALID[route]
    status, _, body = http(stack, "POST", route, valid, HEADERS.get(route))
    assert status == 200, body
    seen = 0
    for where in paths(valid):
        for new in REPLACEMENTS:
            payload = json.dumps(replaced(valid, where, new)).encode()
            status, headers, body = http(stack, "POST", route, payload, HEADERS.get(route))
            seen += 1
            assert status < 500 or status in (502, 503, 529), (route, where, new, status, body)
            assert headers.get("content-type", "").startswith(("application/json", "text/event-stream")), (where, new)
            if status >= 400:
                error = json.loads(body)
                if route == "/v1/messages":
                    assert error["type"] == "error" and error["error"]["type"], (where, new, error)
                else:
                    assert error["error"]["message"], (where, new, error)
    assert seen > 100
    stack.wait_idle()
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks][:5]


ODD_REQUESTS = [
    ("GET", "/v1/responses/resp_nope", None, {}),
    ("GET", "/v1/responses/resp_nope/input_items?limit=abc&order=sideways&after=%00", None, {}),
    ("GET", "/v1/responses/%ff%fe/input_items?limit=-5", None, {}),
    ("DELETE", "/v1/responses/" + "x" * 5000, None, {}),
    ("GET", "/v1/models?limit=-1&after_id=%ff", None, {"anthropic-version": "2023-06-01"}),
    ("GET", "/v1/models?limit=abc&before_id=zzz", None, {"anthropic-version": "2023-06-01"}),
    ("GET", "/v1/models/%2F..%2F", None, {"anthropic-version": "2023-06-01"}),
    ("POST", "/v1/messages/count_tokens", b"[]", {"anthropic-version": "2023-06-01"}),
    ("POST", "/v1/messages?beta=%ff%fe", b"{}", {"anthropic-version": "2023-06-01"}),
    ("POST", "/admin/reload", b"\x00\xff", {}),
    ("GET", "/metrics?name[]=x", None, {}),
    ("POST", "/v1/responses", b'{"model": "deepseek-chat", "input": "x", "previous_response_id": 5}', {}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), ODD_REQUESTS)
def test_odd_paths_and_queries_are_never_a_500(
    stack: Stack, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> None:
    status, response_headers, payload = http(stack, method, path, body, headers)
    assert status < 500, (method, path, status, payload)
    assert response_headers.get("content-type", "").startswith(("application/json", "text/plain")), payload
