"""The model table: OpenAI model names mapped to the web chat's switches.

The web service has one model family with two switches (thinking, search) and a
``model_type`` (protocol doc §12), so a "model" here is only a name for a pair of
booleans. The default names follow the ones clients already know from DeepSeek's
own API; ``api.models`` in config replaces the table entirely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ds2a.api.errors import ApiError
from ds2a.config import ApiConfig, ConfigError, DeepSeekConfig
from ds2a.relay.spec import ModelSpec

# Canonical name -> alias. Flags come from the name: "reasoner" thinks, "-search" searches.
DEFAULT_NAMES: tuple[tuple[str, str], ...] = (
    ("deepseek-chat", "deepseek-v3"),
    ("deepseek-reasoner", "deepseek-r1"),
    ("deepseek-chat-search", "deepseek-v3-search"),
    ("deepseek-reasoner-search", "deepseek-r1-search"),
)


def _model_object(model_id: str, spec: ModelSpec) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": spec.created, "owned_by": spec.owned_by}


class ModelTable:
    """Resolves client model names (canonical ids and aliases) to specs."""

    def __init__(self, specs: Iterable[ModelSpec], aliases: Mapping[str, str] | None = None) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.id in self._specs:
                raise ValueError(f"duplicate model id {spec.id!r}")
            self._specs[spec.id] = spec
        # name -> spec for every accepted name; canonical ids first so listing order is stable.
        self._names: dict[str, ModelSpec] = dict(self._specs)
        for alias, target in (aliases or {}).items():
            if alias in self._names:
                raise ValueError(f"alias {alias!r} clashes with another model name")
            if target not in self._specs:
                raise ValueError(f"alias {alias!r} points to unknown model {target!r}")
            self._names[alias] = self._specs[target]

    @classmethod
    def default(cls, model_type: str = "default") -> ModelTable:
        specs = []
        aliases = {}
        for name, alias in DEFAULT_NAMES:
            specs.append(
                ModelSpec(name, thinking="reasoner" in name, search=name.endswith("-search"), model_type=model_type)
            )
            aliases[alias] = name
        return cls(specs, aliases)

    @classmethod
    def from_config(cls, api: ApiConfig, deepseek: DeepSeekConfig) -> ModelTable:
        """The table for this config; bad ``api.models`` entries raise ConfigError naming the field."""
        if not api.models:
            return cls.default(deepseek.model_type)
        specs: list[ModelSpec] = []
        aliases: dict[str, str] = {}
        for i, entry in enumerate(api.models):
            spec, entry_aliases = _spec_from_config(f"api.models[{i}]", entry, deepseek.model_type)
            specs.append(spec)
            for alias in entry_aliases:
                if alias in aliases:
                    raise ConfigError(f"api.models[{i}].aliases: {alias!r} is already an alias of {aliases[alias]!r}")
                aliases[alias] = spec.id
        try:
            return cls(specs, aliases)
        except ValueError as exc:
            raise ConfigError(f"api.models: {exc}") from None

    @property
    def names(self) -> list[str]:
        """Every accepted name, canonical ids first, then aliases."""
        return list(self._names)

    def resolve(self, name: str) -> ModelSpec:
        spec = self._names.get(name)
        if spec is None:
            raise ApiError(
                404,
                f"The model {name!r} does not exist. Available models: {', '.join(self._names)}",
                param="model",
                code="model_not_found",
            )
        return spec

    def list_body(self) -> dict[str, Any]:
        # Aliases are listed as models of their own because clients offer only listed names.
        return {"object": "list", "data": [_model_object(name, spec) for name, spec in self._names.items()]}

    def model_body(self, model_id: str) -> dict[str, Any]:
        return _model_object(model_id, self.resolve(model_id))


def _spec_from_config(where: str, entry: Any, default_type: str) -> tuple[ModelSpec, list[str]]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object with id, thinking, search")
    known = {"id", "thinking", "search", "model_type", "aliases", "owned_by"}
    unknown = sorted(k for k in entry if k not in known and not k.startswith(("_", "//")))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        raise ConfigError(f"{where}.id: expected a non-empty string")
    flags = {}
    for key in ("thinking", "search"):
        value = entry.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
        flags[key] = value
    model_type = entry.get("model_type", default_type)
    owned_by = entry.get("owned_by", "deepseek")
    for key, value in (("model_type", model_type), ("owned_by", owned_by)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise ConfigError(f"{where}.aliases: expected a list of non-empty strings")
    spec = ModelSpec(
        model_id, thinking=flags["thinking"], search=flags["search"], model_type=model_type, owned_by=owned_by
    )
    return spec, aliases
