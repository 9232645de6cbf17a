"""The repository's own promises: the README's commands, the shipped config, the container."""

from __future__ import annotations

import re

from ds2a.config import load_config
from conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .*?)\n```", text)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    run = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert run in readme_commands()
    assert "pytest" in run


def test_readme_run_command_starts_the_offline_demo() -> None:
    assert any(cmd.endswith("python -m ds2a --demo") for cmd in readme_commands())


def test_shipped_config_loads() -> None:
    cfg = load_config(ROOT / "config.json", env={})
    assert cfg.server.port == 5001
    assert cfg.accounts == [] and cfg.keys == []  # no secrets or placeholder keys shipped


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    assert "USER ds2a" in docker
    assert "HEALTHCHECK" in docker and "/healthz" in docker
    assert "EXPOSE 5001" in docker
    assert docker.count("FROM ") == 2  # build stage with a compiler, slim runtime
