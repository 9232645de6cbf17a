"""The simulator as a model that follows ds2a's tool and JSON prompt (``ds2a.relay.prompt``).

It reads the prompt text the way a model would: the tool definitions (``### name`` /
``Parameters: {schema}``), the rules (tool choice, parallel calls, answer format and its
schema), the last user turn (the tools it names, the tool results it carries, a
corrective instruction). Then, deterministically:

- a forced choice (``required`` / a named tool), or tools named in the last user turn
  (as whole words) with ``auto``: it calls them, with arguments valid against their
  schemas (``instance``), merged with ``[[sim:args={…}]]`` when given; several named
  tools are several calls unless the rules allow one call per answer;
- tool results in the last user turn (and no forced choice): it answers in text that
  quotes each result;
- an answer format: it answers with JSON valid against the schema (for ``json_object``
  without a schema, against a schema-like JSON object found in the prompt, the way
  instructor's JSON mode puts one there; else ``{"answer": …}``);
- anything else: ``None``, the usual generated filler.

``[[sim:tool_mess=a,b]]`` makes the answer messy in the listed ways (``MESSES``), to
exercise every recogniser path end to end. On a retry (the prompt carries the
relay's corrective instruction) the sim behaves, unless ``[[sim:tool_mess_stubborn]]``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ds2a.relay import prompt as convention
from ds2a.relay.tools.markup import CALL_CLOSE, CALL_OPEN, RESULT_CLOSE, RESULT_OPEN
from ds2a.sim import directives

MESSES: dict[str, str] = {
    "ascii_bars": "markers with ASCII bars: <|tool▁call|>",
    "lookalike": "markers with the CJK look-alike 丨 and an underscore",
    "double_bars": "markers with doubled bars",
    "spaces": "markers with stray spaces inside",
    "trailing_bar": "markers with an extra trailing |",
    "native": "DeepSeek's native calls-begin / call-begin / sep / call-end markers",
    "fenced_call": "the call only inside a ``` code fence (text, not a call)",
    "think_call": "a call written in the thinking too (never executed)",
    "unescaped_quotes": "a string argument with unescaped double quotes",
    "raw_newlines": "a string argument with raw line breaks",
    "trailing_comma": "trailing commas in the arguments",
    "single_quotes": "single-quoted JSON (Python repr style)",
    "python_literals": "True/False/None instead of true/false/null",
    "xml_params": "XML-style <parameter> blocks instead of JSON",
    "unknown_tool": "a call to a tool that was not offered",
    "bad_args": "arguments that cannot be repaired",
    "text_after": "an invented tool result and more text after the calls",
    "no_call": "a text answer although a call is forced",
    "fenced_json": "the JSON answer inside a ```json fence",
    "invalid_json": "a JSON answer that breaks the schema",
}
QUOTED = 'say "hi" now'  # the value a string argument gets under unescaped_quotes
MULTILINE = "line one\nline two"  # ... and under raw_newlines
UNKNOWN_TOOL = "sim_unknown_tool"
TOKEN_SIZES = (1, 3, 2, 5, 4, 1, 2)  # how scripted text is cut into tokens: markers land split


@dataclass(frozen=True, slots=True)
class Script:
    answer: str
    reasoning: str = ""

    def answer_tokens(self) -> tuple[str, ...]:
        return tokens_of(self.answer)

    def reasoning_tokens(self) -> tuple[str, ...]:
        return tokens_of(self.reasoning)


@dataclass(frozen=True, slots=True)
class SimTool:
    name: str
    parameters: dict[str, Any]


@dataclass(slots=True)
class Reading:
    """What the sim understood from the prompt."""

    tools: list[SimTool]
    choice: str  # auto, required, tool, none
    forced_name: str | None
    parallel: bool
    json_format: bool
    json_schema: dict[str, Any] | None
    user_text: str
    results: list[tuple[dict[str, Any], str]]  # (header, content) of each result in the last user turn
    retry: bool
    prompt: str


def tokens_of(text: str) -> tuple[str, ...]:
    out: list[str] = []
    i = k = 0
    while i < len(text):
        size = TOKEN_SIZES[k % len(TOKEN_SIZES)]
        out.append(text[i : i + size])
        i += size
        k += 1
    return tuple(out)


# --- reading the prompt -------------------------------------------------------------------


def read_prompt(prompt: str) -> Reading | None:
    """The tool/JSON setup a prompt states, or None when it states none."""
    has_tools = convention.HOW_HEADING in prompt
    has_format = convention.FORMAT_HEADING in prompt
    if not has_tools and not has_format:
        return None
    first, last = _first_and_last_turn(prompt)
    tools = _tools(first) if has_tools else []
    choice, forced = _choice(first) if has_tools else ("none", None)
    results = [(_header(m.group(1)), m.group(2)) for m in _RESULT.finditer(last)]
    return Reading(
        tools=tools,
        choice=choice,
        forced_name=forced,
        parallel=convention.PARALLEL_NO not in first,
        json_format=has_format and convention.FORMAT_HEADING in first,
        json_schema=_schema(first) if has_format else None,
        user_text=_user_text(last),
        results=results,
        retry=convention.CORRECTION_LEAD in last,
        prompt=prompt,
    )


_RESULT = re.compile(re.escape(RESULT_OPEN) + r"(\{.*?\})\n(.*?)\n" + re.escape(RESULT_CLOSE), re.S)
_TOOL_HEAD = re.compile(r"^### (\S+)\n", re.M)
_TURN = re.compile(re.escape(convention.USER) + "|" + re.escape(convention.ASSISTANT))


def _first_and_last_turn(prompt: str) -> tuple[str, str]:
    if convention.USER in prompt or convention.ASSISTANT in prompt:
        first = _TURN.split(prompt, 1)[0]
        last = prompt.rsplit(convention.USER, 1)[-1] if convention.USER in prompt else ""
        return first, last
    # the plain template: System: … / User: … paragraphs
    last_user = prompt.rfind("\n\nUser: ")
    first_user = prompt.find("\n\nUser: ")
    return prompt[: first_user if first_user >= 0 else len(prompt)], prompt[last_user + 8 :] if last_user >= 0 else ""


def _tools(first: str) -> list[SimTool]:
    start = first.find(convention.TOOLS_HEADING + "\n\n" + convention.TOOLS_INTRO)
    end = first.find("\n\n" + convention.HOW_HEADING, start)
    listing = first[start:end] if start >= 0 and end >= 0 else ""
    found: list[SimTool] = []
    decoder = json.JSONDecoder()
    for head in _TOOL_HEAD.finditer(listing):
        at = listing.find("Parameters: ", head.end())
        if at < 0:
            continue
        try:
            schema, _ = decoder.raw_decode(listing, at + len("Parameters: "))
        except ValueError:
            schema = {}
        found.append(SimTool(head.group(1), schema if isinstance(schema, dict) else {}))
    return found


def _choice(first: str) -> tuple[str, str | None]:
    rules = first[first.rfind(convention.HOW_HEADING):]
    if convention.CHOICE_REQUIRED in rules:
        return "required", None
    named = re.search(re.escape(convention.CHOICE_TOOL).replace(re.escape("{name}"), "(.+?)"), rules)
    if named:
        return "tool", named.group(1)
    if convention.CHOICE_NONE in rules:
        return "none", None
    return "auto", None


def _schema(first: str) -> dict[str, Any] | None:
    lead = convention.JSON_SCHEMA_RULE.split("{label}")[0]
    at = first.rfind(lead)
    if at < 0:
        return None
    colon = first.find(": ", at)
    try:
        schema, _ = json.JSONDecoder().raw_decode(first, colon + 2)
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


def _header(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _user_text(last: str) -> str:
    text = _RESULT.sub("", last)
    cut = text.find(convention.CORRECTION_LEAD)
    if cut >= 0:
        text = text[:cut]
    for sentence in (convention.CHOICE_REQUIRED, convention.JSON_REMINDER):
        text = text.replace(sentence, "")
    text = re.sub(re.escape(convention.CHOICE_TOOL).replace(re.escape("{name}"), ".+?"), "", text)
    return directives.strip(text)


# --- deciding the answer ------------------------------------------------------------------


def script_for(prompt: str, thinking: bool) -> Script | None:
    """The scripted answer for a prompt in ds2a's tool/JSON convention, or None (filler)."""
    reading = read_prompt(prompt)
    if reading is None:
        return None
    found = directives.parse(prompt)
    messes: set[str] = set()
    if "tool_mess" in found and (not reading.retry or "tool_mess_stubborn" in found):
        messes = {m.strip() for m in found.values["tool_mess"].split(",") if m.strip()}
    extra = _extra_args(found.values.get("args", ""))
    names = _calls_wanted(reading)
    if names:
        if "no_call" in messes:
            return Script("I would rather answer without calling a tool.")
        calls = [(name, _arguments(reading, name, extra, messes)) for name in names]
        answer = render_calls(calls, messes, reading)
        reasoning = render_calls(calls[:1], set(), reading) if thinking and "think_call" in messes else ""
        return Script(answer, f"\nI will call {names[0]}: {reasoning}\n" if reasoning else "")
    if reading.results and reading.choice != "tool" and reading.choice != "required":
        return Script(_mention(reading.results))
    if reading.json_format:
        return Script(json_answer(reading, messes))
    return None


