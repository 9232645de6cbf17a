"""JSON as UTF-8 bytes for the dialects' encoders, on the hot path.

Text is escaped by the json module's C string encoder and stays UTF-8 (no ``\\uXXXX``
for non-ASCII, a third of the size for Chinese). A lone surrogate cannot be UTF-8: such
text falls back to the ASCII encoder, which writes it as a ``\\u`` escape.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring, encode_basestring_ascii  # C implementations
from typing import Any


def quote(text: str) -> bytes:
    """``text`` as a JSON string literal, quotes included."""
    try:
        return encode_basestring(text).encode()
    except UnicodeEncodeError:
        return encode_basestring_ascii(text).encode()


def dumps(obj: Any) -> bytes:
    """``obj`` as compact JSON."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()
