"""Who is calling: one of the gateway's own keys, or a DeepSeek user token used directly."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ds2a.api.errors import ApiError


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

    def __call__(self, headers: dict[str, str], *, key_required: bool = False) -> Caller:
        # Anthropic clients send the key as x-api-key (ANTHROPIC_API_KEY), OpenAI ones as a bearer.
        api_key = (headers.get("x-api-key") or "").strip()
        bearer = api_key or _bearer(headers.get("authorization"))
        if self._is_key(bearer):
            return Caller()
        if self.allow_direct_tokens and not key_required:
            return Caller(direct_token=bearer)
        raise ApiError(401, "incorrect API key: not one of this gateway's keys", code="invalid_api_key")

    def _is_key(self, bearer: str) -> bool:
        candidate = bearer.encode()
        match = False
        for key in self.keys:  # no early exit: the time taken does not reveal which key is close
            match |= hmac.compare_digest(candidate, key)
        return match


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
