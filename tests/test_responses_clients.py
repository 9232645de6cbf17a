"""Real Responses API clients against the gateway: the OpenAI Agents SDK and Codex CLI.

The Agents SDK runs with its default model provider, which speaks the Responses API.
Codex CLI (``@openai/codex`` from npm, a prebuilt native binary inside the package)
runs ``codex exec`` with a custom provider pointed at the gateway, a read-only
sandbox, no approvals, an isolated ``CODEX_HOME`` and a throwaway working folder, so
nothing it might do touches the machine (the one command a test lets the model run is an
``echo``). It needs ``node``; the package is installed
once into ``~/.cache/ds2a-clients/codex`` (or found through ``DS2A_TEST_CODEX`` or PATH),
and the test is skipped, saying why, when that is impossible.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ds2a.sim import expected
from harness import KEY, Stack
from responses_events import last_prompt

CODEX_CACHE = Path.home() / ".cache" / "ds2a-clients" / "codex"
CODEX_PACKAGE = "@openai/codex"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2) as s:
        yield s


# --- OpenAI Agents SDK ------------------------------------------------------------------------


def run_config(stack: Stack) -> Any:
    agents = pytest.importorskip("agents", reason="openai-agents is not installed (pip install -e '.[test]')")
    from agents.models.openai_provider import OpenAIProvider

    # The default provider, pointed at the gateway: it uses the Responses API unless told otherwise.
    # A client of this run's own: the provider's shared HTTP client would outlive asyncio.run's loop.
    client = openai.AsyncOpenAI(base_url=stack.api_base, api_key=KEY, max_retries=0)
    provider = OpenAIProvider(openai_client=client)
    return agents.RunConfig(model_provider=provider, tracing_disabled=True)


def test_agents_sdk_default_model_answers(stack: Stack) -> None:
    from agents import Agent, Runner

    agent = Agent(name="helper", instructions="Answer briefly.", model="deepseek-chat")
    result = asyncio.run(Runner.run(agent, "Hello agent", run_config=run_config(stack)))
    prompt = last_prompt(stack)
    assert prompt.startswith("Answer briefly.") and prompt.endswith("Hello agent")
    assert result.final_output == expected(prompt, False, False, stack.sim_config).answer
    assert result.raw_responses[0].response_id.startswith("resp_")


def test_agents_sdk_streams(stack: Stack) -> None:
    from agents import Agent, Runner

    async def run() -> tuple[str, list[str]]:
        agent = Agent(name="streamer", model="deepseek-reasoner")
        streamed = Runner.run_streamed(agent, "Stream through the agent", run_config=run_config(stack))
        kinds = [event.type async for event in streamed.stream_events()]
        return str(streamed.final_output), kinds

    final, kinds = asyncio.run(run())
    assert final == expected("Stream through the agent", True, False, stack.sim_config).answer
    assert "raw_response_event" in kinds


def test_agents_sdk_runs_a_function_tool_to_a_final_answer(stack: Stack) -> None:
    from agents import Agent, Runner, function_tool

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"sunny, 21 C in {city}"

    agent = Agent(name="weather", instructions="Use your tools.", model="deepseek-chat", tools=[get_weather])
    result = asyncio.run(
        Runner.run(agent, "Use get_weather to tell me the weather in Paris.", run_config=run_config(stack))
    )
    assert calls, "the agent never called the tool"
    assert "sunny, 21 C" in last_prompt(stack)  # the tool's output went back to the model
    assert isinstance(result.final_output, str) and result.final_output
    kinds = [type(item).__name__ for item in result.new_items]
    assert kinds.index("ToolCallItem") < kinds.index("ToolCallOutputItem") < kinds.index("MessageOutputItem")


# --- Codex CLI ----------------------------------------------------------------------------------


def codex_binary() -> Path:
    """The codex executable: DS2A_TEST_CODEX, PATH, the cache, or installed into the cache from npm."""
    configured = os.environ.get("DS2A_TEST_CODEX")
    if configured:
        return Path(configured)
    if shutil.which("node") is None:
        pytest.skip("Codex CLI needs node, which is not installed")
    cached = CODEX_CACHE / "node_modules" / ".bin" / "codex"
    if cached.exists():
        return cached
    on_path = shutil.which("codex")
    if on_path:
        return Path(on_path)
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("Codex CLI is not installed and npm is not available to install it")
    CODEX_CACHE.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CODEX_CACHE), CODEX_PACKAGE],
            capture_output=True, text=True, timeout=600,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {CODEX_PACKAGE} did not finish within 10 minutes")
    if done.returncode != 0 or not cached.exists():
        pytest.skip(f"npm install {CODEX_PACKAGE} failed: {(done.stderr or done.stdout)[-500:]}")
    return cached


def codex_exec(stack: Stack, tmp_path: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    binary = codex_binary()
    home = tmp_path / "codex-home"  # no user config, no credentials, no history
    work = tmp_path / "work"  # the only folder it could read, and it cannot write even there
    home.mkdir()
    work.mkdir()
    provider = (
        '{ name = "ds2a", base_url = "%s", env_key = "CODEX_GATEWAY_KEY", wire_api = "responses" }' % stack.api_base
    )
    env = {**os.environ, "CODEX_HOME": str(home), "CODEX_GATEWAY_KEY": KEY}
    command = [
        str(binary), "exec",
        "--skip-git-repo-check", "--ephemeral", "--sandbox", "read-only", "--color", "never", "--json",
        "-C", str(work),
        "-c", "model_provider=ds2a",
        "-c", f"model_providers.ds2a={provider}",
        "-c", "model=deepseek-chat",
        "-c", "approval_policy=never",
        prompt,
    ]
    return subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


def test_codex_cli_completes_a_prompt(stack: Stack, tmp_path: Path) -> None:
    done = codex_exec(stack, tmp_path, "Say hello to the gateway.")
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    messages = [e["item"]["text"] for e in events
                if e.get("type") == "item.completed" and e.get("item", {}).get("type") == "agent_message"]
    prompt = last_prompt(stack)
    assert prompt.endswith("Say hello to the gateway.")  # Codex's instructions and context come first
    assert messages == [expected(prompt, False, False, stack.sim_config).answer]
    assert any(e.get("type") == "turn.completed" for e in events)


def test_codex_cli_runs_a_tool_through_the_responses_api(stack: Stack, tmp_path: Path) -> None:
    """A whole tool loop: the model calls exec_command, Codex runs it (``echo``, in the read-only
    sandbox and the throwaway folder), sends the output back, the model answers with it."""
    prompt = 'Use exec_command to print a greeting. [[sim:args={"cmd": "echo hi-from-codex"}]]'
    done = codex_exec(stack, tmp_path, prompt)
    assert done.returncode == 0, done.stderr[-3000:]
    items = [e["item"] for e in map(json.loads, filter(lambda line: line.startswith("{"), done.stdout.splitlines()))
             if e.get("type") == "item.completed"]
    commands = [i for i in items if i["type"] == "command_execution"]
    assert commands and "echo hi-from-codex" in commands[0]["command"]
    answer = [i["text"] for i in items if i["type"] == "agent_message"]
    assert answer and "exec_command" in answer[-1]  # the model read the tool's result (the sim quotes it)
    assert "exec_command" in last_prompt(stack)
