"""What a model name means upstream: the web chat's switches, and how the model is listed.

The web service has one model family with two switches (thinking, search) and a
``model_type`` (protocol doc §12); each dialect's model table resolves its names to one
of these. It lives with the relay because the relay is what reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

# A fixed timestamp (2025-01-20, the DeepSeek-R1 release) rather than start-up time, so
# model lists answer the same bytes across restarts and clients can cache them.
CREATED = 1737331200


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    thinking: bool
    search: bool
    model_type: str
    owned_by: str = "deepseek"
    created: int = CREATED
