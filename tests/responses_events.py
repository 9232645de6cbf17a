"""Helpers the Responses tests share: checking output against OpenAI's schemas, and more.

``parse_sse`` splits a stream body into its events; ``check_events`` validates each
against the schema of its own type (a precise error beats the union's "matched none
of 58") and checks what the schemas cannot: the ``event:`` name equals the data's
``type``, sequence numbers count up from 0, and the stream opens and closes as the
API's event sequence does. ``last_prompt`` is what the simulator was last asked.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from openai_schema import schemas, validate

if TYPE_CHECKING:
    from harness import Stack

TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


@functools.cache
def _schema_by_type() -> dict[str, str]:
    found = schemas()
    names = [ref["$ref"].rsplit("/", 1)[1] for ref in found["ResponseStreamEvent"]["anyOf"]]
    return {found[name]["properties"]["type"]["enum"][0]: name for name in names}


def parse_sse(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) per server-sent event of a stream body."""
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
        assert name is not None and data is not None, f"malformed event block: {block!r}"
        events.append((name, data))
    return events


def check_event(event: dict[str, Any]) -> None:
    """One event against the schema of its type."""
    kind = event["type"]
    assert kind in _schema_by_type(), f"{kind!r} is not a Responses stream event"
    validate(event, _schema_by_type()[kind])


def check_events(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every event valid and in a valid order; returns the data in order."""
    data = []
    for n, (name, event) in enumerate(events):
        assert name == event["type"], (name, event["type"])
        assert event["sequence_number"] == n, f"event {n} has sequence_number {event['sequence_number']}"
        check_event(event)
        data.append(event)
    kinds = [e["type"] for e in data]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds[:2]
    assert kinds[-1] in TERMINAL, kinds[-1]
    assert sum(k in TERMINAL for k in kinds) == 1, kinds
    check_item_order(data)
    return data


def check_item_order(events: list[dict[str, Any]]) -> None:
    """Each output item is added once, then only its own events, then done once, in index order."""
    open_items: dict[int, str] = {}
    done: set[int] = set()
    next_index = 0
    for event in events:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert event["output_index"] == next_index, (event["output_index"], next_index)
            open_items[event["output_index"]] = event["item"].get("id", "")
            next_index += 1
        elif kind == "response.output_item.done":
            index = event["output_index"]
            assert index in open_items and index not in done, index
            assert event["item"].get("id", "") == open_items[index]
            done.add(index)
        elif "output_index" in event:
            index = event["output_index"]
            assert index in open_items and index not in done, (kind, index)
            assert event["item_id"] == open_items[index], kind
    assert done == set(open_items), "an output item was never done"


def check_response(body: dict[str, Any]) -> None:
    validate(body, "Response")


def last_prompt(stack: Stack) -> str:
    """The prompt of the newest completion the simulator received."""
    prompts = [r.prompt for r in stack.call(lambda: list(stack.sim.requests)) if r.prompt is not None]
    return prompts[-1]
