"""Cline's CLI (npm ``cline`` 3.x, headless ``cline --json``) against the gateway and simulator.

Runs where ``node`` and ``npm`` are installed: the package (a small Node wrapper around a
prebuilt Bun binary) is installed once into ``~/.cache/ds2a-clients/cline`` and reused.
Cline is set up as a user would: ``cline auth --provider openai-compatible`` with the
gateway's ``/v1``, the test key and ``deepseek-chat``, then a one-shot prompt. Everything
it keeps lives in a scratch ``HOME`` and ``--data-dir`` (which also keeps it from starting
its background hub daemon), it works in a throwaway folder, and it runs in plan mode
(no ``editor`` tool) with ``--auto-approve false`` and no terminal: every tool call the
model makes is refused and the refusal goes back to the model, so nothing is executed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ds2a.api import chat
from ds2a.sim import expected
from harness import KEY, Stack
from responses_events import last_prompt

CACHE = Path.home() / ".cache" / "ds2a-clients" / "cline"
PACKAGE = "cline@3"


def cline_cli() -> Path:
    """The ``cline`` executable, installed into the cache on first use (or a clean skip)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: Cline's CLI cannot run here")
    cli = CACHE / "node_modules" / ".bin" / "cline"
    if cli.exists():
        return cli
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
            capture_output=True, text=True, timeout=600,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {PACKAGE} did not finish within 10 minutes")
    if done.returncode != 0 or not cli.exists():
        pytest.skip(f"could not install {PACKAGE} from the npm registry: {(done.stderr or done.stdout)[-500:]}")
    return cli


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2) as s:
        yield s


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every /v1/chat/completions body Cline sent, as JSON."""
    bodies: list[dict[str, Any]] = []
    original = chat.parse_chat_request

    def recording(body: bytes, *args: Any, **kwargs: Any) -> Any:
        bodies.append(json.loads(body))
        return original(body, *args, **kwargs)

    monkeypatch.setattr(chat, "parse_chat_request", recording)
    return bodies


def run_cline(stack: Stack, tmp_path: Path, prompt: str) -> list[dict[str, Any]]:
    """Configure Cline for the gateway, run one prompt headless, and return its NDJSON events."""
    cli = cline_cli()
    home, data, work = tmp_path / "home", tmp_path / "cline-data", tmp_path / "work"
    for folder in (home, data, work):
        folder.mkdir()
    (work / "notes.txt").write_text("ds2a\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "CLINE_"))}
    env.update(HOME=str(home), CLINE_LOG_ENABLED="0")
    isolated = ["--data-dir", str(data)]

    def cline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(cli), *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)

    auth = cline("auth", "--provider", "openai-compatible", "--baseurl", stack.api_base, "--apikey", KEY,
                 "--modelid", "deepseek-chat", *isolated)
    assert auth.returncode == 0, f"cline auth exited {auth.returncode}: {auth.stdout[-2000:]} {auth.stderr[-2000:]}"
    done = cline("--json", "--plan", "--auto-approve", "false", "--cwd", str(work), *isolated, prompt)
    assert done.returncode == 0, f"cline exited {done.returncode}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def run_result(events: list[dict[str, Any]]) -> dict[str, Any]:
    results = [e for e in events if e.get("type") == "run_result"]
    assert len(results) == 1, events[-5:]
    return results[0]


def test_cline_completes_a_prompt(stack: Stack, tmp_path: Path, seen: list[dict[str, Any]]) -> None:
    before = stack.counters()["completions"]
    result = run_result(run_cline(stack, tmp_path, "Say hello in one word."))
    assert result_is_completed(result)
    assert result["model"] == {"id": "deepseek-chat", "provider": "openai-compatible"}
    assert stack.counters()["completions"] == before + 1
    # The answer is the simulator's, for the prompt the gateway built from Cline's request.
    assert result["text"] == expected(last_prompt(stack), False, False, stack.sim_config).answer
    assert result["usage"]["outputTokens"] > 0
    [body] = seen
    assert body["model"] == "deepseek-chat" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["tool_choice"] == "auto"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "Say hello in one word."
    # Native OpenAI tool calling, not Cline's older XML-in-text convention; plan mode offers no editor.
    offered = {t["function"]["name"] for t in body["tools"] if t["type"] == "function"}
    assert {"read_files", "search_codebase", "run_commands"} <= offered and "editor" not in offered
    assert "<tool_use>" not in body["messages"][0]["content"]


def result_is_completed(result: dict[str, Any]) -> bool:
    return result["finishReason"] == "completed"


def test_cline_tool_call_is_refused_and_the_refusal_reaches_the_model(
    stack: Stack, tmp_path: Path, seen: list[dict[str, Any]]
) -> None:
    """The simulator calls read_files; Cline, with approval required and no terminal, refuses
    it and sends the refusal back as the tool's result; the model answers from that."""
    result = run_result(run_cline(stack, tmp_path, "Use read_files to read notes.txt."))
    assert result_is_completed(result)
    assert len(seen) == 2, [b["messages"][1:] for b in seen]
    follow_up = seen[1]["messages"]
    call = next(m for m in follow_up if m["role"] == "assistant")
    [tool_call] = call["tool_calls"]
    assert tool_call["type"] == "function" and tool_call["function"]["name"] == "read_files"
    json.loads(tool_call["function"]["arguments"])
    reply = next(m for m in follow_up if m["role"] == "tool")
    assert reply["tool_call_id"] == tool_call["id"] and "requires approval" in reply["content"]
    assert "The tool read_files returned" in result["text"]  # the simulator quotes the result it read
