"""OpenAI's own JSON schemas (../shared/openai/openapi_subset.json) for checking replies.

The excerpt still marks some fields with the OpenAPI 3.0 keyword ``nullable: true``,
which a JSON-Schema validator ignores, so those fields would wrongly reject ``null``
(the stream chunk's ``finish_reason`` and ``logprobs``, for instance). Loading
translates each ``nullable: true`` schema into ``anyOf: [schema, {"type": "null"}]``,
which also covers ``enum`` lists that do not name null.

``validate(instance, "CreateChatCompletionStreamResponse")`` raises
``jsonschema.ValidationError``; without the reference material the calling test is
skipped, as on a fresh clone.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

SUBSET = Path(__file__).resolve().parent.parent.parent / "shared" / "openai" / "openapi_subset.json"


def translate_nullable(node: Any) -> Any:
    """A copy of ``node`` with every ``nullable: true`` turned into "or null"."""
    if isinstance(node, list):
        return [translate_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: translate_nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _document() -> dict[str, Any]:
    return translate_nullable(json.loads(SUBSET.read_text(encoding="utf-8")))


def schemas() -> dict[str, Any]:
    """The translated ``components.schemas``; skips the calling test when absent."""
    if not SUBSET.exists():
        pytest.skip(f"reference material not available: {SUBSET}")
    return _document()["components"]["schemas"]


@functools.cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    document = _document()
    if name not in document["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in {SUBSET.name}")
    # Refs have the form #/components/schemas/X, so the root must be the whole document.
    root = {**document, "$ref": f"#/components/schemas/{name}"}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(instance: Any, name: str) -> None:
    """Raise jsonschema.ValidationError unless ``instance`` matches OpenAI's schema ``name``."""
    schemas()
    _validator(name).validate(instance)
