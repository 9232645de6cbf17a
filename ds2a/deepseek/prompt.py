"""Compatibility names: the prompt builder moved to ``ds2a.relay.prompt``.

Kept so callers written before the relay core (request validation, the chat handler)
go on importing ``build_prompt``, ``render_tool_calls`` and ``render_tool_result`` from
here until they move; new code imports ``ds2a.relay.prompt``.
"""

from ds2a.relay.prompt import (
    ASSISTANT, END_OF_SENTENCE, USER, build_prompt, render_tool_calls, render_tool_result,
)

__all__ = ["ASSISTANT", "END_OF_SENTENCE", "USER", "build_prompt", "render_tool_calls", "render_tool_result"]
