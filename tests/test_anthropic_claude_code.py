"""Claude Code (``@anthropic-ai/claude-code``, headless ``claude -p``) against the gateway and simulator.

Runs where ``node`` and ``npm`` are installed: the CLI is installed once from the npm
registry into a cache outside the repository (``$DS2A_TEST_NPM_CACHE``, default
``~/.cache/ds2a/npm``) and reused. Claude Code gets only ``ANTHROPIC_BASE_URL`` and
``ANTHROPIC_API_KEY`` (as a user would set them), a scratch ``HOME`` and working
directory, and no tool that could touch the machine: shell, edits, writes and web
access are disallowed, and anything else not allowed is refused (``dontAsk``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ds2a.anthropic import handler
from ds2a.anthropic.parse import MessagesRequest
from harness import KEY, Stack
from test_anthropic_e2e import simulator_calls_tools

PACKAGE = "@anthropic-ai/claude-code@2"
MACHINE_TOOLS = "Bash Edit Write MultiEdit NotebookEdit WebFetch WebSearch KillShell BashOutput"
CACHE = Path(os.environ.get("DS2A_TEST_NPM_CACHE", Path.home() / ".cache" / "ds2a" / "npm"))


def claude_cli() -> Path:
    """The ``claude`` executable, installed into the cache on first use (or a clean skip)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: Claude Code cannot run here")
    prefix = CACHE / "claude-code"
    cli = prefix / "node_modules" / ".bin" / "claude"
    if not cli.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0 or not cli.exists():
            pytest.skip(f"could not install {PACKAGE} from the npm registry: {done.stderr.strip()[-500:]}")
    return cli


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2) as s:
        yield s


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[MessagesRequest]:
    """Every /v1/messages request as the gateway parsed it."""
    parsed: list[MessagesRequest] = []
    original = handler.parse_messages_request

    def recording(*args: Any, **kwargs: Any) -> MessagesRequest:
        parsed.append(original(*args, **kwargs))
        return parsed[-1]

    monkeypatch.setattr(handler, "parse_messages_request", recording)
    return parsed


def run_claude(stack: Stack, tmp_path: Path, prompt: str, *flags: str) -> dict[str, Any]:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "notes.txt").write_text("ds2a\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=stack.base_url,
        ANTHROPIC_API_KEY=KEY,
        # Quiet and quick: no update checks or telemetry, and a failure is not retried for minutes.
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_MAX_RETRIES="1",
    )
    command = [
        str(claude_cli()),
        "-p",
        prompt,
        "--output-format",
        "json",
        "--no-session-persistence",
        "--permission-mode",
        "dontAsk",
        *flags,
    ]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"claude exited {done.returncode}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    result = json.loads(done.stdout)
    assert result["type"] == "result" and not result["is_error"], result
    return result


def test_claude_code_completes_a_prompt(stack: Stack, tmp_path: Path, seen: list[MessagesRequest]) -> None:
    result = run_claude(stack, tmp_path, "Say hello in one word.", "--tools", "")
    assert result["result"] and result["usage"]["output_tokens"] > 0
    main = [r for r in seen if r.stream]
    assert main, "Claude Code's answer did not come through /v1/messages"
    assert all(r.model.startswith("claude-") for r in seen)
    assert main[0].spec.thinking and main[0].show_thinking  # its default model, thinking adaptive


def test_claude_code_with_its_tools_runs_a_read_only_tool(
    stack: Stack, tmp_path: Path, seen: list[MessagesRequest]
) -> None:
    if importlib.util.find_spec("ds2a.relay.toolstage") is None or not simulator_calls_tools(stack):
        pytest.skip("tool calling has not landed yet (the relay's tool stage, the simulator's calls)")
    result = run_claude(
        stack, tmp_path, "Use the Glob tool to list the files here.", "--disallowedTools", MACHINE_TOOLS
    )
    assert result["result"]
    offered = {t.name for r in seen for t in r.conversation.tools}
    assert {"Glob", "Read"} <= offered and not offered & set(MACHINE_TOOLS.split())
    # The simulator called the tool it was asked for; Claude Code ran it and sent the result back.
    assert any(m.role == "tool" for r in seen for m in r.conversation.messages)
