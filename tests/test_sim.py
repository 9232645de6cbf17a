"""The DeepSeek upstream simulator, over real loopback sockets with an aiohttp client.

Streams are read back with a deliberately minimal G3 decoder that knows only the
frames the simulator emits (sticky p/o, SET/APPEND/BATCH, negative indexes); the
gateway's real parser is tested on its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from ds2a.deepseek import pow as dspow
from ds2a.sim import SimConfig, Simulator, expected
from ds2a.sim.text import VOCAB, answer_prefix
from conftest import ROOT, capture

COMPLETION = "/api/v0/chat/completion"
EMAIL = "user@example.com"
PASSWORD = "sim-password"


# --- a minimal SSE + G3 reader -------------------------------------------------------


@dataclass
class Block:
    event: str | None
    data: str | None
    comment: bool = False

    @property
    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


def parse_sse(raw: bytes) -> list[Block]:
    blocks = []
    for chunk in raw.decode("utf-8").split("\n\n"):
        if not chunk:
            continue
        block = Block(None, None)
        for line in chunk.split("\n"):
            if line.startswith(":"):
                block.comment = True
            elif line.startswith("event: "):
                block.event = line[len("event: "):]
            elif line.startswith("data: "):
                block.data = line[len("data: "):]
        blocks.append(block)
    return blocks


class MiniG3:
    """Replays patch frames into a state tree (protocol doc §7.4), nothing more."""

    def __init__(self) -> None:
        self.root: dict[str, Any] = {}
        self.p = ""
        self.o = "SET"

    def feed(self, blocks: list[Block]) -> MiniG3:
        for block in blocks:
            if block.event is None and block.data is not None:
                frame = block.json
                self.p = frame.get("p", self.p)
                self.o = frame.get("o", self.o)
                self._apply(self.p, self.o, frame["v"])
        return self

    def _apply(self, path: str, op: str, value: Any) -> None:
        if op == "BATCH":
            sub_p, sub_o = "", "SET"
            for item in value:
                sub_p = item.get("p", sub_p)
                sub_o = item.get("o", sub_o)
                self._apply(f"{path}/{sub_p}" if path else sub_p, sub_o, item["v"])
            return
        keys = [k for k in path.split("/") if k]
        if not keys:
            assert op == "SET"
            self.root = value
            return
        parent: Any = self.root
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        last: Any = int(keys[-1]) if isinstance(parent, list) else keys[-1]
        if op == "SET":
            parent[last] = value
        else:
            assert op == "APPEND", op
            parent[last] = parent[last] + value

    @property
    def response(self) -> dict[str, Any]:
        return self.root["response"]

    def text(self, kind: str) -> str:
        return "".join(f["content"] for f in self.response["fragments"] if f["type"] == kind)


def events(blocks: list[Block]) -> list[str]:
    return [b.event for b in blocks if b.event is not None]


def signature(block: Block) -> tuple[Any, ...]:
    """A frame's shape: which keys, which (index-normalised) path, which op, what kind of value."""
    if block.comment:
        return ("comment",)
    if block.event is not None:
        return ("event", block.event)
    frame = block.json
    if "p" not in frame and isinstance(frame["v"], dict) and "response" in frame["v"]:
        return ("snapshot",)
    path = re.sub(r"-?\d+", "N", frame.get("p", ""))
    return (tuple(frame), path, frame.get("o"), type(frame["v"]).__name__)


