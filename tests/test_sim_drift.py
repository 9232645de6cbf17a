"""The simulator's modes for the upstream drift of August to October 2026 (protocol doc §16).

Each behaviour has a switch (a SimConfig field or an injected fault) and a prompt
directive; these tests read the simulator's answers raw, over loopback, with the
minimal reader of test_sim.py (the gateway's own parser is not used here).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from ds2a.deepseek import pow as dspow
from ds2a.sim import expected
from ds2a.sim.bodies import TIP_TEXT, TOAST_ERROR
from test_sim import (  # noqa: F401  (make/up are fixtures)
    COMPLETION,
    EMAIL,
    PASSWORD,
    Block,
    MakeSim,
    MiniG3,
    Upstream,
    eventually,
    events,
    make,
    parse_sse,
    read_blocks_until,
    up,
)


def patches(blocks: list[Block]) -> list[Any]:
    return [b.json for b in blocks if b.event is None and b.data is not None]


def login_body(email: str = EMAIL, password: str = PASSWORD) -> dict[str, Any]:
    return {"email": email, "password": password, "device_id": "d", "os": "web"}


# --- terminal statuses CONTEXT_LENGTH_EXCEEDED and TIMEOUT ---------------------------------------


@pytest.mark.parametrize(("name", "status"), [("context_length_exceeded", "CONTEXT_LENGTH_EXCEEDED"), ("status_timeout", "TIMEOUT")])
async def test_error_status_before_any_text(up: Upstream, name: str, status: str) -> None:
    token, session = await up.ready()
    blocks = parse_sse((await up.complete(token, session, f"too long [[sim:{name}]]")).body)
    assert events(blocks) == ["ready", "update_session", "finish", "update_session", "close"]
    frames = patches(blocks)
    assert frames[0]["v"]["response"]["fragments"] == []  # nothing was generated
    assert frames[1] == {"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 0}, {"p": "quasi_status", "v": status}]}
    assert frames[2] == {"p": "response/status", "o": "SET", "v": status}  # the op is restated after a BATCH
    assert up.sim.counters.error_statuses == {status: 1}
    assert up.sim.account(token).generation is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("name", "status"), [("context_length_exceeded", "CONTEXT_LENGTH_EXCEEDED"), ("status_timeout", "TIMEOUT")])
async def test_error_status_after_some_text(up: Upstream, name: str, status: str) -> None:
    token, session = await up.ready()
    prompt = f"long [[sim:{name}=6]]"
    state = MiniG3().feed(parse_sse((await up.complete(token, session, prompt)).body))
    text = state.text("RESPONSE")
    assert text and expected(prompt, False, False, up.sim.config).answer.startswith(text)
    assert state.response["status"] == status and state.response["quasi_status"] == status


async def test_error_status_faults(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("status_timeout", account=EMAIL, tokens=3)
    up.sim.inject("context_length_exceeded", account=EMAIL)
    state = MiniG3().feed(parse_sse((await up.complete(token, session, "x")).body))
    assert state.response["status"] == "CONTEXT_LENGTH_EXCEEDED"  # the earliest cut wins
    assert up.sim.counters.faults_fired == 2


# --- toast -------------------------------------------------------------------------------------


async def test_toast_instead_of_an_answer_then_the_stream_lingers(make: MakeSim) -> None:
    up = await make(toast_hold=30.0)
    token, session = await up.ready()
    running = await up.open_stream(token, session, "toasted [[sim:toast]]")
    head = await read_blocks_until(running, lambda b: any(x.event == "toast" for x in b))
    blocks = parse_sse(head)
    assert events(blocks) == ["ready", "update_session", "toast"]
    assert blocks[-1].json == TOAST_ERROR
    assert up.sim.account(token).generation is None  # type: ignore[union-attr]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(running.content.readany(), 0.3)  # nothing more, no close yet
    running.close()
    assert up.sim.counters.toasts == 1 and up.sim.counters.completions == 0


async def test_toast_mid_answer_and_as_a_fault(make: MakeSim) -> None:
    up = await make(toast_hold=0.0, answer_tokens=20)
    token, session = await up.ready()
    blocks = parse_sse((await up.complete(token, session, "[[sim:toast=5]] mid")).body)
    assert events(blocks)[-2:] == ["toast", "close"]
    assert MiniG3().feed(blocks).text("RESPONSE")
    up.sim.inject("toast", account=EMAIL)
    blocks = parse_sse((await up.complete(token, session, "fault")).body)
    assert events(blocks) == ["ready", "update_session", "toast", "close"]
    assert up.sim.counters.toasts == 2


# --- in-stream 40301 and clock skew -----------------------------------------------------------------


async def test_invalid_pow_directive_rejects_the_first_n_then_accepts(up: Upstream) -> None:
    token, session = await up.ready()
    prompt = "stale [[sim:invalid_pow=2]]"
    for _ in range(2):
        reply = await up.complete(token, session, prompt)
        assert reply.content_type == "text/event-stream"
        assert [b.json for b in parse_sse(reply.body)] == [{"code": 40301, "msg": "INVALID_POW_RESPONSE", "data": None}]
    ok = parse_sse((await up.complete(token, session, prompt)).body)
    assert events(ok)[-1] == "close" and MiniG3().feed(ok).response["status"] == "FINISHED"
    assert up.sim.counters.pow_reject_reasons == {"directive": 2}


async def test_invalid_pow_fault(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("invalid_pow", account=EMAIL)
    reply = await up.complete(token, session, "x")
    assert parse_sse(reply.body)[0].json["code"] == 40301
    assert up.sim.counters.pow_reject_reasons == {"fault": 1}


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
async def test_clock_skew_moves_expire_at_not_the_validity(make: MakeSim, skew: float) -> None:
    up = await make(clock_skew=skew)
    token, session = await up.ready()
    challenge = await up.challenge(token)
    host_now_ms = time.time() * 1000
    assert challenge.expire_at == pytest.approx(host_now_ms + skew * 1000 + 300_000, abs=5_000)
    assert challenge.expire_after == 300_000
    answer = up.sim.challenges.answer_for(challenge.salt)
    reply = await up.post(COMPLETION, up.body(session, "skewed"), token, {"x-ds-pow-response": dspow.pow_header(challenge, answer or 0)})
    assert events(parse_sse(reply.body))[-1] == "close"  # valid by the server's own clock
    assert up.sim.counters.pow_rejects == 0


# --- the CDN/WAF and the client version -----------------------------------------------------------------

WAF = {
    "captcha": (405, {"x-amzn-waf-action": "captcha"}, "text/html"),
    "challenge": (202, {"x-amzn-waf-action": "challenge"}, "text/html"),
    "challenge_body": (202, {}, "application/json"),
    "cloudflare": (403, {"cf-mitigated": "challenge"}, "text/html"),
    "cloudflare_429": (429, {"cf-mitigated": "challenge"}, "text/html"),
    "html": (200, {}, "text/html"),
}


@pytest.mark.parametrize("mode", list(WAF))
async def test_waf_config_blocks_every_api_call(make: MakeSim, mode: str) -> None:
    up = await make()
    token, session = await up.ready()
    up.sim.configure(waf=mode)
    status, headers, content_type = WAF[mode]
    for path, body in (("/api/v0/users/login", login_body()), ("/api/v0/chat/create_pow_challenge", {"target_path": COMPLETION}),
                       (COMPLETION, up.body(session, "x"))):
        async with up.http.post(up.base + path, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == status
            assert resp.content_type == content_type
            for name, value in headers.items():
                assert resp.headers[name] == value
    async with up.http.get(up.base + "/_sim/counters") as resp:
        assert (await resp.json())["waf_blocks"] == 3  # the control endpoints are not behind the WAF
    assert up.sim.counters.logins == 1 and up.sim.counters.challenges_issued == 0
    up.sim.configure(waf="")
    assert (await up.complete(token, session, "unblocked")).content_type == "text/event-stream"


async def test_waf_fault_and_directive(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("waf", mode="cloudflare")
    async with up.http.post(up.base + "/api/v0/chat_session/create", json={}, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 403 and resp.headers["cf-mitigated"] == "challenge"
    reply = await up.complete(token, session, "[[sim:waf]] blocked")
    assert reply.status == 405 and reply.content_type == "text/html"
    assert up.sim.counters.waf_blocks == 2 and up.sim.counters.completions == 0


async def test_min_client_version_answers_40005(make: MakeSim) -> None:
    up = await make(min_client_version="2.5.0")
    old = await up.post("/api/v0/users/login", login_body(), headers={"x-client-version": "2.0.4"})
    assert old.json == {"code": 40005, "msg": "CLIENT_VERSION_TOO_LOW", "data": None}
    missing = await up.post("/api/v0/users/login", login_body())
    assert missing.json["code"] == 40005
    current = await up.post("/api/v0/users/login", login_body(), headers={"x-client-version": "2.5.0"})
    assert current.json["code"] == 0
    assert up.sim.counters.client_too_old == 2


async def test_client_too_old_directive_and_fault(up: Upstream) -> None:
    token, session = await up.ready()
    assert (await up.complete(token, session, "[[sim:client_too_old]]")).json["code"] == 40005
    up.sim.inject("client_too_old")
    assert (await up.post("/api/v0/users/current", None, token)).json["code"] == 40005
    assert up.sim.counters.client_too_old == 2


# --- login answers ---------------------------------------------------------------------------------------


async def test_banned_and_device_checked_logins(make: MakeSim) -> None:
    up = await make(banned=("banned@example.com",))
    banned = await up.post("/api/v0/users/login", login_body("banned@example.com"))
    assert banned.json["data"]["biz_code"] == 10 and banned.json["data"]["biz_msg"] == "USER_IS_BANNED"
    up.sim.configure(device_check=True)
    refused = await up.post("/api/v0/users/login", login_body())
    assert refused.json["data"]["biz_code"] == 11 and refused.json["data"]["biz_msg"] == "RISK_DEVICE_DETECTED"
    c = up.sim.counters
    assert (c.login_banned, c.login_device_refused, c.logins) == (1, 1, 0)


async def test_a_muted_user_logs_in_and_is_told(make: MakeSim) -> None:
    up = await make(muted_at_login=(EMAIL,), mute_seconds=120.0)
    reply = await up.post("/api/v0/users/login", login_body())
    chat = reply.json["data"]["biz_data"]["user"]["chat"]
    assert chat["is_muted"] == 1 and chat["mute_until"] == pytest.approx(time.time() + 120, abs=5)
    assert up.sim.counters.muted_logins == 1


async def test_login_faults(up: Upstream) -> None:
    up.sim.inject("banned", account=EMAIL)
    assert (await up.post("/api/v0/users/login", login_body())).json["data"]["biz_code"] == 10
    up.sim.inject("risk_device", account=EMAIL)
    assert (await up.post("/api/v0/users/login", login_body())).json["data"]["biz_code"] == 11
    up.sim.inject("muted_login", account=EMAIL, seconds=60)
    assert (await up.post("/api/v0/users/login", login_body())).json["data"]["biz_data"]["user"]["chat"]["is_muted"] == 1


@pytest.mark.parametrize(("directive", "check"), [
    ("banned", lambda j: j["data"]["biz_code"] == 10),
    ("risk_device", lambda j: j["data"]["biz_code"] == 11),
    ("muted_login=30", lambda j: j["data"]["biz_data"]["user"]["chat"]["is_muted"] == 1),
])
async def test_account_directives_kill_the_token_and_show_at_the_next_login(up: Upstream, directive: str, check: Any) -> None:
    token, session = await up.ready()
    reply = await up.complete(token, session, f"[[sim:{directive}]]")
    assert reply.json["code"] == 40003
    assert check((await up.post("/api/v0/users/login", login_body())).json)


# --- heartbeat, stalls, pauses ------------------------------------------------------------------------------


async def test_heartbeat_header_and_comments_through_a_pause(up: Upstream) -> None:
    token, session = await up.ready()
    header = await up.pow(token)
    async with up.http.post(up.base + COMPLETION, json=up.body(session, "[[sim:heartbeat=0.2]] [[sim:pause=1]] quiet"),
                            headers={"Authorization": f"Bearer {token}", "x-ds-pow-response": header}) as resp:
        assert resp.headers["x-ds-sse-heartbeat-timeout-secs"] == "0.2"
        body = await resp.read()
    blocks = parse_sse(body)
    assert events(blocks)[-1] == "close"
    assert up.sim.counters.heartbeats >= 3  # about one per 0.1 s of the 1 s pause
    assert sum(b.comment for b in blocks) >= up.sim.counters.heartbeats


async def test_a_stalled_stream_goes_silent_heartbeats_included(make: MakeSim) -> None:
    up = await make(heartbeat=0.1)
    token, session = await up.ready()
    running = await up.open_stream(token, session, "[[sim:stall=4]] dead")
    assert running.headers["x-ds-sse-heartbeat-timeout-secs"] == "0.1"
    head = await read_blocks_until(running, lambda b: len(b) >= 4)
    await eventually(lambda: up.sim.counters.stalls == 1)
    beats = up.sim.counters.heartbeats
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(running.content.readany(), 0.5)
    assert up.sim.counters.heartbeats == beats
    running.close()
    await eventually(lambda: up.sim.account(token).generation is None)  # type: ignore[union-attr]
    assert head and up.sim.counters.disconnects == 1


# --- a user's stop ------------------------------------------------------------------------------------


async def test_user_stop_ends_with_a_tip_and_incomplete(up: Upstream) -> None:
    token, session = await up.ready()
    blocks = parse_sse((await up.complete(token, session, "[[sim:user_stop=5]] stop me")).body)
    frames = patches(blocks)
    tip = next(i for i, f in enumerate(frames) if f.get("p") == "response/fragments" and f["v"][0].get("type") == "TIP")
    assert frames[tip]["v"][0]["content"] == TIP_TEXT
    assert frames[tip + 1]["v"][-1] == {"p": "quasi_status", "v": "INCOMPLETE"}
    assert frames[tip + 2] == {"p": "response/status", "o": "SET", "v": "INCOMPLETE"}
    assert blocks[-1].event == "close" and blocks[-1].json == {"click_behavior": "none", "auto_resume": False}
    assert (up.sim.counters.user_stops, up.sim.counters.incomplete) == (1, 1)


async def test_stop_stream_ends_like_a_user_stop(up: Upstream) -> None:
    token, session = await up.ready()
    running = await up.open_stream(token, session, "stop me [[sim:tokens=100000]] [[sim:delay=0.02]]")
    head = await read_blocks_until(running, lambda b: len(b) >= 4)
    await up.stop_stream(token, session, 2)
    state = MiniG3().feed(parse_sse(head + await running.read()))
    running.release()
    assert state.response["fragments"][-1]["type"] == "TIP"
    assert state.response["status"] == "INCOMPLETE"
    assert up.sim.counters.user_stops == 1


async def test_a_server_cut_has_no_tip(up: Upstream) -> None:
    token, session = await up.ready()
    state = MiniG3().feed(parse_sse((await up.complete(token, session, "[[sim:incomplete=5]] cut")).body))
    assert state.response["status"] == "INCOMPLETE"
    assert state.response["fragments"][-1]["type"] != "TIP"
    assert up.sim.counters.user_stops == 0


# --- new fragment types --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["config", "directive"])
async def test_new_fragment_types_carry_the_same_answer(make: MakeSim, how: str) -> None:
    up = await make(thinking_tokens=20, answer_tokens=60, cite_every=7, new_fragments=how == "config")
    token, session = await up.ready()
    prompt = "weather [[sim:new_fragments]]" if how == "directive" else "weather"
    state = MiniG3().feed(parse_sse((await up.complete(token, session, prompt, thinking=True, search=True)).body))
    types = [f["type"] for f in state.response["fragments"]]
    assert {"FILE", "SEARCH", "TOOL_FIND", "READ_LINK"} <= set(types)
    assert "TOOL_SEARCH" not in types and "TOOL_OPEN" not in types
    search = next(f for f in state.response["fragments"] if f["type"] == "SEARCH")
    assert search["content"].startswith("Searching the web for") and "pages found" in search["content"]
    want = expected(prompt, True, True, up.sim.config)
    assert (state.text("THINK"), state.text("RESPONSE")) == (want.reasoning, want.answer)
    refs = next(f for f in state.response["fragments"] if f["type"] == "RESPONSE")["references"]
    assert refs and {r["type"] for r in refs} <= {"SEARCH", "TOOL_FIND", "READ_LINK"}


async def test_new_fragments_survive_a_continuation_snapshot(make: MakeSim) -> None:
    up = await make(thinking_tokens=20, answer_tokens=40, new_fragments=True)
    token, session = await up.ready()
    prompt = "[[sim:incomplete=30]] resumed search"
    MiniG3().feed(parse_sse((await up.complete(token, session, prompt, thinking=True, search=True)).body))
    resumed = MiniG3().feed(parse_sse((await up.continue_(token, session, 2)).body))
    want = expected(prompt, True, True, up.sim.config)
    assert resumed.text("RESPONSE") == want.answer
    search = next(f for f in resumed.response["fragments"] if f["type"] == "SEARCH")
    assert "pages found" in search["content"]


async def test_unknown_waf_mode_is_refused() -> None:
    from ds2a.sim import SimConfig

    with pytest.raises(ValueError):
        SimConfig(waf="nonsense")
    with pytest.raises(ValueError):
        SimConfig().with_changes({"waf": 3})


async def test_control_endpoint_sets_the_drift_switches(up: Upstream) -> None:
    async with up.http.post(up.base + "/_sim/config", json={"waf": "html", "heartbeat": 2, "min_client_version": "9"}) as resp:
        view = await resp.json()
    assert (view["waf"], view["heartbeat"], view["min_client_version"]) == ("html", 2.0, "9")
    async with aiohttp.ClientSession() as http:
        async with http.post(up.base + "/api/v0/users/login", json=login_body()) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"


# --- a broken upstream (issue 8) -------------------------------------------------------------------------


async def test_endless_block_never_ends_until_the_client_goes_away(up: Upstream) -> None:
    token, session = await up.ready()
    running = await up.open_stream(token, session, "[[sim:endless_block=4]] broken")
    received = b""
    while len(received) < 2 * 1024 * 1024:
        chunk = await running.content.readany()
        assert chunk
        received += chunk
    tail = received[received.rfind(b"\n\n") + 2 :]
    assert tail.startswith(b'data: {"v":"xxxx') and b"\n" not in tail
    running.close()
    await eventually(lambda: up.sim.account(token).generation is None)  # type: ignore[union-attr]
    assert up.sim.counters.endless_blocks == 1
