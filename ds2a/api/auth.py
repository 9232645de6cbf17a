"""Who is calling: one of the gateway's own keys, or a DeepSeek user token used directly.

A bearer shaped like a gateway key (the configured keys' common prefix such as
``sk-ds2a-``, or ``sk-``, which is also how DeepSeek's paid API keys look) but matching
none is a mistyped key, not a user token: it is refused here with 401 rather than sent
to DeepSeek, whose refusal would blame the upstream for a typo.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ds2a.api.errors import ApiError

KEY_PREFIX = "sk-"
_MIN_PREFIX = 4  # shorter configured prefixes could match a user token by chance


@dataclass(frozen=True, slots=True)
class Caller:
    direct_token: str | None = None  # None: a gateway key, served from the account pool

    @property
    def has_key(self) -> bool:
        return self.direct_token is None


class Authenticator:
    def __init__(self, keys: list[str], *, allow_direct_tokens: bool) -> None:
        self.keys = [k.encode() for k in keys]
        self.allow_direct_tokens = allow_direct_tokens
        self.key_prefixes = key_prefixes(keys)

    def __call__(self, headers: dict[str, str], *, key_required: bool = False) -> Caller:
        # Anthropic clients send the key as x-api-key (ANTHROPIC_API_KEY), OpenAI ones as a bearer.
        api_key = (headers.get("x-api-key") or "").strip()
        bearer = api_key or _bearer(headers.get("authorization"))
        if self._is_key(bearer):
            return Caller()
        if self.looks_like_key(bearer):
            raise ApiError(
                401,
                "incorrect API key: it has the shape of a gateway key but is not one of this gateway's keys "
                "(a DeepSeek platform API key is not a web user token either)",
                code="invalid_api_key",
            )
        if self.allow_direct_tokens and not key_required:
            return Caller(direct_token=bearer)
        raise ApiError(401, "incorrect API key: not one of this gateway's keys", code="invalid_api_key")

    def looks_like_key(self, bearer: str) -> bool:
        return bearer.startswith(self.key_prefixes)

    def _is_key(self, bearer: str) -> bool:
        candidate = bearer.encode()
        match = False
        for key in self.keys:  # no early exit: the time taken does not reveal which key is close
            match |= hmac.compare_digest(candidate, key)
        return match


def key_prefixes(keys: Sequence[str]) -> tuple[str, ...]:
    """``sk-`` and the configured keys' common prefix up to its last separator ("sk-ds2a-")."""
    prefixes = [KEY_PREFIX]
    if keys:
        common = os.path.commonprefix(list(keys))
        cut = max(common.rfind("-"), common.rfind("_"))
        if cut + 1 >= _MIN_PREFIX:
            prefixes.append(common[: cut + 1])
    return tuple(prefixes)


def _bearer(value: str | None) -> str:
    if not value:
        raise ApiError(
            401,
            "no API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>') with one of this gateway's keys "
            "(or your own DeepSeek user token)",
            code="missing_api_key",
        )
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise ApiError(401, "the Authorization header must be 'Bearer <key>'", code="invalid_api_key")
    return credential
