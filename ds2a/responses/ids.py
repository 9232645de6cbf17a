"""Object ids in OpenAI's style: a type prefix and random hex (``resp_…``, ``msg_…``)."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    # 24 random bytes: as long as OpenAI's ids, and unguessable, since a response id is
    # all a caller needs to read a stored response.
    return f"{prefix}_{secrets.token_hex(24)}"