def collapsed(blocks: list[Block]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for block in blocks:
        sig = signature(block)
        if not out or out[-1] != sig:
            out.append(sig)
    return out


# --- client helpers ------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Upstream:
    http: aiohttp.ClientSession
    sim: Simulator
    base: str
    tokens: dict[str, str] = field(default_factory=dict)

    async def post(self, path: str, body: Any, token: str | None = None,
                   headers: dict[str, str] | None = None) -> Reply:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.http.post(self.base + path, json=body, headers=all_headers) as resp:
            return Reply(resp.status, await resp.read(), resp.content_type)

    async def login(self, email: str = EMAIL, password: str = PASSWORD) -> str:
        reply = await self.post("/api/v0/users/login",
                                {"email": email, "password": password, "device_id": "t", "os": "android"})
        return reply.json["data"]["biz_data"]["user"]["token"]

    async def session(self, token: str) -> str:
        reply = await self.post("/api/v0/chat_session/create", {}, token)
        return reply.json["data"]["biz_data"]["chat_session"]["id"]

    async def challenge(self, token: str, target: str = COMPLETION) -> dspow.Challenge:
        reply = await self.post("/api/v0/chat/create_pow_challenge", {"target_path": target}, token)
        return dspow.Challenge.from_json(reply.json["data"]["biz_data"]["challenge"])

    async def pow(self, token: str, target: str = COMPLETION) -> str:
        """A valid header without scanning: the simulator's drawn answer (the scan has its own test)."""
        challenge = await self.challenge(token, target)
        answer = self.sim.challenges.answer_for(challenge.salt)
        assert answer is not None
        return dspow.pow_header(challenge, answer)

    async def ready(self) -> tuple[str, str]:
        token = await self.login()
        return token, await self.session(token)

    def body(self, session: str, prompt: str, thinking: bool = False, search: bool = False,
             parent: int | None = None) -> dict[str, Any]:
        return {"chat_session_id": session, "parent_message_id": parent, "model_type": "default", "prompt": prompt,
                "ref_file_ids": [], "thinking_enabled": thinking, "search_enabled": search, "preempt": False}

    async def complete(self, token: str, session: str, prompt: str, thinking: bool = False,
                       search: bool = False, parent: int | None = None) -> Reply:
        header = await self.pow(token)
        return await self.post(COMPLETION, self.body(session, prompt, thinking, search, parent), token,
                               {"x-ds-pow-response": header})

    async def open_stream(self, token: str, session: str, prompt: str, thinking: bool = False) -> aiohttp.ClientResponse:
        header = await self.pow(token)
        return await self.http.post(self.base + COMPLETION, json=self.body(session, prompt, thinking),
                                    headers={"Authorization": f"Bearer {token}", "x-ds-pow-response": header})

    async def continue_(self, token: str, session: str, message_id: int) -> Reply:
        return await self.post("/api/v0/chat/continue",
                               {"chat_session_id": session, "message_id": message_id, "fallback_to_resume": True},
                               token)

    async def stop_stream(self, token: str, session: str, message_id: int) -> Reply:
        return await self.post("/api/v0/chat/stop_stream", {"chat_session_id": session, "message_id": message_id},
                               token)


async def read_blocks_until(resp: aiohttp.ClientResponse, predicate: Callable[[list[Block]], bool]) -> bytes:
    raw = b""
    while not predicate(parse_sse(raw[: raw.rfind(b"\n\n") + 2] if b"\n\n" in raw else b"")):
        chunk = await resp.content.readany()
        assert chunk, "stream ended early"
        raw += chunk
    return raw


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for a state change made by another task (no time is asserted)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


MakeSim = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def make() -> AsyncIterator[MakeSim]:
    started: list[tuple[Simulator, aiohttp.ClientSession]] = []

    async def factory(**config: Any) -> Upstream:
        sim = Simulator(SimConfig(**config))
        base = await sim.start(host="127.0.0.1", port=0)
        http = aiohttp.ClientSession()
        started.append((sim, http))
        return Upstream(http, sim, base)

    yield factory
    for sim, http in started:
        await http.close()
        await sim.stop()


@pytest.fixture
async def up(make: MakeSim) -> Upstream:
    return await make(thinking_tokens=12, answer_tokens=20)


# --- users -------------------------------------------------------------------------------


async def test_login_gives_a_stable_token_and_the_user_object(up: Upstream) -> None:
    reply = await up.post("/api/v0/users/login",
                          {"email": EMAIL, "password": PASSWORD, "device_id": "", "os": "android"})
    assert reply.status == 200
    envelope = reply.json
    assert (envelope["code"], envelope["data"]["biz_code"]) == (0, 0)
    user = envelope["data"]["biz_data"]["user"]
    assert user["chat"] == {"is_muted": 0, "mute_until": None}
    assert user["token"] == await up.login()
    current = await up.http.get(up.base + "/api/v0/users/current", headers={"Authorization": f"Bearer {user['token']}"})
    assert (await current.json())["data"]["biz_data"]["token"] == user["token"]
    assert up.sim.counters.logins == 2


async def test_login_by_mobile_and_per_account_password(make: MakeSim) -> None:
    up = await make(accounts={"13800000000": "other"})
    body = {"mobile": "13800000000", "area_code": None, "password": PASSWORD, "device_id": "d", "os": "android"}
    assert (await up.post("/api/v0/users/login", body)).body == capture("error-login-wrong-password.txt")
    ok = await up.post("/api/v0/users/login", {**body, "password": "other"})
    assert ok.json["data"]["biz_data"]["user"]["token"]


async def test_wrong_password_is_the_captured_body(up: Upstream) -> None:
    reply = await up.post("/api/v0/users/login",
                          {"email": EMAIL, "password": "nope", "device_id": "x", "os": "android"})
    assert (reply.status, reply.body) == (200, capture("error-login-wrong-password.txt"))
    assert up.sim.counters.login_failures == 1


async def test_login_without_device_id_or_os_is_422(up: Upstream) -> None:
    reply = await up.post("/api/v0/users/login", {"email": EMAIL, "password": PASSWORD})
    assert reply.status == 422
    assert sorted(d["loc"] for d in reply.json["detail"]) == ["body.device_id", "body.os"]


async def test_users_current_without_and_with_a_bad_token(up: Upstream) -> None:
    missing = await up.http.get(up.base + "/api/v0/users/current")
    assert (missing.status, await missing.read()) == (200, capture("error-40002-missing-token.txt"))
    bad = await up.http.get(up.base + "/api/v0/users/current", headers={"Authorization": "Bearer nope"})
    assert (bad.status, await bad.read()) == (200, capture("error-40003-invalid-token.txt"))


async def test_revoked_token_fails_everywhere_and_login_issues_a_new_one(up: Upstream) -> None:
    token = await up.login()
    assert up.sim.revoke_token(token)
    assert (await up.post("/api/v0/chat_session/create", {}, token)).body == capture("error-40003-invalid-token.txt")
    assert (await up.post(COMPLETION, {}, token)).body == capture("error-40003-invalid-token.txt")
    fresh = await up.login()
    assert fresh != token
    assert await up.session(fresh)


async def test_preseeded_and_added_tokens_are_accounts(make: MakeSim) -> None:
    up = await make(tokens=("seeded-token",))
    assert await up.session("seeded-token")
    token = up.sim.add_account(email="new@example.com", password="pw")
    assert await up.session(token)
    assert await up.login("new@example.com", "pw") == token


# --- sessions -----------------------------------------------------------------------------


async def test_session_create_2026_shape_and_delete(up: Upstream) -> None:
    token = await up.login()
    reply = await up.post("/api/v0/chat_session/create", {"agent": "chat"}, token)
    biz = reply.json["data"]["biz_data"]
    assert biz["ttl_seconds"] == 259200
    session = biz["chat_session"]["id"]
    deleted = await up.post("/api/v0/chat_session/delete", {"chat_session_id": session}, token)
    assert deleted.json == {"code": 0, "msg": "", "data": {"biz_code": 0, "biz_msg": "", "biz_data": None}}
    assert (up.sim.counters.sessions_created, up.sim.counters.sessions_deleted) == (1, 1)
    gone = await up.complete(token, session, "hi")
    assert gone.content_type == "application/json"
    assert gone.body == capture("error-biz1-invalid-chat-session.txt")


async def test_session_create_legacy_shape(make: MakeSim) -> None:
    up = await make(legacy_session_shape=True)
    token = await up.login()
    biz = (await up.post("/api/v0/chat_session/create", {}, token)).json["data"]["biz_data"]
    assert "chat_session" not in biz
    reply = await up.complete(token, biz["id"], "hi")
    assert reply.content_type == "text/event-stream"


async def test_sessions_belong_to_their_account(up: Upstream) -> None:
    token, session = await up.ready()
    other = await up.login("other@example.com")
    assert (await up.complete(other, session, "hi")).body == capture("error-biz1-invalid-chat-session.txt")


# --- proof of work ------------------------------------------------------------------------


async def test_challenge_is_real_and_solved_with_pow_solve(up: Upstream) -> None:
    token, session = await up.ready()
    challenge = await up.challenge(token)
    assert len(challenge.salt) == 20 and challenge.difficulty == 1000
    assert challenge.expire_after == 300_000
    answer = await dspow.solve_async(challenge)
    assert dspow.deepseek_hash_v1(challenge.prefix + str(answer).encode()).hex() == challenge.challenge
    reply = await up.post(COMPLETION, up.body(session, "solved"), token,
                          {"x-ds-pow-response": dspow.pow_header(challenge, answer)})
    assert reply.content_type == "text/event-stream"
    assert events(parse_sse(reply.body))[-1] == "close"
    assert up.sim.counters.pow_rejects == 0


async def test_missing_and_undecodable_pow_header_get_missing_header(up: Upstream) -> None:
    token, session = await up.ready()
    missing = await up.post(COMPLETION, up.body(session, "x"), token)
    assert missing.body == capture("error-40300-missing-header.txt")
    challenge = await up.challenge(token)
    answer = up.sim.challenges.answer_for(challenge.salt)
    raw_json = base64.b64decode(dspow.pow_header(challenge, answer or 0)).decode()
    undecodable = await up.post(COMPLETION, up.body(session, "x"), token, {"x-ds-pow-response": raw_json})
    assert undecodable.body == capture("error-40300-missing-header.txt")
    assert up.sim.counters.pow_reject_reasons == {"missing": 1, "undecodable": 1}


async def _rejected(up: Upstream, token: str, session: str, header: str) -> Reply:
    """A rejected answer is the in-stream 40301 of §16.4 (pow_reject_in_stream, the default)."""
    reply = await up.post(COMPLETION, up.body(session, "x"), token, {"x-ds-pow-response": header})
    assert reply.content_type == "text/event-stream"
    assert [b.json for b in parse_sse(reply.body)] == [{"code": 40301, "msg": "INVALID_POW_RESPONSE", "data": None}]
    return reply


async def test_rejected_answer_as_the_older_json_envelope(make: MakeSim) -> None:
    up = await make(pow_reject_in_stream=False)
    token, session = await up.ready()
    header = await up.pow(token)
    await up.post(COMPLETION, up.body(session, "once"), token, {"x-ds-pow-response": header})
    reply = await up.post(COMPLETION, up.body(session, "x"), token, {"x-ds-pow-response": header})
    assert reply.content_type == "application/json" and reply.json["code"] == 40300
    assert up.sim.counters.pow_reject_reasons == {"reused": 1}


async def test_wrong_answer_signature_and_target_path_are_rejected(up: Upstream) -> None:
    token, session = await up.ready()
    challenge = await up.challenge(token)
    answer = up.sim.challenges.answer_for(challenge.salt)
    assert answer is not None
    await _rejected(up, token, session, dspow.pow_header(challenge, (answer + 1) % challenge.difficulty))
    forged = dspow.Challenge.from_json({**_challenge_json(challenge), "signature": "0" * 64})
    await _rejected(up, token, session, dspow.pow_header(forged, answer))
    moved = dspow.Challenge.from_json({**_challenge_json(challenge), "target_path": "/api/v0/file/upload_file"})
    await _rejected(up, token, session, dspow.pow_header(moved, answer))
    upload = await up.challenge(token, "/api/v0/file/upload_file")
    upload_answer = up.sim.challenges.answer_for(upload.salt)
    await _rejected(up, token, session, dspow.pow_header(upload, upload_answer or 0))
    assert up.sim.counters.pow_reject_reasons == {"answer": 1, "signature": 2, "target_path": 1}
    assert up.sim.counters.pow_rejects == 4


def _challenge_json(challenge: dspow.Challenge) -> dict[str, Any]:
    return {"algorithm": challenge.algorithm, "challenge": challenge.challenge, "salt": challenge.salt,
            "signature": challenge.signature, "difficulty": challenge.difficulty, "expire_at": challenge.expire_at,
            "expire_after": challenge.expire_after, "target_path": challenge.target_path}


async def test_reused_challenge_is_rejected(up: Upstream) -> None:
    token, session = await up.ready()
    header = await up.pow(token)
    first = await up.post(COMPLETION, up.body(session, "once"), token, {"x-ds-pow-response": header})
    assert first.content_type == "text/event-stream"
    await _rejected(up, token, session, header)
    assert up.sim.counters.pow_reject_reasons == {"reused": 1}


async def test_expired_challenge_is_rejected(make: MakeSim) -> None:
    up = await make(pow_expire_ms=0)  # expires the millisecond it is issued
    token, session = await up.ready()
    await _rejected(up, token, session, await up.pow(token))
    assert up.sim.counters.pow_reject_reasons == {"expired": 1}


# --- streams ------------------------------------------------------------------------------


@pytest.mark.parametrize(("thinking", "search"), [(False, False), (True, False), (False, True), (True, True)])
async def test_stream_matches_the_deterministic_text(make: MakeSim, thinking: bool, search: bool) -> None:
    up = await make(thinking_tokens=30, answer_tokens=70, cite_every=9)
    token, session = await up.ready()
    prompt = "Explain SSE 流式 🚀"
    reply = await up.complete(token, session, prompt, thinking, search)
    assert reply.content_type == "text/event-stream"
    blocks = parse_sse(reply.body)
    state = MiniG3().feed(blocks)
    want = expected(prompt, thinking, search, up.sim.config)
    assert state.text("THINK") == want.reasoning
    assert state.text("RESPONSE") == want.answer
    assert want.answer.startswith(answer_prefix(prompt))
    assert state.response["status"] == "FINISHED"
    assert state.response["accumulated_token_usage"] == want.usage
    assert all(f.get("status", "FINISHED") == "FINISHED" for f in state.response["fragments"])
    assert (bool(want.reasoning), bool(want.citations)) == (thinking, search)
    if search:
        _check_citations(state, want)
    assert events(blocks) == ["ready", "update_session", "finish", "update_session", "title", "close"]
    assert blocks[0].json == {"request_message_id": 1, "response_message_id": 2, "model_type": "default"}


def _check_citations(state: MiniG3, want: Any) -> None:
    fragments = {f["id"]: f for f in state.response["fragments"]}
    response = next(f for f in state.response["fragments"] if f["type"] == "RESPONSE")
    markers = re.findall(r"\[reference:(\d+)\]", response["content"])
    assert [int(m) for m in markers] == list(range(len(response["references"]))) == [c.index for c in want.citations]
    for ref, citation in zip(response["references"], want.citations):
        source = fragments[ref["id"]]
        assert (source["type"], ref["id"]) == (citation.fragment_type, citation.fragment_id)
        url = source["result"]["url"] if source["type"] == "TOOL_OPEN" else source["results"][0]["url"]
        assert url == citation.url
    results = [r for f in fragments.values() if f["type"] == "TOOL_SEARCH" for r in f["results"]]
    assert results and all({"url", "title", "snippet", "site_name"} <= set(r) for r in results)


async def test_thinking_stream_has_the_shape_of_the_2026_capture(up: Upstream) -> None:
    token, session = await up.ready()
    reply = await up.complete(token, session, "markdown please", thinking=True)
    ours = parse_sse(reply.body)
    theirs = parse_sse(capture("new-thinking-plain-answer-20260405.txt"))
    assert collapsed(ours) == collapsed(theirs)
    ours_snapshot = next(b.json for b in ours if signature(b) == ("snapshot",))["v"]["response"]
    theirs_snapshot = next(b.json for b in theirs if signature(b) == ("snapshot",))["v"]["response"]
    assert set(theirs_snapshot) <= set(ours_snapshot)
    assert set(theirs_snapshot["fragments"][0]) == set(ours_snapshot["fragments"][0])


async def test_search_stream_uses_only_frame_shapes_of_the_search_capture(make: MakeSim) -> None:
    up = await make(thinking_tokens=30, answer_tokens=60, cite_every=6)
    token, session = await up.ready()
    reply = await up.complete(token, session, "weather", thinking=True, search=True)
    ours = {signature(b) for b in parse_sse(reply.body)}
    theirs = {signature(b) for b in parse_sse(capture("new-reasoner-search-citations-20260403.txt"))}
    assert ours - theirs <= {("event", "title"), ("event", "close")}  # the capture stops before them
    assert {("comment",), (("p", "o", "v"), "response/fragments/N", "BATCH", "list"),
            (("v",), "", None, "list")} <= ours


async def test_message_ids_count_up_by_two_and_title_only_on_the_first_turn(up: Upstream) -> None:
    token, session = await up.ready()
    first = parse_sse((await up.complete(token, session, "one")).body)
    second = parse_sse((await up.complete(token, session, "two", parent=2)).body)
    assert first[0].json["response_message_id"] == 2
    assert (second[0].json["request_message_id"], second[0].json["response_message_id"]) == (3, 4)
    assert "title" in events(first) and "title" not in events(second)
    assert MiniG3().feed(second).response["parent_id"] == 3


async def test_chunked_frames_carry_the_same_text(make: MakeSim) -> None:
    up = await make(thinking_tokens=40, answer_tokens=50, chunk=1)
    token, session = await up.ready()
    one = parse_sse((await up.complete(token, session, "same", thinking=True)).body)
    three = parse_sse((await up.complete(token, session, "same [[sim:chunk=3]]", thinking=True)).body)
    four = parse_sse((await up.complete(token, session, "same [[sim:chunk=3]]", thinking=True)).body)
    assert len(three) < len(one) / 2
    assert MiniG3().feed(three).text("RESPONSE") == MiniG3().feed(four).text("RESPONSE")
    assert MiniG3().feed(three).text("RESPONSE") == expected("same [[sim:chunk=3]]", True, False, up.sim.config).answer


async def test_keepalive_comments_appear_every_n_text_frames(make: MakeSim) -> None:
    up = await make(answer_tokens=50, keepalive_every=10)
    token, session = await up.ready()
    blocks = parse_sse((await up.complete(token, session, "keepalive")).body)
    assert sum(b.comment for b in blocks) == 4
    assert MiniG3().feed(blocks).text("RESPONSE") == expected("keepalive", False, False, up.sim.config).answer


async def test_requests_are_recorded_as_received(up: Upstream) -> None:
    token, session = await up.ready()
    await up.complete(token, session, "recorded", thinking=True, search=False)
    received = up.sim.requests[-1]
    assert (received.prompt, received.thinking, received.search) == ("recorded", True, False)
    assert "x-ds-pow-response" in {k.lower() for k in received.headers}
    assert received.account is not None


# --- the text function ----------------------------------------------------------------------


def test_expected_is_deterministic_and_tells_prompts_apart() -> None:
    config = SimConfig(thinking_tokens=400, answer_tokens=600)
    first = expected("alpha", True, False, config)
    assert first == expected("alpha", True, False, config)
    other = expected("beta", True, False, config)
    assert first.answer != other.answer and first.reasoning != other.reasoning
    assert first.answer.startswith(answer_prefix("alpha")) and "5]" in answer_prefix("alpha")
    text = first.reasoning + first.answer
    assert any(len(ch.encode()) == 3 for ch in text) and any(len(ch.encode()) == 4 for ch in text)
    assert {" ", "\n", "\t"} <= set(text)
    assert first.usage == 400 + 600
    assert expected("alpha [[sim:tokens=7]]", False, False, config).usage == 7
    assert all(tok for tok in VOCAB)


# --- one generation per account ------------------------------------------------------------


async def test_second_concurrent_generation_gets_the_busy_error(up: Upstream) -> None:
    token, session = await up.ready()
    running = await up.open_stream(token, session, "long [[sim:tokens=100000]] [[sim:delay=0.05]]")
    head = await read_blocks_until(running, lambda b: len(b) >= 3)
    other_session = await up.session(token)
    busy = await up.complete(token, other_session, "second")
    blocks = parse_sse(busy.body)
    assert events(blocks) == ["ready", "hint", "close"]
    assert blocks[1].json["content"] == "A message is being generated, please try again later."
    assert blocks[1].json["type"] == "error"
    counters = up.sim.counters
    assert (counters.parallel_violations, counters.max_active_per_account) == (1, 2)
    await up.stop_stream(token, session, 2)
    blocks = parse_sse(head + await running.read())
    running.release()
    assert MiniG3().feed(blocks).response["status"] == "INCOMPLETE"
    other_account = await up.login("second@example.com")
    assert (await up.complete(other_account, await up.session(other_account), "free")).content_type == (
        "text/event-stream")


async def test_stop_stream_ends_the_stream_incomplete(up: Upstream) -> None:
    token, session = await up.ready()
    running = await up.open_stream(token, session, "stop me [[sim:tokens=100000]] [[sim:delay=0.02]]", thinking=True)
    head = await read_blocks_until(running, lambda b: len(b) >= 4)
    stopped = await up.stop_stream(token, session, 2)
    assert stopped.json["data"]["biz_data"] is None
    blocks = parse_sse(head + await running.read())
    running.release()
    state = MiniG3().feed(blocks)
    assert state.response["status"] == "INCOMPLETE"
    assert state.response["quasi_status"] == "INCOMPLETE"
    assert events(blocks)[-1] == "close"
    assert (up.sim.counters.stops, up.sim.counters.incomplete) == (1, 1)
    assert up.sim.account(token).generation is None  # type: ignore[union-attr]


# --- incomplete and continue -----------------------------------------------------------------


async def test_incomplete_then_continue_completes_the_message(make: MakeSim) -> None:
    up = await make(thinking_tokens=40, answer_tokens=30)
    token, session = await up.ready()
    up.sim.inject("incomplete", account=EMAIL, tokens=20)
    first = parse_sse((await up.complete(token, session, "resume me", thinking=True)).body)
    state = MiniG3().feed(first)
    assert state.response["status"] == "INCOMPLETE"
    delivered = state.text("THINK")
    assert state.response["fragments"][-1]["elapsed_secs"] is not None
    assert collapsed(first)[-6:] == collapsed(parse_sse(capture("new-completion-ends-incomplete-20260405.txt")))[-6:]

    resumed = await up.continue_(token, session, 2)
    assert resumed.content_type == "text/event-stream"
    blocks = parse_sse(resumed.body)
    assert blocks[0].json == first[0].json  # the same message ids
    assert events(blocks) == ["ready", "update_session", "finish", "update_session", "close"]
    snapshot = next(b.json for b in blocks if signature(b) == ("snapshot",))["v"]["response"]
    resent = snapshot["fragments"][0]["content"]
    assert resent.startswith(delivered) and len(resent) > len(delivered)  # text the first stream never sent
    assert snapshot["accumulated_token_usage"] > 0
    final = MiniG3().feed(blocks)
    want = expected("resume me", True, False, up.sim.config)
    assert (final.text("THINK"), final.text("RESPONSE")) == (want.reasoning, want.answer)
    assert final.response["accumulated_token_usage"] == want.usage
    assert collapsed(blocks)[:5] == collapsed(parse_sse(capture("new-continue-resume-20260405.txt")))[:5]
    assert up.sim.counters.continues == 1
    again = await up.continue_(token, session, 2)
    assert again.json["data"]["biz_code"] == 26  # nothing left to continue


async def test_incomplete_directive_cut_in_the_answer_and_continued(up: Upstream) -> None:
    token, session = await up.ready()
    prompt = "cut [[sim:incomplete=15]]"
    first = MiniG3().feed(parse_sse((await up.complete(token, session, prompt)).body))
    assert first.response["status"] == "INCOMPLETE"
    final = MiniG3().feed(parse_sse((await up.continue_(token, session, 2)).body))
    assert final.text("RESPONSE") == expected(prompt, False, False, up.sim.config).answer
    assert final.response["status"] == "FINISHED"


# --- faults and directives ---------------------------------------------------------------------


async def test_rate_limit_fault_is_the_synthetic_hint_stream(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("rate_limit", account=EMAIL)
    limited = await up.complete(token, session, "x")
    assert limited.body == capture("synthetic-hint-rate-limit.txt")
    assert (await up.complete(token, session, "x")).body != limited.body  # count=1 used up
    assert up.sim.counters.hints == 1


async def test_input_too_long_directive_is_the_synthetic_hint_stream(up: Upstream) -> None:
    token, session = await up.ready()
    reply = await up.complete(token, session, "long [[sim:input_too_long]]")
    assert reply.body == capture("synthetic-hint-input-too-long.txt")


async def test_busy_fault_and_directive(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("busy")
    for prompt in ("x", "[[sim:busy]]"):
        blocks = parse_sse((await up.complete(token, session, prompt)).body)
        assert events(blocks) == ["ready", "hint", "close"]
        assert "being generated" in blocks[1].json["content"]
    assert up.sim.counters.parallel_violations == 0


async def test_muted_fault_gives_the_muted_body_until_reset(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("muted", account=token, seconds=600)
    reply = await up.complete(token, session, "x")
    assert reply.content_type == "application/json"
    body = reply.json
    fixture = json.loads(capture("error-biz5-user-muted.txt"))
    assert body["data"]["biz_msg"] == fixture["data"]["biz_msg"] and body["data"]["biz_code"] == 5
    assert set(body["data"]["biz_data"]) == set(fixture["data"]["biz_data"])
    mute_until = body["data"]["biz_data"]["mute_until"]
    assert mute_until > up.sim.requests[-1].at + 590
    assert (await up.complete(token, session, "still")).json["data"]["biz_code"] == 5  # it persists
    current = await up.http.get(up.base + "/api/v0/users/current", headers={"Authorization": f"Bearer {token}"})
    assert (await current.json())["data"]["biz_data"]["chat"]["is_muted"] == 1
    up.sim.reset()
    assert (await up.complete(token, session, "free")).content_type == "text/event-stream"


async def test_muted_directive(up: Upstream) -> None:
    token, session = await up.ready()
    assert (await up.complete(token, session, "[[sim:muted=60]]")).json["data"]["biz_code"] == 5
    assert up.sim.counters.muted_rejections == 1


async def test_content_filter_ends_like_the_capture(up: Upstream) -> None:
    token, session = await up.ready()
    prompt = "filtered [[sim:content_filter]]"
    blocks = parse_sse((await up.complete(token, session, prompt, thinking=True)).body)
    state = MiniG3().feed(blocks)
    assert state.response["status"] == "CONTENT_FILTER"
    assert state.response["quasi_status"] == "CONTENT_FILTER"
    assert [f["type"] for f in state.response["fragments"]] == ["TEMPLATE_RESPONSE"]
    theirs = parse_sse(capture("new-content-filter-20260405.txt"))
    assert collapsed(blocks)[-8:] == collapsed(theirs)[-8:]
    ours_last, theirs_last = _last_data(blocks), _last_data(theirs)
    theirs_last["v"][2]["v"][0]["id"] = ours_last["v"][2]["v"][0]["id"]
    assert ours_last == theirs_last
    assert up.sim.counters.content_filtered == 1


def _last_data(blocks: list[Block]) -> Any:
    return [b for b in blocks if b.event is None and b.data is not None][-1].json


async def test_content_filter_fault_counts_down(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("content_filter", count=2)
    statuses = [MiniG3().feed(parse_sse((await up.complete(token, session, "x")).body)).response["status"]
                for _ in range(3)]
    assert statuses == ["CONTENT_FILTER", "CONTENT_FILTER", "FINISHED"]


async def test_drop_aborts_the_connection_and_frees_the_slot(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("drop", account=EMAIL, frames=5)
    resp = await up.open_stream(token, session, "dropped")
    raw = b""
    with pytest.raises(aiohttp.ClientError):
        while chunk := await resp.content.readany():
            raw += chunk
    resp.release()
    assert "close" not in events(parse_sse(raw[: raw.rfind(b"\n\n") + 2]))
    assert (up.sim.counters.drops, up.sim.counters.disconnects) == (1, 0)
    again = await up.complete(token, session, "after the drop")
    assert events(parse_sse(again.body))[-1] == "close" and "hint" not in events(parse_sse(again.body))


async def test_drop_directive(up: Upstream) -> None:
    token, session = await up.ready()
    resp = await up.open_stream(token, session, "[[sim:drop=3]]")
    with pytest.raises(aiohttp.ClientError):
        while await resp.content.readany():
            pass
    resp.release()
    assert up.sim.counters.drops == 1


async def test_expired_token_fault_and_directive(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("expired_token", account=EMAIL)
    assert (await up.post("/api/v0/chat_session/create", {}, token)).body == capture("error-40003-invalid-token.txt")
    token = await up.login()
    session = await up.session(token)
    reply = await up.complete(token, session, "[[sim:expired_token]]")
    assert reply.body == capture("error-40003-invalid-token.txt")
    assert (await up.post("/api/v0/chat_session/create", {}, token)).body == capture("error-40003-invalid-token.txt")


async def test_invalid_session_directive(up: Upstream) -> None:
    token, session = await up.ready()
    reply = await up.complete(token, session, "[[sim:invalid_session]]")
    assert reply.body == capture("error-biz1-invalid-chat-session.txt")


async def test_faults_for_one_account_leave_others_alone(up: Upstream) -> None:
    token, session = await up.ready()
    other = await up.login("bystander@example.com")
    up.sim.inject("rate_limit", account=EMAIL)
    assert "hint" not in events(parse_sse((await up.complete(other, await up.session(other), "x")).body))
    assert "hint" in events(parse_sse((await up.complete(token, session, "x")).body))


async def test_slow_first_byte_sends_nothing_then_a_hang_up_frees_the_slot(up: Upstream) -> None:
    token, session = await up.ready()
    up.sim.inject("slow_first_byte", seconds=60)
    header = await up.pow(token)
    with pytest.raises(asyncio.TimeoutError):
        await up.http.post(up.base + COMPLETION, json=up.body(session, "slow"),
                           headers={"Authorization": f"Bearer {token}", "x-ds-pow-response": header},
                           timeout=aiohttp.ClientTimeout(sock_read=0.2))
    await eventually(lambda: up.sim.counters.disconnects == 1)
    assert up.sim.account(token).generation is None  # type: ignore[union-attr]


async def test_client_disconnect_ends_the_generation_at_once(up: Upstream) -> None:
    token, session = await up.ready()
    running = await up.open_stream(token, session, "[[sim:tokens=100000]] [[sim:delay=0.05]]")
    await read_blocks_until(running, lambda b: len(b) >= 4)
    running.close()
    await eventually(lambda: up.sim.counters.disconnects == 1)
    assert up.sim.account(token).generation is None  # type: ignore[union-attr]
    assert up.sim.counters.active_streams == 0
    reply = await up.complete(token, session, "next")
    assert "hint" not in events(parse_sse(reply.body))


async def test_tokens_directive_and_first_turn_model_type(up: Upstream) -> None:
    token, session = await up.ready()
    state = MiniG3().feed(parse_sse((await up.complete(token, session, "[[sim:tokens=3]]")).body))
    assert state.response["accumulated_token_usage"] == 3


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError):
        Simulator().inject("meteor")


# --- the CLI and the control endpoints -------------------------------------------------------------


async def test_cli_serves_and_control_endpoints_work() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ds2a.sim", "--host", "127.0.0.1", "--port", "0", "--answer-tokens", "5",
        "--thinking-tokens", "3", "--difficulty", "50",
        cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        base = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
        async with aiohttp.ClientSession() as http:
            token = await _cli_login(http, base)
            async with http.post(base + "/_sim/config", json={"answer_tokens": 9, "delay": 0}) as resp:
                assert (await resp.json())["answer_tokens"] == 9
            async with http.post(base + "/_sim/faults", json={"fault": "rate_limit", "account": None, "count": 1,
                                                              "params": {}}) as resp:
                assert resp.status == 200
            async with http.post(base + "/_sim/faults", json={"fault": "nope"}) as resp:
                assert resp.status == 400
            assert "hint" in events(parse_sse(await _cli_complete(http, base, token)))
            state = MiniG3().feed(parse_sse(await _cli_complete(http, base, token)))
            assert state.response["accumulated_token_usage"] == 3 + 9  # thinking + answer tokens
            async with http.get(base + "/_sim/counters") as resp:
                counters = await resp.json()
            assert (counters["hints"], counters["completions"], counters["logins"]) == (1, 1, 1)
            async with http.get(base + "/_sim/requests") as resp:
                assert [r["prompt"] for r in await resp.json()] == ["via cli", "via cli"]
            async with http.post(base + "/_sim/reset") as resp:
                assert resp.status == 200
            async with http.get(base + "/_sim/counters") as resp:
                assert (await resp.json())["completions"] == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def _cli_login(http: aiohttp.ClientSession, base: str) -> str:
    body = {"email": EMAIL, "password": PASSWORD, "device_id": "d", "os": "android"}
    async with http.post(base + "/api/v0/users/login", json=body) as resp:
        return (await resp.json())["data"]["biz_data"]["user"]["token"]


async def _cli_complete(http: aiohttp.ClientSession, base: str, token: str) -> bytes:
    auth = {"Authorization": f"Bearer {token}"}
    async with http.post(base + "/api/v0/chat_session/create", json={}, headers=auth) as resp:
        session = (await resp.json())["data"]["biz_data"]["chat_session"]["id"]
    async with http.post(base + "/api/v0/chat/create_pow_challenge", json={"target_path": COMPLETION},
                         headers=auth) as resp:
        challenge = dspow.Challenge.from_json((await resp.json())["data"]["biz_data"]["challenge"])
    header = dspow.pow_header(challenge, await dspow.solve_async(challenge))
    body = {"chat_session_id": session, "prompt": "via cli", "thinking_enabled": True, "search_enabled": False}
    async with http.post(base + COMPLETION, json=body, headers={**auth, "x-ds-pow-response": header}) as resp:
        return await resp.read()
