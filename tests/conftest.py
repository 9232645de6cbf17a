"""Shared test fixtures.

``../shared`` (beside the checkout) holds public reference material: real upstream
captures and proof-of-work vectors. Tests that need it skip cleanly when it is
absent, as on a user's fresh clone; they never copy it into the project.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SSE_DIR = SHARED / "fixtures" / "sse"


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or a clean skip when the reference material is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference material not available: {path}")
    return path


def capture(name: str) -> bytes:
    """One upstream capture from ../shared/fixtures/sse, byte for byte."""
    return shared_path("fixtures", "sse", name).read_bytes()


def pow_vectors() -> dict[str, Any]:
    return json.loads(shared_path("fixtures", "pow_vectors.json").read_text())


def capture_names() -> list[str]:
    """All capture file names (empty when ../shared is absent; parametrized tests then skip)."""
    if not SSE_DIR.exists():
        return []
    return sorted(p.name for p in SSE_DIR.glob("*.txt"))


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Any]]:
    """Simulator + gateway stacks of a test's own (``harness.Stack`` arguments), stopped after it.

    For tests that change config or leave accounts resting; tests that can share one
    stack use a module-scoped fixture instead.
    """
    from harness import Stack  # late: the unit tests need none of the servers

    stacks: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        stacks.append(Stack(**kwargs).start())
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.stop()
