"""Issue 8, a newcomer's first hour: start-up messages, the container, the README's
commands, and thousands of accounts logging in at once. Processes are real (``python
-m ds2a`` as a user runs it) and their output is read, as in test_cli.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from harness import Stack
from test_cli import clean_env, free_port, run_once, spawn  # noqa: F401  (spawn is a fixture)

# -- start-up messages ----------------------------------------------------------------------


def test_port_already_in_use_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {"keys": ["sk-k"], "accounts": [{"token": "t"}], "deepseek": {"base_url": "http://127.0.0.1:9"}}
        (tmp_path / "config.json").write_text(json.dumps(config))
        result = run_once(["--port", str(port)], tmp_path, clean_env())
    assert result.returncode == 1, result
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if "ds2a:" in line and "listen" in line]) == 1


def test_a_mistyped_environment_variable_stops_start_up(tmp_path: Path) -> None:
    result = run_once([], tmp_path, clean_env(DS2A_SERVER_PROT="6000"))
    assert result.returncode == 2
    assert "DS2A_SERVER_PROT" in result.stderr and "did you mean DS2A_SERVER_PORT?" in result.stderr
    assert "Traceback" not in result.stderr


def test_start_up_warns_about_accounts_nobody_can_use_and_counts_in_english(spawn: Any, tmp_path: Path) -> None:
    config = {"keys": [], "accounts": [{"token": "t"}], "deepseek": {"base_url": "http://127.0.0.1:9"}}
    path = tmp_path / "one.json"
    path.write_text(json.dumps(config))
    gateway = spawn("--config", str(path), "--port", "0", "--log-level", "info")  # a lower-case level
    gateway.wait_line(r"listening on http://127\.0\.0\.1:\d+ \(1 account\)")
    assert re.search(r"WARNING.*no keys configured", gateway.output()), gateway.output()
    assert gateway.terminate() == 0


# -- --healthcheck probes the port the configuration gives ----------------------------------------


def test_healthcheck_asks_the_configured_port(spawn: Any, tmp_path: Path) -> None:
    port = free_port()
    # As in the container: ./config.json in the working folder sets the port, 0.0.0.0 the host.
    (tmp_path / "config.json").write_text(json.dumps({"keys": ["sk-k"], "server": {"port": port}}))
    assert run_once(["--healthcheck"], tmp_path, clean_env(DS2A_HOST="0.0.0.0")).returncode == 1  # not up yet
    gateway = spawn(DS2A_HOST="0.0.0.0")
    gateway.wait_line(rf"listening on http://0\.0\.0\.0:{port}")
    result = run_once(["--healthcheck"], tmp_path, clean_env(DS2A_HOST="0.0.0.0"))
    assert result.returncode == 0, result
    # The port of the environment wins over the file's, as for the gateway itself.
    assert run_once(["--healthcheck"], tmp_path, clean_env(DS2A_PORT=str(free_port()))).returncode == 1
    assert gateway.terminate() == 0


# -- the container ------------------------------------------------------------------------------------


def test_the_image_never_holds_the_operators_config() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    instructions = [line for line in docker.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in instructions if "config.json" in line and line.lstrip().startswith(("COPY", "ADD"))]
    assert not any(line.split()[:2] == ["COPY", "."] for line in instructions if line.strip())
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "config.json" in ignored


def test_the_image_healthcheck_reads_the_effective_config_and_the_base_is_pinned() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    health = docker[docker.index("HEALTHCHECK") :].split("\n\n")[0]
    assert "--healthcheck" in health and "DS2A_PORT" not in health
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", docker, re.M)
    assert bases and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", bases[0]), bases
    assert docker.count("FROM ${PYTHON_IMAGE}") == 2


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed")
def test_the_docker_build_context_leaves_config_json_out(tmp_path: Path) -> None:
    """What `docker build` would send: .dockerignore applied by the real client, if it can."""
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("no docker daemon")
    context = tmp_path / "ctx"
    shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.so"))
    (context / "config.json").write_text('{"keys": ["sk-secret-in-context"]}')
    dockerfile = "FROM busybox\nCOPY . /ctx\nRUN ! grep -r sk-secret-in-context /ctx\n"
    build = ["docker", "build", "-q", "-f", "-", str(context)]
    result = subprocess.run(build, input=dockerfile, text=True, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr


# -- the README's start command works after its set-up command ------------------------------------


def test_the_readme_start_command_is_the_virtualenvs_script() -> None:
    readme = (ROOT / "README.md").read_text()
    step = readme[readme.index("## Use it with your accounts") : readme.index("### Models")]
    assert ".venv/bin/ds2a" in step
    assert not re.search(r"^\d\. `python -m ds2a`", step, re.M)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'ds2a = "ds2a.__main__:main"' in pyproject
    script = Path(sys.executable).parent / "ds2a"  # what `pip install -e .` put beside python
    if not script.exists():
        pytest.skip("the ds2a script is not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--healthcheck" in result.stdout


# -- many accounts: logins are staggered ------------------------------------------------------------


def test_start_up_prepares_accounts_in_waves_not_all_at_once(make_stack: Callable[..., Stack]) -> None:
    from ds2a.pool.pool import STARTUP_WAVE

    s = make_stack(accounts=3 * STARTUP_WAVE)

    def preparing() -> int:
        return sum(a.preparing is not None for a in s.gateway.pool.accounts)

    first = s.call(preparing)
    assert 0 < first <= STARTUP_WAVE, first  # right after start: the first wave only

    async def all_ready() -> None:
        while any(a.ticket is None for a in s.gateway.pool.accounts):
            await asyncio.sleep(0.02)

    s.run(all_ready, timeout=60)
    assert s.counters()["logins"] == 3 * STARTUP_WAVE
    # Requests need no wave: the last account is used on demand, like any other.
    s.wait_idle()


# -- the listen backlog ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss is not installed")
def test_the_listen_backlog_is_the_configured_one(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=0, config={"server": {"backlog": 777}})
    out = subprocess.run(["ss", "-ltnH", f"sport = :{s.port}"], capture_output=True, text=True, timeout=10).stdout
    # For a listening socket, ss shows the backlog in the Send-Q column (capped by somaxconn).
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert out.split()[2] == str(min(777, somaxconn)), out
