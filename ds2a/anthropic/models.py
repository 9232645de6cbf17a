"""Claude model names mapped to the gateway's models, so Claude clients work unconfigured.

Claude Code and the Anthropic SDKs name Claude models (``claude-opus-4-8``,
``claude-sonnet-4-5-20250929``, ``claude-haiku-4-5``…) and offer no way to list or
pick others in most setups. A name resolves, in this order, to:

1. a model of the gateway's table (``deepseek-chat``, an alias…), taken as is;
2. an exact key of the Claude table;
3. the most specific glob pattern of the Claude table that matches it
   (``claude-*opus*`` before ``claude-*``).

The request's ``thinking`` then picks the thinking or the plain twin of that model
(same search switch): a client that asks for thinking gets thoughts, one that turns
thinking off gets the faster model.

Defaults: opus, the deep model, thinks (``deepseek-reasoner``); sonnet and haiku, which
clients use for quick side tasks (titles, summaries), answer directly (``deepseek-chat``),
and think when the request asks for it. ``anthropic.models`` in config adds entries or
overrides these.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from ds2a.api.errors import ApiError
from ds2a.api.models import ModelSpec, ModelTable
from ds2a.config import AnthropicConfig, ConfigError

DEFAULT_CLAUDE_MODELS: dict[str, str] = {
    "claude-*opus*": "deepseek-reasoner",
    "claude-*sonnet*": "deepseek-chat",
    "claude-*haiku*": "deepseek-chat",
    "claude-*": "deepseek-chat",
}


def _specificity(pattern: str) -> int:
    """Patterns with more literal characters are tried first."""
    return len(pattern) - pattern.count("*") - pattern.count("?")


class ClaudeModels:
    """Resolves a client's model name (Claude or the gateway's own) to a model spec."""

    def __init__(self, table: ModelTable, mapping: Mapping[str, str]) -> None:
        self.table = table
        self._exact: dict[str, ModelSpec] = {}
        patterns: list[tuple[str, ModelSpec]] = []
        for name, target in mapping.items():
            spec = table.resolve(target)  # ApiError(404) for an unknown target: from_config checks first
            if any(c in name for c in "*?["):
                patterns.append((name, spec))
            else:
                self._exact[name] = spec
        patterns.sort(key=lambda item: _specificity(item[0]), reverse=True)
        self._patterns = patterns
        self._twins = _twins(table)

    @classmethod
    def from_config(cls, config: AnthropicConfig, table: ModelTable) -> ClaudeModels:
        """The defaults merged with ``anthropic.models``; a bad entry raises ConfigError naming it."""
        mapping: dict[str, str] = {}
        for name, target in DEFAULT_CLAUDE_MODELS.items():
            # A replaced api.models table may lack the default targets: pick its own first model then.
            mapping[name] = target if _known(table, target) else _first(table, thinking="reasoner" in target)
        for name, target in config.models.items():
            if not name.strip():
                raise ConfigError("anthropic.models: empty model name")
            if not _known(table, target):
                raise ConfigError(
                    f"anthropic.models.{name}: {target!r} is not a model of the table "
                    f"(known: {', '.join(table.names)})"
                )
            mapping[name] = target
        return cls(table, mapping)

    def resolve(self, name: str, thinking: bool | None = None) -> ModelSpec:
        """The spec for ``name``; ``thinking`` True/False picks the thinking/plain twin, None keeps it."""
        spec = self._lookup(name)
        if thinking is not None and spec.thinking != thinking:
            spec = self._twins.get((spec.id, thinking), spec)
        return spec

    def _lookup(self, name: str) -> ModelSpec:
        if _known(self.table, name):
            return self.table.resolve(name)
        spec = self._exact.get(name)
        if spec is not None:
            return spec
        for pattern, spec in self._patterns:
            if fnmatchcase(name, pattern):
                return spec
        raise ApiError(
            404,
            f"model: {name!r} is not served by this gateway. Use a Claude model name (claude-…, "
            f"mapped by anthropic.models) or one of: {', '.join(self.table.names)}",
            code="model_not_found",
        )


def _known(table: ModelTable, name: str) -> bool:
    try:
        table.resolve(name)
    except ApiError:
        return False
    return True


def _specs(table: ModelTable) -> list[ModelSpec]:
    """Each model of the table once, in table order."""
    seen: dict[str, ModelSpec] = {}
    for name in table.names:
        spec = table.resolve(name)
        seen.setdefault(spec.id, spec)
    return list(seen.values())


def _first(table: ModelTable, *, thinking: bool) -> str:
    specs = _specs(table)
    for spec in specs:
        if spec.thinking == thinking and not spec.search:
            return spec.id
    return specs[0].id


def _twins(table: ModelTable) -> dict[tuple[str, bool], ModelSpec]:
    """(model id, wanted thinking) -> the first model differing only in thinking."""
    specs = _specs(table)
    twins: dict[tuple[str, bool], ModelSpec] = {}
    for spec in specs:
        for other in specs:
            same_kind = other.search == spec.search and other.model_type == spec.model_type
            if other.thinking != spec.thinking and same_kind:
                twins.setdefault((spec.id, other.thinking), other)
    return twins
