"""JSON Schema checks for tool arguments and structured answers (``jsonschema``, lazily).

``jsonschema`` is imported on first use, so a gateway that never sees a tool call or a
JSON answer never pays its import time or memory; validators are cached per distinct
schema, and remote ``$ref``s are never fetched. A schema the client got wrong (one
``check_schema`` refuses, or a ``$ref`` that cannot be resolved) is not held against the
model: the value is then accepted unchecked.

``coerce`` is the one repair that needs the schema: models write ``"3"`` for an integer,
``"true"`` for a boolean, a JSON text for a nested object, or a number for a string; each
is converted only where the schema asks for the other type.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ds2a.relay.tools.repair import loads_lenient


class Checker:
    """Validates instances against one schema; ``problem`` names the first violation or None."""

    __slots__ = ("schema", "_validator", "_ready")

    def __init__(self, schema: dict[str, Any] | None) -> None:
        self.schema = schema if isinstance(schema, dict) else None
        self._validator: Any = None
        self._ready = False

    def _get(self) -> Any:
        if not self._ready:
            self._ready = True
            if self.schema:
                self._validator = _make_validator(self.schema)
        return self._validator

    def problem(self, instance: Any) -> str | None:
        validator = self._get()
        if validator is None:
            return None
        try:
            from jsonschema.exceptions import best_match

            error = best_match(validator.iter_errors(instance))
        except Exception:  # noqa: BLE001 - an unresolvable $ref etc.: the schema's fault, not the model's
            return None
        if error is None:
            return None
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        return f"{where.lstrip('.') or 'the value'}: {error.message}"

    def fit(self, instance: Any) -> tuple[Any, str | None]:
        """``instance`` (coerced to the schema's types if that makes it valid) and the first problem left."""
        problem = self.problem(instance)
        if problem is None or not self.schema:
            return instance, problem
        coerced = coerce(instance, self.schema, self.schema)
        if coerced is not instance and self.problem(coerced) is None:
            return coerced, None
        return instance, problem


def _make_validator(schema: dict[str, Any]) -> Any:
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):
        return None
    return _validator(key)


@functools.lru_cache(maxsize=512)
def _validator(schema_text: str) -> Any:
    """One validator per distinct schema: agents send the same tools with every request."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import Draft202012Validator, validator_for
    from referencing import Registry

    schema = json.loads(schema_text)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError:
        return None
    # An explicit (empty) registry: without one, jsonschema still fetches remote $refs
    # over the network, which a client-supplied schema must never make the gateway do.
    return cls(schema, registry=Registry())


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    return set()


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/X``, ``#/definitions/X``); anything else as is."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 16:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            break
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            break
        schema = target
        seen += 1
    return schema if isinstance(schema, dict) else {}


def coerce(value: Any, schema: Any, root: dict[str, Any]) -> Any:
    """``value`` with strings/numbers converted where ``schema`` wants another type (a new object if changed)."""
    schema = _resolve(schema, root)
    types = _types(schema)
    if isinstance(value, str) and types and "string" not in types:
        converted = _from_string(value, types)
        if converted is not _NOTHING:
            return coerce(converted, schema, root)
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and types == {"string"}:
        return json.dumps(value)
    if isinstance(value, dict):
        props = schema.get("properties")
        if not isinstance(props, dict):
            return value
        changed = {k: coerce(v, props[k], root) if k in props else v for k, v in value.items()}
        return changed if any(changed[k] is not value[k] for k in value) else value
    if isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, dict):
            return value
        changed_items = [coerce(v, items, root) for v in value]
        return changed_items if any(a is not b for a, b in zip(changed_items, value)) else value
    return value


_NOTHING = object()


def _from_string(text: str, types: set[str]) -> Any:
    stripped = text.strip()
    if types & {"integer", "number"}:
        try:
            number = float(stripped)
        except ValueError:
            number = None
        if number is not None and number == number and abs(number) != float("inf"):
            if "integer" in types and number.is_integer():
                return int(number)
            if "number" in types:
                return int(number) if number.is_integer() and "." not in stripped else number
    if "boolean" in types and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if "null" in types and stripped.lower() in ("null", "none", ""):
        return None
    if types & {"object", "array"} and stripped[:1] in ("{", "["):
        try:
            parsed = loads_lenient(stripped)
        except ValueError:
            return _NOTHING
        if isinstance(parsed, dict) and "object" in types or isinstance(parsed, list) and "array" in types:
            return parsed
    return _NOTHING
