"""Tool calling and structured output over a text-only upstream (all sans-I/O).

- ``markup``: the call/result marker spellings and a tolerant marker reader;
- ``recognizer``: ``ToolCallRecognizer`` (answer text → text + ``ToolCall``s),
  ``ReasoningFilter`` / ``strip_calls`` (call markup out of thinking text);
- ``calls``: call bodies → validated calls (``ToolBook``), call ids, canonical JSON;
- ``repair``: ``loads_lenient``, JSON as models break it;
- ``schema``: JSON Schema checks (``jsonschema``, imported on first use) and type coercion;
- ``structured``: JSON answers (``parse_json_answer``, ``JsonFenceStripper``).
"""

from ds2a.relay.tools.calls import ToolBook, canonical, new_call_id
from ds2a.relay.tools.recognizer import ReasoningFilter, ToolCallRecognizer, strip_calls
from ds2a.relay.tools.repair import loads_lenient

__all__ = [
    "ReasoningFilter", "ToolBook", "ToolCallRecognizer", "canonical", "loads_lenient", "new_call_id", "strip_calls",
]
