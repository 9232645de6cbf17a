"""From the text between two call markers to validated ``ToolCall``s, or reasons to refuse.

A call body is read in the first of these forms that fits (models drift between them):

1. a JSON object ``{"name": …, "arguments": {…}}`` (the form the prompt asks for); also
   ``parameters``/``args``/``input`` for ``arguments``, arguments given as a JSON *text*,
   OpenAI's ``{"type": "function", "function": {…}}`` shape, or the arguments flattened
   next to ``name``; a JSON array of such objects is several calls;
2. DeepSeek's native ``name<｜tool▁sep｜>{arguments}`` (optionally ``function<｜tool▁sep｜>name``
   and a fenced argument block);
3. XML-style ``<invoke name="x">``/``<function=x>`` with ``<parameter name="k">v</parameter>``
   or ``<parameter=k>v</parameter>`` blocks (values typed by the schema);
4. ``name {arguments}`` / ``name({arguments})``.

Code fences around the body are ignored. Arguments are repaired by
``ds2a.relay.tools.repair`` and checked against the tool's JSON Schema
(``ds2a.relay.tools.schema``); a call to an unknown tool, to a tool the tool choice
excludes, or whose arguments are not a valid object is refused with a reason the relay
can put in a corrective instruction.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Iterable
from typing import Any

from ds2a.relay.conversation import Tool, ToolCall, ToolChoice
from ds2a.relay.tools import markup
from ds2a.relay.tools.repair import loads_lenient
from ds2a.relay.tools.schema import Checker

_ALNUM = string.ascii_letters + string.digits
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})[^\n]*\n(.*?)\n?\s*\1\s*$", re.S)
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input", "params")
_NAME_KEYS = ("name", "tool", "tool_name", "function", "function_name")
_XML_NAME = re.compile(
    r"<(?:invoke|function|tool_call|tool)\s+name\s*=\s*[\"']([^\"']+)[\"']\s*/?>"
    r"|<function\s*=\s*([^>\s]+)\s*>"
    r"|<(?:tool_name|name|function_name)>\s*([^<]+?)\s*</(?:tool_name|name|function_name)>",
    re.S,
)
_XML_PARAM = re.compile(
    r"<(parameter|param|arg|argument)\s+name\s*=\s*[\"']([^\"']+)[\"']\s*>(.*?)</\1\s*>"
    r"|<(parameter|param)\s*=\s*([^>\s]+)\s*>(.*?)</\4\s*>",
    re.S,
)
_NAMED_JSON = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*\(?\s*([\[{].*?)\)?\s*$", re.S)


def new_call_id() -> str:
    """``call_`` and 24 random letters and digits, as OpenAI's ids look."""
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def canonical(value: Any) -> str:
    """Compact JSON text, non-ASCII kept as is (what arguments are passed on as)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _unfence(text: str) -> str:
    found = _FENCE.match(text)
    return found.group(2) if found else text


def read_body(body: str) -> list[tuple[str, Any]]:
    """The (name, arguments) pairs a call body holds; ``ValueError`` with a reason if none."""
    text = _unfence(body.strip())
    if not text:
        raise ValueError("the call is empty")
    pieces = _split_at_sep(text)
    if len(pieces) > 1:
        return [_native(pieces)]
    if text[0] in "{[":
        try:
            value = loads_lenient(text)
        except ValueError as exc:
            raise ValueError(f"the call is not valid JSON ({exc})") from None
        objects = value if isinstance(value, list) else [value]
        if not objects:
            raise ValueError("the call is an empty array")
        return [_from_object(obj) for obj in objects]
    if "<" in text:
        xml = _from_xml(text)
        if xml is not None:
            return [xml]
    named = _NAMED_JSON.match(text)
    if named:
        return [(named.group(1), _arguments_text(named.group(2)))]
    raise ValueError("the call is not a JSON object with \"name\" and \"arguments\"")


def _split_at_sep(text: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    i = _next_opener(text, 0)
    while i >= 0:
        status, end, kind = markup.scan_marker(text, i)
        if status == markup.MATCH and kind == markup.SEP:
            pieces.append(text[start:i])
            start = i = end
        else:
            i += 1
        i = _next_opener(text, i)
    pieces.append(text[start:])
    return pieces


def _next_opener(text: str, i: int) -> int:
    found = [p for p in (text.find("<", i), text.find("\uff1c", i)) if p >= 0]
    return min(found) if found else -1


def _native(pieces: list[str]) -> tuple[str, Any]:
    if pieces[0].strip().lower() == "function" and len(pieces) > 1:
        pieces = pieces[1:]
    if len(pieces) == 1:  # function<sep>name\n```json {…}```
        name, _, rest = pieces[0].strip().partition("\n")
        return name.strip(), _arguments_text(_unfence(rest.strip()) if rest.strip() else "{}")
    return pieces[0].strip(), _arguments_text(_unfence("".join(pieces[1:]).strip()))


def _from_object(obj: Any) -> tuple[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError("the call is not a JSON object")
    inner = obj.get("function")
    if isinstance(inner, dict):
        obj = inner
    name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
    if not name:
        raise ValueError("the call has no \"name\"")
    key = next((k for k in _ARGUMENT_KEYS if k in obj), None)
    if key is None:
        rest = {k: v for k, v in obj.items() if k not in _NAME_KEYS and k not in ("id", "type")}
        return name, rest
    args = obj[key]
    if isinstance(args, str):
        return name, _arguments_text(args)
    return name, {} if args is None else args


def _arguments_text(text: str) -> Any:
    if not text.strip():
        return {}
    try:
        return loads_lenient(text)
    except ValueError as exc:
        raise ValueError(f"the arguments are not valid JSON ({exc})") from None


def _from_xml(text: str) -> tuple[str, Any] | None:
    named = _XML_NAME.search(text)
    if not named:
        return None
    name = next(g for g in named.groups() if g)
    args: dict[str, Any] = {}
    for m in _XML_PARAM.finditer(text, named.end()):
        key = m.group(2) or m.group(5)
        value = m.group(3) if m.group(2) else m.group(6)
        if value.startswith("\n"):
            value = value[1:]
        if value.endswith("\n"):
            value = value[:-1]
        args[key.strip("\"'")] = value  # a string; the schema types it (coerce)
    return name.strip(), args


class ToolBook:
    """The tools one answer may call, and the rule for turning a parsed call into a ``ToolCall``."""

    def __init__(self, tools: Iterable[Tool], choice: ToolChoice | None = None,
                 new_id: Callable[[], str] = new_call_id) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.choice = choice or ToolChoice()
        self.new_id = new_id
        self._checkers: dict[str, Checker] = {}
        self._folded = {name.lower(): name for name in self.tools}

    def name_of(self, written: str) -> str | None:
        """The offered tool a model meant by ``written`` (exact, then without ``functions.``, then any case)."""
        written = written.strip()
        if written in self.tools:
            return written
        for prefix in ("functions.", "function.", "tools.", "tool."):
            if written.startswith(prefix) and written[len(prefix):] in self.tools:
                return written[len(prefix):]
        return self._folded.get(written.lower())

    def call(self, written_name: str, arguments: Any) -> ToolCall | str:
        """A validated call, or the reason it is refused."""
        name = self.name_of(written_name)
        if name is None:
            offered = ", ".join(self.tools) or "none"
            return f"there is no tool named {written_name!r} (offered: {offered})"
        if self.choice.mode == "none":
            return f"tool calls are not allowed in this answer (called {name!r})"
        if self.choice.mode == "tool" and self.choice.name and name != self.choice.name:
            return f"only the tool {self.choice.name!r} may be called in this answer (called {name!r})"
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return f"the arguments of {name!r} must be a JSON object"
        checker = self._checkers.get(name)
        if checker is None:
            checker = self._checkers[name] = Checker(self.tools[name].parameters)
        arguments, problem = checker.fit(arguments)
        if problem is not None:
            return f"the arguments of {name!r} do not match its parameters schema: {problem}"
        return ToolCall(id=self.new_id(), name=name, arguments=canonical(arguments))

    def calls(self, body: str) -> list[ToolCall | str]:
        """Every call a body holds, each a ``ToolCall`` or the reason it is refused."""
        try:
            parsed = read_body(body)
        except ValueError as exc:
            return [str(exc)]
        return [self.call(name, args) for name, args in parsed]
