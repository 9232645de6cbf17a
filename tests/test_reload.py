"""Reload without restart: POST /admin/reload and SIGHUP read the config again.

Keys and accounts added and removed, limits changed, with no dropped stream; a removed
account finishes its running answer and leaves; an invalid config is refused with the
reason (logged, and in the answer) and the running one is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster import Replica, SimThread, wait_ready
from ds2a.config import load_config
from ds2a.sim import SimConfig, expected
from harness import KEY, Stack, http
from test_pool_sim import Call, chat, on_loop, request, settled, until


def write(path: Path, stack: Stack, **changes: Any) -> None:
    """The stack's own config as a file, with ``changes`` (top-level keys or section dicts)."""
    config: dict[str, Any] = {
        "keys": [KEY],
        "accounts": stack.accounts,
        "server": {"host": "127.0.0.1", "port": 0, "access_log": False},
        "deepseek": {"base_url": stack.config.deepseek.base_url},
        "pool": {"token_store": ""},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def reloading_from(stack: Stack, path: Path) -> None:
    stack.gateway.config_source = lambda: load_config(path, env={})


def reload(stack: Stack, key: str = KEY) -> tuple[int, dict[str, Any]]:
    status, _, body = http(stack, "POST", "/admin/reload", key=key)
    return status, json.loads(body)


def test_keys_added_and_removed(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(accounts=1)
    path = tmp_path / "config.json"
    reloading_from(stack, path)
    write(path, stack, keys=["sk-new-key"])
    status, outcome = reload(stack)
    assert status == 200 and "keys" in outcome["changed"]
    assert http(stack, "GET", "/admin/accounts", key="sk-new-key")[0] == 200
    assert http(stack, "GET", "/admin/accounts", key=KEY)[0] == 401, "the removed key is refused at once"
    assert reload(stack, key=KEY)[0] == 401, "and cannot reload any more"


def test_limits_change_and_restart_only_settings_are_kept_and_named(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(accounts=1)
    path = tmp_path / "config.json"
    reloading_from(stack, path)
    body = json.dumps(chat("x" * 3000)).encode()
    assert http(stack, "POST", "/v1/chat/completions", body)[0] == 200
    write(path, stack, server={"max_body_bytes": 1000, "port": 1}, pool={"queue_max": 0, "token_store": ""})
    status, outcome = reload(stack)
    assert status == 200
    assert {"server.max_body_bytes", "pool.queue_max"} <= set(outcome["changed"])
    assert outcome["restart_needed"] == ["server.port"]
    assert http(stack, "POST", "/v1/chat/completions", body)[0] == 413
    assert stack.config.server.port == 0, "the running socket's setting is kept"
    assert stack.gateway.pool.pcfg.queue_max == 0


def test_an_invalid_config_is_refused_with_its_reason_and_the_old_one_kept(
    make_stack: Callable[..., Stack], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = make_stack(accounts=1)
    path = tmp_path / "config.json"
    reloading_from(stack, path)
    write(path, stack, keys=["sk-other"], pool={"queue_max": "many"})
    with caplog.at_level(logging.ERROR, logger="ds2a.app"):
        status, body = reload(stack)
    assert status == 400 and body["error"]["code"] == "invalid_config"
    assert "pool.queue_max" in body["error"]["message"]
    assert any("reload refused" in r.getMessage() and "pool.queue_max" in r.getMessage() for r in caplog.records)
    path.write_text("{not json")
    assert reload(stack)[0] == 400
    assert http(stack, "GET", "/admin/accounts")[0] == 200, "the running config (and key) stays"
    assert stack.config.pool.queue_max == 256


async def test_accounts_added_and_removed_without_dropping_a_stream(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(accounts=1, sim=SimConfig(delay=0.003))
    await until(stack, settled(stack), "a ready ticket")
    path = tmp_path / "config.json"
    reloading_from(stack, path)
    prompt = "a long answer across the reload"
    call = await Call(stack, chat(prompt, stream=True, model="deepseek-reasoner")).open()
    await call.content_events(3)
    user1 = {"email": "user1@example.com", "password": stack.sim_config.password}
    write(path, stack, accounts=[user1])  # user0 (streaming now) leaves, user1 joins
    status, outcome = await asyncio.to_thread(reload, stack)
    assert status == 200 and outcome["removed"] == ["us***0@example.com"]
    assert outcome["added"] == ["us***1@example.com"]
    reply = await call.reply()
    want = expected(prompt, True, False, stack.sim_config)
    assert reply.answer() == (want.reasoning, want.answer, "stop"), "the running answer finished whole"
    # New answers go to the new account; the old one is gone from the pool once its answer ended.
    for i in range(2):
        assert (await request(stack, chat(f"after the reload {i}"))).status == 200
    served = await on_loop(stack, lambda: [r.account for r in stack.sim.requests if r.path.endswith("/completion")])
    assert served[0] == "email:user0@example.com" and set(served[1:]) == {"email:user1@example.com"}
    snapshot = await on_loop(stack, stack.gateway.pool.snapshot)
    assert [a["account"] for a in snapshot["accounts"]] == ["us***1@example.com"]
    await until(stack, lambda: not stack.gateway.pool.leaving, "the removed account to leave")
    assert (await on_loop(stack, stack.sim.counters.snapshot))["parallel_violations"] == 0

    def no_session_leaked() -> bool:
        c = stack.sim.counters.snapshot()
        ready = len([a for a in stack.gateway.pool.accounts if a.ticket is not None or a.preparing is not None])
        return bool(c["sessions_created"] == c["sessions_deleted"] + ready)

    await until(stack, no_session_leaked, "the removed account's prepared session to be deleted")


def test_sighup_reloads_a_running_process(tmp_path: Path) -> None:
    sim = SimThread(SimConfig()).start()
    config = {
        "keys": [KEY],
        "accounts": [{"email": "user0@example.com", "password": SimConfig().password}],
        "server": {"access_log": False},
        "deepseek": {"base_url": sim.url},
        "pool": {"token_store": ""},
    }
    replica = Replica("hup", tmp_path, config).start()
    try:
        wait_ready(replica)

        def models(key: str) -> int:
            req = urllib.request.Request(replica.base_url + "/admin/accounts", headers={"Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as reply:
                    return reply.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert models(KEY) == 200 and models("sk-after-hup") == 401
        on_disk = json.loads(replica.config_path.read_text())
        replica.config_path.write_text(json.dumps({**on_disk, "keys": ["sk-after-hup"]}))
        replica.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while models("sk-after-hup") != 200:
            assert time.monotonic() < deadline, replica.log()
            time.sleep(0.05)
        assert models(KEY) == 401
        replica.config_path.write_text("{broken")
        replica.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in replica.log():
            assert time.monotonic() < deadline, replica.log()
            time.sleep(0.05)
        assert models("sk-after-hup") == 200, "still serving on the last good config"
    finally:
        replica.stop()
        sim.stop()


def test_model_tables_change_for_every_dialect(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(accounts=1)
    path = tmp_path / "config.json"
    reloading_from(stack, path)
    models = [{"id": "house-model", "thinking": False, "search": False}]
    write(path, stack, api={"models": models}, anthropic={"models": {"claude-house": "house-model"}})
    assert reload(stack)[0] == 200
    status, _, body = http(stack, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["house-model"]
    assert http(stack, "POST", "/v1/chat/completions", chat("hi", model="house-model"))[0] == 200
    assert http(stack, "POST", "/v1/chat/completions", chat("hi", model="deepseek-chat"))[0] == 404
    claude = {"model": "claude-house", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    assert http(stack, "POST", "/v1/messages", claude)[0] == 200