def _arguments(reading: Reading, name: str, extra: dict[str, Any], messes: set[str]) -> dict[str, Any]:
    schema = _schema_of(reading, name)
    base = instance(schema)
    return messy_arguments({**(base if isinstance(base, dict) else {}), **extra}, schema, messes)


def _calls_wanted(reading: Reading) -> list[str]:
    offered = [t.name for t in reading.tools]
    if reading.choice == "none" or not offered:
        return []
    if reading.choice == "tool" and reading.forced_name:
        return [reading.forced_name]
    named = _named_in(reading.user_text, offered)
    if reading.choice == "auto" and reading.results and named:
        named = []  # results are back: answer, do not loop on the same call
    if reading.choice == "required" and not named:
        named = offered[:1]
    return named[:1] if not reading.parallel else named


def _named_in(text: str, offered: list[str]) -> list[str]:
    spots = []
    for name in offered:
        m = re.search(r"(?<![\w.])" + re.escape(name) + r"(?![\w])", text)
        if m:
            spots.append((m.start(), name))
    return [name for _, name in sorted(spots)]


def _schema_of(reading: Reading, name: str) -> dict[str, Any]:
    for tool in reading.tools:
        if tool.name == name:
            return tool.parameters
    return {"type": "object", "properties": {}}


def _extra_args(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _mention(results: list[tuple[dict[str, Any], str]]) -> str:
    lines = []
    for header, content in results:
        name = header.get("name") or "the tool"
        shown = " ".join(content.split())
        shown = shown[:200] + ("…" if len(shown) > 200 else "")
        lines.append(f"The tool {name} returned: {shown}")
    return "\n".join(lines)


# --- writing calls, messy or not ----------------------------------------------------------

_MARKERS = {
    "ascii_bars": ("<|tool\u2581call|>", "<|/tool\u2581call|>"),
    "lookalike": ("<\u4e28tool_call\u4e28>", "<\u4e28/tool_call\u4e28>"),
    "double_bars": ("<\uff5c\uff5ctool\u2581call\uff5c\uff5c>", "<\uff5c\uff5c/tool\u2581call\uff5c\uff5c>"),
    "spaces": ("< \uff5c tool call \uff5c >", "< \uff5c /tool call \uff5c >"),
    "trailing_bar": ("<\uff5ctool\u2581call\uff5c|>", "<\uff5c/tool\u2581call\uff5c|>"),
}


def render_calls(calls: list[tuple[str, dict[str, Any]]], messes: set[str], reading: Reading) -> str:
    if "unknown_tool" in messes:
        calls = [(UNKNOWN_TOOL, args) for _, args in calls]
    if "native" in messes:
        body = "".join(
            f"<\uff5ctool\u2581call\u2581begin\uff5c>{name}<\uff5ctool\u2581sep\uff5c>{_json(args, messes)}"
            "<\uff5ctool\u2581call\u2581end\uff5c>"
            for name, args in calls
        )
        text = f"<\uff5ctool\u2581calls\u2581begin\uff5c>{body}<\uff5ctool\u2581calls\u2581end\uff5c>"
    else:
        opening, closing = CALL_OPEN, CALL_CLOSE
        for mess, pair in _MARKERS.items():
            if mess in messes:
                opening, closing = pair
        text = "".join(f"{opening}{_body(name, args, messes)}{closing}" for name, args in calls)
    if "fenced_call" in messes:
        return f"Here is how the call would look:\n```\n{text}\n```\n"
    if "text_after" in messes:
        text += (f"\n{RESULT_OPEN}{{\"name\": \"{calls[0][0]}\"}}\ninvented\n{RESULT_CLOSE}\n"
                 "So the answer is 42.")
    return text


def _body(name: str, args: dict[str, Any], messes: set[str]) -> str:
    if "xml_params" in messes:
        params = "".join(
            f"<parameter name=\"{key}\">{value if isinstance(value, str) else json.dumps(value)}</parameter>"
            for key, value in args.items()
        )
        return f"<invoke name=\"{name}\">{params}</invoke>"
    if "bad_args" in messes:
        return f"{{\"name\": \"{name}\", \"arguments\": {{\"value\": @@ }}}}"
    return _json({"name": name, "arguments": args}, messes)


def _json(value: Any, messes: set[str]) -> str:
    """JSON as a sloppy model writes it: each mess a deliberate break."""
    quote = "'" if "single_quotes" in messes else '"'
    python = "python_literals" in messes or "single_quotes" in messes
    comma = "trailing_comma" in messes

    def string(s: str) -> str:
        if "unescaped_quotes" in messes or "raw_newlines" in messes:
            return quote + s + quote  # the raw string: inner quotes and line breaks unescaped
        if quote == "'":
            return "'" + json.dumps(s, ensure_ascii=False)[1:-1].replace('\\"', '"').replace("'", "\\'") + "'"
        return json.dumps(s, ensure_ascii=False)

    def dump(v: Any) -> str:
        if isinstance(v, dict):
            items = ", ".join(f"{string(str(k))}: {dump(x)}" for k, x in v.items())
            return "{" + items + ("," if comma and items else "") + "}"
        if isinstance(v, list):
            items = ", ".join(dump(x) for x in v)
            return "[" + items + ("," if comma and items else "") + "]"
        if isinstance(v, str):
            return string(v)
        if v is True or v is False or v is None:
            return ({True: "True", False: "False", None: "None"} if python else
                    {True: "true", False: "false", None: "null"})[v]
        return json.dumps(v)

    return dump(value)


def messy_arguments(args: dict[str, Any], schema: dict[str, Any], messes: set[str]) -> dict[str, Any]:
    """The arguments a mess means to send: free-text strings get quotes or line breaks to break."""
    if "unescaped_quotes" not in messes and "raw_newlines" not in messes:
        return args
    value = QUOTED if "unescaped_quotes" in messes else MULTILINE
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    return {k: value if isinstance(v, str) and _free_text(props.get(k)) else v for k, v in args.items()}


def _free_text(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "string" and not (
        {"enum", "const", "pattern", "format", "maxLength"} & schema.keys())


# --- JSON answers -------------------------------------------------------------------------


def json_answer(reading: Reading, messes: set[str]) -> str:
    schema = reading.json_schema or _schema_in_text(reading.prompt)
    value = instance(schema) if schema else {"answer": "sim"}
    if "invalid_json" in messes:
        return _invalid_for(schema)
    text = json.dumps(value, ensure_ascii=False)
    if "fenced_json" in messes:
        return f"```json\n{text}\n```"
    return text


def _invalid_for(schema: dict[str, Any] | None) -> str:
    if schema and schema.get("required"):
        return "{}"  # a required property is missing
    if schema and schema.get("type") not in (None, "object"):
        return "{}"
    return "Sure! Here it is: {\"answer\": "  # not JSON at all


def _schema_in_text(prompt: str) -> dict[str, Any] | None:
    """The last JSON object in the prompt that looks like a JSON Schema of an object."""
    decoder = json.JSONDecoder()
    best: dict[str, Any] | None = None
    for m in re.finditer(r"\{\s*\"", prompt):
        try:
            value, _ = decoder.raw_decode(prompt, m.start())
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("properties"), dict):
            best = value
    return best


# --- minimal valid instances ----------------------------------------------------------------


def instance(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A small value valid against ``schema`` (deterministic; ``{}``-ish when the schema is odd)."""
    root = root if root is not None else schema
    schema = _deref(schema, root)
    if not isinstance(schema, dict) or depth > 12:
        return "sim"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if _deref(o, root).get("type") != "null"), options[0])
            return instance({**{k: v for k, v in schema.items() if k != key}, **_deref(chosen, root)}, root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        return instance(_merge_all(schema, root), root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "integer":
        return int(_number(schema, integer=True))
    if kind == "number":
        number = _number(schema, integer=False)
        return int(number) if float(number).is_integer() else number
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema)


def _deref(schema: Any, root: Any) -> Any:
    for _ in range(16):
        if not (isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#")):
            break
        target: Any = root
        for key in schema["$ref"].lstrip("#").strip("/").split("/"):
            if key:
                target = target.get(key) if isinstance(target, dict) else None
        schema = target
    return schema if isinstance(schema, dict) else {}


def _merge_all(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = _deref(part, root)
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
            else:
                merged.setdefault(key, value)
    return merged


def _object(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [k for k in schema.get("required", []) if isinstance(k, str)]
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key in required:
        sub = props.get(key, extra if isinstance(extra, dict) else {})
        out[key] = instance(sub, root, depth + 1)
    for key, sub in props.items():
        if len(out) >= int(schema.get("minProperties", 0)):
            break
        out.setdefault(key, instance(sub, root, depth + 1))
    return out


def _array(schema: dict[str, Any], root: Any, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
    items = schema.get("items")
    low = int(schema.get("minItems", 0))
    high = schema.get("maxItems")
    count = max(low, len(prefix), 1 if items is not False else 0)
    if isinstance(high, int):
        count = min(count, high)
    out: list[Any] = []
    for i in range(count):
        sub = prefix[i] if i < len(prefix) else items if isinstance(items, dict) else {}
        value = instance(sub, root, depth + 1)
        if schema.get("uniqueItems") and value in out:
            value = _distinct(value, i)
        out.append(value)
    return out


def _distinct(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return f"{value}{i}"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + i
    return value


def _number(schema: dict[str, Any], integer: bool) -> float:
    low = schema.get("minimum")
    if isinstance(schema.get("exclusiveMinimum"), (int, float)) and not isinstance(schema["exclusiveMinimum"], bool):
        bound = schema["exclusiveMinimum"]
        low = max(low, bound + 1) if isinstance(low, (int, float)) else bound + 1
    high = schema.get("maximum")
    if isinstance(schema.get("exclusiveMaximum"), (int, float)) and not isinstance(schema["exclusiveMaximum"], bool):
        bound = schema["exclusiveMaximum"]
        high = min(high, bound - 1) if isinstance(high, (int, float)) else bound - 1
    value: float = low if isinstance(low, (int, float)) else 1
    if isinstance(high, (int, float)) and value > high:
        value = high
    step = schema.get("multipleOf")
    if isinstance(step, (int, float)) and step > 0:
        value = math.ceil(value / step) * step
    return math.ceil(value) if integer else value


_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "sim@example.com",
    "uri": "https://example.com/sim",
    "url": "https://example.com/sim",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def _string(schema: dict[str, Any]) -> str:
    value = _FORMATS.get(str(schema.get("format", "")), "sim")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        for candidate in (value, "sim", "a", "A", "0", "sim-1", "2026-01-01", "abc123"):
            try:
                if re.search(pattern, candidate):
                    value = candidate
                    break
            except re.error:
                break
    low = int(schema.get("minLength", 0))
    if len(value) < low:
        value = value + "x" * (low - len(value))
    high = schema.get("maxLength")
    if isinstance(high, int) and len(value) > high:
        value = value[:high]
    return value
