"""DeepSeekClient against small aiohttp stub servers on real loopback sockets.

The stubs answer with the real upstream bodies from ../shared/fixtures/sse byte for
byte and record what they were sent. Timeouts are provoked with short configured
limits; the generous ``GUARD`` around some awaits only turns "the short limit was
never applied" into a failure instead of a hang, it measures nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from conftest import capture, capture_names

from ds2a.config import DeepSeekConfig
from ds2a.deepseek.client import Completion, DeepSeekClient
from ds2a.deepseek.errors import DeepSeekError, ErrorKind
from ds2a.deepseek.pow import COMPLETION_PATH, Challenge

TOKEN = "tok-SECRET-7f3a9c1e5b"
PASSWORD = "pw-SECRET-hunter2-x9"
POW = "eyJhbGdvcml0aG0iOiJEZWVwU2Vla0hhc2hWMSJ9"
GUARD = 10.0  # far above every short limit used below; see the module docstring

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[Any, ...]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Stub:
    """A tiny upstream: one handler per path, every request recorded."""

    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends stalled handlers
    url: str = ""
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else ()
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body, tuple(peer)))
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text="no stub route")
        return await handler(request)

    def on(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    @property
    def peers(self) -> set[tuple[Any, ...]]:
        return {s.peer for s in self.seen}

    def last(self, path: str) -> Seen:
        return [s for s in self.seen if s.path == path][-1]


def body(
    raw: bytes, *, status: int = 200, content_type: str = "application/json", headers: dict[str, str] | None = None
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=raw, status=status, headers=headers)
        response.content_type = content_type
        return response

    return handler


def ok(biz_data: Any) -> Handler:
    envelope = {"code": 0, "msg": "", "data": {"biz_code": 0, "biz_msg": "", "biz_data": biz_data}}
    return body(json.dumps(envelope).encode())


def stream(
    raw: bytes,
    *,
    chunk: int = 997,
    stop_after: int | None = None,
    then: str = "end",
    stub: Stub | None = None,
) -> Handler:
    """Serve ``raw`` as text/event-stream in ``chunk``-byte writes; after ``stop_after``
    writes either ``stall`` (until the stub is released) or ``drop`` the connection."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        pieces = [raw[i : i + chunk] for i in range(0, len(raw), chunk)]
        for n, piece in enumerate(pieces):
            if stop_after is not None and n == stop_after:
                if then == "drop":
                    assert request.transport is not None
                    request.transport.close()
                    return response
                assert stub is not None
                await stub.release.wait()
                return response
            await response.write(piece)
        await response.write_eof()
        return response

    return handler


def stall_before_head(stub: Stub) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await stub.release.wait()
        return web.Response(text="late")

    return handler


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    server = Stub()
    await server.start()
    yield server
    await server.stop()


def make_config(url: str, **overrides: Any) -> DeepSeekConfig:
    settings: dict[str, Any] = dict(
        base_url=url,
        user_agent="DeepSeek/9.9.9 Android/99",
        client_version="9.9.9",
        client_platform="android",
        client_locale="en_US",
        extra_headers={"x-client-bundle-id": "com.deepseek.chat"},
        model_type="expert",
        connect_timeout=2.0,
        first_byte_timeout=5.0,
        idle_timeout=5.0,
        request_timeout=5.0,
        pool_limit=8,
    )
    settings.update(overrides)
    return DeepSeekConfig(**settings)


@pytest.fixture
async def client(stub: Stub) -> AsyncIterator[DeepSeekClient]:
    async with DeepSeekClient(make_config(stub.url)) as c:
        yield c


async def read_all(completion: Completion) -> bytes:
    parts = []
    while chunk := await completion.read():
        parts.append(chunk)
    return b"".join(parts)


async def raises(awaitable: Awaitable[Any]) -> DeepSeekError:
    with pytest.raises(DeepSeekError) as info:
        await asyncio.wait_for(awaitable, GUARD)
    return info.value


async def start_completion(client: DeepSeekClient, **kw: Any) -> Completion:
    args: dict[str, Any] = dict(session_id="sess-1", pow_response=POW, prompt="hi", thinking=False, search=False)
    args.update(kw)
    return await client.completion(TOKEN, **args)


# --- login --------------------------------------------------------------------------


async def test_login_by_email_sends_the_documented_body(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/login", ok({"user": {"token": "new-token", "email": "a***@x.com"}}))
    assert await client.login(email="a@x.com", password=PASSWORD) == "new-token"
    seen = stub.last("/api/v0/users/login")
    assert seen.method == "POST"
    assert set(seen.json) == {"email", "password", "device_id", "os"}
    assert seen.json["email"] == "a@x.com" and seen.json["password"] == PASSWORD
    assert isinstance(seen.json["device_id"], str) and seen.json["device_id"]
    assert seen.json["os"] == "android"
    assert "Authorization" not in seen.headers
    assert seen.headers["Content-Type"] == "application/json"


async def test_login_by_mobile_sends_mobile_and_area_code(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/login", ok({"user": {"token": "t2"}}))
    assert await client.login(mobile="13800000000", area_code="+86", password=PASSWORD) == "t2"
    sent = stub.last("/api/v0/users/login").json
    assert set(sent) == {"mobile", "area_code", "password", "device_id", "os"}
    assert sent["mobile"] == "13800000000" and sent["area_code"] == "+86"


async def test_device_id_is_stable_per_account_and_differs_between_accounts(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/login", ok({"user": {"token": "t"}}))
    await client.login(email="a@x.com", password=PASSWORD)
    await client.login(email="a@x.com", password=PASSWORD)
    await client.login(email="b@x.com", password=PASSWORD)
    ids = [s.json["device_id"] for s in stub.seen]
    assert ids[0] == ids[1] != ids[2]


async def test_wrong_password_is_login_failed_with_the_upstream_message(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/login", body(capture("error-login-wrong-password.txt")))
    error = await raises(client.login(email="a@x.com", password=PASSWORD))
    assert error.kind is ErrorKind.LOGIN_FAILED
    assert error.message == "PASSWORD_OR_USER_NAME_IS_WRONG"
    assert error.biz_code == 2


async def test_login_needs_an_identity_and_prefers_email(stub: Stub, client: DeepSeekClient) -> None:
    with pytest.raises(ValueError):
        await client.login(password=PASSWORD)
    stub.on("/api/v0/users/login", ok({"user": {"token": "t"}}))
    await client.login(email="a@x.com", mobile="13800000000", password=PASSWORD)
    sent = stub.last("/api/v0/users/login").json
    assert sent["email"] == "a@x.com" and "mobile" not in sent


async def test_login_answer_without_token_is_protocol(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/login", ok({"user": {}}))
    assert (await raises(client.login(email="a@x.com", password=PASSWORD))).kind is ErrorKind.PROTOCOL


async def test_cookies_are_not_carried_between_calls(stub: Stub) -> None:
    # Accounts share one session: a cookie given to one login must not follow other calls.
    async def login(request: web.Request) -> web.StreamResponse:
        envelope = {"code": 0, "msg": "", "data": {"biz_code": 0, "biz_msg": "", "biz_data": {"user": {"token": "t"}}}}
        response = web.json_response(envelope)
        response.set_cookie("ds_session_id", "account-a")
        return response

    stub.on("/api/v0/users/login", login)
    stub.on("/api/v0/users/current", ok({"token": "t"}))
    # By name: aiohttp's default jar ignores cookies from bare IP addresses anyway.
    async with DeepSeekClient(make_config(stub.url.replace("127.0.0.1", "localhost"))) as client:
        await client.login(email="a@x.com", password=PASSWORD)
        await client.current_user("other-token")
    assert "Cookie" not in stub.last("/api/v0/users/current").headers


# --- token check, sessions -------------------------------------------------------------


async def test_current_user_sends_the_token_and_personality(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/current", ok({"token": TOKEN, "email": "a***@x.com"}))
    user = await client.current_user(TOKEN)
    assert user["email"] == "a***@x.com"
    seen = stub.last("/api/v0/users/current")
    assert seen.method == "GET"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["User-Agent"] == "DeepSeek/9.9.9 Android/99"
    assert seen.headers["x-client-version"] == "9.9.9"
    assert seen.headers["x-client-platform"] == "android"
    assert seen.headers["x-client-locale"] == "en_US"
    assert seen.headers["x-client-bundle-id"] == "com.deepseek.chat"
    assert seen.headers["Accept"] == "*/*"  # the web client's (§16.2)


@pytest.mark.parametrize(
    "name, code, message",
    [
        ("error-40002-missing-token.txt", 40002, "Missing Token"),
        ("error-40003-invalid-token.txt", 40003, "Authorization Failed (invalid token)"),
    ],
)
async def test_current_user_token_errors_are_auth(
    stub: Stub, client: DeepSeekClient, name: str, code: int, message: str
) -> None:
    stub.on("/api/v0/users/current", body(capture(name)))
    error = await raises(client.current_user(TOKEN))
    assert error.kind is ErrorKind.AUTH
    assert error.code == code
    assert error.message == message


@pytest.mark.parametrize(
    "biz_data",
    [
        {"chat_session": {"id": "463764d5-aaaa", "seq_id": 1, "agent": "chat"}, "ttl_seconds": 259200},
        {"id": "463764d5-aaaa", "current_message_id": None},
    ],
    ids=["chat_session.id", "id"],
)
async def test_create_session_accepts_both_shapes(stub: Stub, client: DeepSeekClient, biz_data: dict[str, Any]) -> None:
    stub.on("/api/v0/chat_session/create", ok(biz_data))
    assert await client.create_session(TOKEN) == "463764d5-aaaa"
    seen = stub.last("/api/v0/chat_session/create")
    assert seen.method == "POST" and seen.json == {}
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_create_session_without_id_is_protocol(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/chat_session/create", ok({"chat_session": {}}))
    assert (await raises(client.create_session(TOKEN))).kind is ErrorKind.PROTOCOL


async def test_delete_session_body(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/chat_session/delete", ok(None))
    assert await client.delete_session(TOKEN, "sess-9") is None
    assert stub.last("/api/v0/chat_session/delete").json == {"chat_session_id": "sess-9"}


# --- proof-of-work challenge ------------------------------------------------------------

CHALLENGE = {
    "algorithm": "DeepSeekHashV1",
    "challenge": "38c282a8dfab4b018b6c2466b600f572a4caa68367e8ff05db40779f6f329f3b",
    "salt": "404e9b1b931574575ab7",
    "signature": "38439763bdd41bc5106906a5abec6bf2b12dfd33a9e194b1a44d160c2f80c1f6",
    "difficulty": 144000,
    "expire_at": 1772967221890,
    "expire_after": 300000,
    "target_path": "/api/v0/chat/completion",
}


async def test_challenge_is_parsed(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/chat/create_pow_challenge", ok({"challenge": CHALLENGE}))
    challenge = await client.create_pow_challenge(TOKEN)
    assert challenge == Challenge.from_json(CHALLENGE)
    assert challenge.salt == "404e9b1b931574575ab7" and challenge.difficulty == 144000
    assert stub.last("/api/v0/chat/create_pow_challenge").json == {"target_path": COMPLETION_PATH}


async def test_challenge_for_another_target_path(stub: Stub, client: DeepSeekClient) -> None:
    upload = {**CHALLENGE, "target_path": "/api/v0/file/upload_file"}
    stub.on("/api/v0/chat/create_pow_challenge", ok({"challenge": upload}))
    challenge = await client.create_pow_challenge(TOKEN, "/api/v0/file/upload_file")
    assert challenge.target_path == "/api/v0/file/upload_file"
    assert stub.last("/api/v0/chat/create_pow_challenge").json == {"target_path": "/api/v0/file/upload_file"}


async def test_unknown_pow_algorithm_is_a_clear_error(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/chat/create_pow_challenge", ok({"challenge": {**CHALLENGE, "algorithm": "DeepSeekHashV2"}}))
    error = await raises(client.create_pow_challenge(TOKEN))
    assert error.kind is ErrorKind.POW
    assert "DeepSeekHashV2" in error.message


# --- completion: request -------------------------------------------------------------------


async def test_completion_request_body_and_headers(stub: Stub, client: DeepSeekClient) -> None:
    stub.on(COMPLETION_PATH, stream(capture("new-plain-chat-nonthinking-20251121.txt")))
    async with await start_completion(
        client, prompt="你好", thinking=True, search=True, parent_message_id=2, ref_file_ids=["file-1"]
    ) as completion:
        await read_all(completion)
    seen = stub.last(COMPLETION_PATH)
    assert seen.method == "POST"
    assert seen.json == {
        "chat_session_id": "sess-1",
        "parent_message_id": 2,
        "model_type": "expert",
        "prompt": "你好",
        "ref_file_ids": ["file-1"],
        "thinking_enabled": True,
        "search_enabled": True,
        "preempt": False,
    }
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["x-ds-pow-response"] == POW
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == "DeepSeek/9.9.9 Android/99"
    assert seen.headers["x-client-version"] == "9.9.9"
    assert seen.headers["x-client-locale"] == "en_US"
    assert seen.headers["x-client-bundle-id"] == "com.deepseek.chat"


async def test_completion_first_turn_defaults(stub: Stub, client: DeepSeekClient) -> None:
    stub.on(COMPLETION_PATH, stream(capture("new-plain-chat-nonthinking-20251121.txt")))
    async with await start_completion(client) as completion:
        await read_all(completion)
    sent = stub.last(COMPLETION_PATH).json
    assert sent["parent_message_id"] is None and sent["ref_file_ids"] == []
    assert sent["thinking_enabled"] is False and sent["search_enabled"] is False


# --- completion: streaming ------------------------------------------------------------------


# Without ../shared the list is empty; one name keeps the test visible, and capture() then skips it.
STREAMS = [n for n in capture_names() if n.startswith("new-")] or ["new-plain-chat-nonthinking-20251121.txt"]


@pytest.mark.parametrize("name", STREAMS)
async def test_stream_is_relayed_byte_for_byte(stub: Stub, client: DeepSeekClient, name: str) -> None:
    raw = capture(name)
    stub.on(COMPLETION_PATH, stream(raw, chunk=4093))
    completion = await start_completion(client)
    chunks = []
    while chunk := await completion.read():
        chunks.append(chunk)
    assert await completion.read() == b""  # stays at the end
    completion.release()
    assert b"".join(chunks) == raw


async def test_completion_trace_id(stub: Stub, client: DeepSeekClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-ds-trace-id": "trace-42"})
        await response.prepare(request)
        await response.write(b"event: close\ndata: {}\n\n")
        return response

    stub.on(COMPLETION_PATH, handler)
    async with await start_completion(client) as completion:
        assert completion.trace_id == "trace-42"
        assert await read_all(completion) == b"event: close\ndata: {}\n\n"


@pytest.mark.parametrize(
    "name, kind, message",
    [
        ("error-biz5-user-muted.txt", ErrorKind.MUTED, "user is muted"),
        ("error-biz1-invalid-chat-session.txt", ErrorKind.INVALID_SESSION, "invalid chat session id"),
        ("error-40300-missing-header.txt", ErrorKind.POW, "MISSING_HEADER"),
    ],
)
async def test_json_answer_instead_of_stream_raises(
    stub: Stub, client: DeepSeekClient, name: str, kind: ErrorKind, message: str
) -> None:
    stub.on(COMPLETION_PATH, body(capture(name)))
    error = await raises(start_completion(client))
    assert error.kind is kind
    assert error.message == message


async def test_muted_carries_mute_until(stub: Stub, client: DeepSeekClient) -> None:
    stub.on(COMPLETION_PATH, body(capture("error-biz5-user-muted.txt")))
    error = await raises(start_completion(client))
    assert error.kind is ErrorKind.MUTED
    assert error.biz_code == 5
    assert error.mute_until == 1789173841.894


async def test_success_envelope_instead_of_stream_is_protocol(stub: Stub, client: DeepSeekClient) -> None:
    stub.on(COMPLETION_PATH, ok({}))
    assert (await raises(start_completion(client))).kind is ErrorKind.PROTOCOL


async def test_wrong_content_type_is_protocol(stub: Stub, client: DeepSeekClient) -> None:
    stub.on(COMPLETION_PATH, body(b"challenge", content_type="text/plain"))
    error = await raises(start_completion(client))
    assert error.kind is ErrorKind.PROTOCOL
    assert "text/plain" in error.message


async def test_non_json_body_on_a_call_is_protocol(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/current", body(b"oops", content_type="text/plain"))
    assert (await raises(client.current_user(TOKEN))).kind is ErrorKind.PROTOCOL


async def test_json_that_is_not_an_envelope_is_protocol(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/current", body(b"[1, 2]"))
    assert (await raises(client.current_user(TOKEN))).kind is ErrorKind.PROTOCOL


async def test_rate_limit_envelope_on_http_200(stub: Stub, client: DeepSeekClient) -> None:
    envelope = {"code": 0, "msg": "", "data": {"biz_code": 40029, "biz_msg": "操作过于频繁", "biz_data": None}}
    stub.on("/api/v0/chat_session/create", body(json.dumps(envelope).encode(), headers={"x-fetch-after-sec": "20"}))
    error = await raises(client.create_session(TOKEN))
    assert error.kind is ErrorKind.RATE_LIMITED
    assert error.message == "操作过于频繁"
    assert error.retry_after == 20.0


# --- HTTP statuses --------------------------------------------------------------------------

CALLS: dict[str, Callable[[DeepSeekClient], Awaitable[Any]]] = {
    "session": lambda c: c.create_session(TOKEN),
    "completion": lambda c: start_completion(c),
}
CALL_PATHS = {"session": "/api/v0/chat_session/create", "completion": COMPLETION_PATH}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(
    "status, headers, kind, retry_after",
    [
        (429, {"Retry-After": "7"}, ErrorKind.RATE_LIMITED, 7.0),
        (429, {"x-fetch-after-sec": "30"}, ErrorKind.RATE_LIMITED, 30.0),
        (429, {}, ErrorKind.RATE_LIMITED, None),
        (500, {}, ErrorKind.UNAVAILABLE, None),
        (502, {}, ErrorKind.UNAVAILABLE, None),
        (401, {}, ErrorKind.AUTH, None),
        (403, {}, ErrorKind.AUTH, None),
        (404, {}, ErrorKind.UPSTREAM, None),
    ],
)
async def test_http_status_kinds(
    stub: Stub,
    client: DeepSeekClient,
    call: str,
    status: int,
    headers: dict[str, str],
    kind: ErrorKind,
    retry_after: float | None,
) -> None:
    stub.on(CALL_PATHS[call], body(b"upstream says no", status=status, content_type="text/plain", headers=headers))
    error = await raises(CALLS[call](client))
    assert error.kind is kind
    assert error.http_status == status
    assert error.retry_after == retry_after
    assert str(status) in error.message


async def test_http_401_with_envelope_keeps_the_upstream_words(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/current", body(capture("error-40003-invalid-token.txt"), status=401))
    error = await raises(client.current_user(TOKEN))
    assert error.kind is ErrorKind.AUTH
    assert "Authorization Failed (invalid token)" in error.message


async def test_http_422_is_upstream_with_the_detail_but_not_the_echoed_input(
    stub: Stub, client: DeepSeekClient
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        sent = await request.json()
        detail = [{"type": "missing", "loc": ["body", "device_id"], "msg": "Field required", "input": sent}]
        return web.json_response({"detail": detail}, status=422)

    stub.on("/api/v0/users/login", handler)
    error = await raises(client.login(email="a@x.com", password=PASSWORD))
    assert error.kind is ErrorKind.UPSTREAM
    assert error.http_status == 422
    assert "body.device_id: Field required" in error.message
    assert PASSWORD not in error.message


async def test_waf_challenge_is_named(stub: Stub, client: DeepSeekClient) -> None:
    stub.on(
        "/api/v0/users/current",
        body(b"<html></html>", status=202, content_type="text/html", headers={"x-amzn-waf-action": "challenge"}),
    )
    error = await raises(client.current_user(TOKEN))
    assert error.kind is ErrorKind.BLOCKED  # §16.4: a block, never an auth failure
    assert "WAF" in error.message


async def test_redirects_are_not_followed(stub: Stub, client: DeepSeekClient) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/api/v0/users/elsewhere")

    stub.on("/api/v0/users/current", redirect)
    stub.on("/api/v0/users/elsewhere", ok({"token": "x"}))
    error = await raises(client.current_user(TOKEN))
    assert error.http_status == 302
    assert [s.path for s in stub.seen] == ["/api/v0/users/current"]


# --- timeouts and broken connections ------------------------------------------------------


async def test_idle_timeout_mid_stream(stub: Stub) -> None:
    raw = capture("new-thinking-plain-answer-20260405.txt")
    stub.on(COMPLETION_PATH, stream(raw, chunk=500, stop_after=3, then="stall", stub=stub))
    # A first-byte limit far beyond GUARD: only the idle limit can end this in time.
    async with DeepSeekClient(make_config(stub.url, first_byte_timeout=60.0, idle_timeout=0.2)) as client:
        completion = await start_completion(client)
        received = b""
        with pytest.raises(DeepSeekError) as info:
            while True:
                chunk = await asyncio.wait_for(completion.read(), GUARD)
                assert chunk, "the stream must not end normally"
                received += chunk
        assert info.value.kind is ErrorKind.TIMEOUT
        assert received == raw[:1500]


async def test_first_byte_timeout_after_the_head(stub: Stub) -> None:
    raw = capture("new-thinking-plain-answer-20260405.txt")
    stub.on(COMPLETION_PATH, stream(raw, stop_after=0, then="stall", stub=stub))
    # An idle limit far beyond GUARD: a head alone must not switch to the idle limit.
    async with DeepSeekClient(make_config(stub.url, first_byte_timeout=0.2, idle_timeout=60.0)) as client:
        completion = await start_completion(client)
        error = await raises(completion.read())
        assert error.kind is ErrorKind.TIMEOUT
        assert "first byte" in error.message


async def test_first_byte_timeout_before_the_head(stub: Stub) -> None:
    stub.on(COMPLETION_PATH, stall_before_head(stub))
    async with DeepSeekClient(make_config(stub.url, first_byte_timeout=0.2, idle_timeout=60.0)) as client:
        error = await raises(start_completion(client))
        assert error.kind is ErrorKind.TIMEOUT


async def test_call_timeout(stub: Stub) -> None:
    stub.on("/api/v0/users/current", stall_before_head(stub))
    async with DeepSeekClient(make_config(stub.url, request_timeout=0.2)) as client:
        assert (await raises(client.current_user(TOKEN))).kind is ErrorKind.TIMEOUT


async def test_connection_dropped_mid_body_is_unavailable(stub: Stub, client: DeepSeekClient) -> None:
    raw = capture("new-thinking-plain-answer-20260405.txt")
    stub.on(COMPLETION_PATH, stream(raw, chunk=700, stop_after=2, then="drop"))
    completion = await start_completion(client)
    received = b""
    with pytest.raises(DeepSeekError) as info:
        while True:
            chunk = await asyncio.wait_for(completion.read(), GUARD)
            assert chunk, "a dropped connection must not look like a normal end"
            received += chunk
    assert info.value.kind is ErrorKind.UNAVAILABLE
    assert raw.startswith(received)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("call", CALLS)
async def test_connection_refused_is_unavailable(call: str) -> None:
    async with DeepSeekClient(make_config(f"http://127.0.0.1:{free_port()}")) as client:
        error = await raises(CALLS[call](client))
    assert error.kind is ErrorKind.UNAVAILABLE


# --- connection reuse --------------------------------------------------------------------


async def test_sequential_calls_reuse_one_connection(stub: Stub, client: DeepSeekClient) -> None:
    raw = capture("new-plain-chat-nonthinking-20251121.txt")
    stub.on("/api/v0/users/current", ok({"token": TOKEN}))
    stub.on("/api/v0/chat_session/create", ok({"id": "s"}))
    stub.on("/api/v0/chat/stop_stream", ok(None))
    stub.on(COMPLETION_PATH, stream(raw))
    stub.on("/api/v0/chat/continue", body(capture("error-biz1-invalid-chat-session.txt")))
    for _ in range(5):
        await client.current_user(TOKEN)
        await client.create_session(TOKEN)
        async with await start_completion(client) as completion:
            assert await read_all(completion) == raw
        with pytest.raises(DeepSeekError):
            await client.continue_stream(TOKEN, session_id="s", message_id=2)
        await client.stop_stream(TOKEN, session_id="s", message_id=2)
    assert len(stub.seen) == 25
    assert len(stub.peers) == 1


async def test_releasing_an_unfinished_stream_does_not_poison_the_pool(stub: Stub, client: DeepSeekClient) -> None:
    raw = capture("new-thinking-plain-answer-20260405.txt")
    stub.on(COMPLETION_PATH, stream(raw, chunk=500, stop_after=2, then="stall", stub=stub))
    stub.on("/api/v0/users/current", ok({"token": TOKEN}))
    completion = await start_completion(client)
    assert await completion.read()
    completion.release()
    assert (await client.current_user(TOKEN))["token"] == TOKEN
    assert len(stub.peers) == 2  # the half-read connection was closed, not reused


async def test_close_aborts_the_stream(stub: Stub, client: DeepSeekClient) -> None:
    raw = capture("new-thinking-plain-answer-20260405.txt")
    disconnected = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(raw[:100])
        try:
            while True:  # keep talking until the client hangs up
                await asyncio.sleep(0.01)
                await response.write(b": keep-alive\n\n")
        except (ConnectionError, RuntimeError):
            disconnected.set()
        return response

    stub.on(COMPLETION_PATH, handler)
    completion = await start_completion(client)
    assert await completion.read()
    completion.close()
    await asyncio.wait_for(disconnected.wait(), GUARD)


# --- continue and stop -----------------------------------------------------------------------


async def test_continue_body_and_no_pow_header(stub: Stub, client: DeepSeekClient) -> None:
    raw = capture("new-continue-resume-20260405.txt")
    stub.on("/api/v0/chat/continue", stream(raw, chunk=8191))
    async with await client.continue_stream(TOKEN, session_id="sess-1", message_id=2) as completion:
        assert await read_all(completion) == raw
    seen = stub.last("/api/v0/chat/continue")
    assert seen.json == {"chat_session_id": "sess-1", "message_id": 2, "fallback_to_resume": True}
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "x-ds-pow-response" not in seen.headers


async def test_stop_stream_body(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/chat/stop_stream", ok(None))
    assert await client.stop_stream(TOKEN, session_id="sess-1", message_id=4) is None
    seen = stub.last("/api/v0/chat/stop_stream")
    assert seen.json == {"chat_session_id": "sess-1", "message_id": 4}
    assert "x-ds-pow-response" not in seen.headers


# --- lifecycle ----------------------------------------------------------------------------


async def test_calls_before_start_fail_clearly() -> None:
    client = DeepSeekClient(make_config("http://127.0.0.1:9"))
    with pytest.raises(RuntimeError, match="start"):
        await client.current_user(TOKEN)


async def test_close_is_idempotent_and_restartable(stub: Stub) -> None:
    stub.on("/api/v0/users/current", ok({"token": TOKEN}))
    client = DeepSeekClient(make_config(stub.url))
    await client.start()
    await client.close()
    await client.close()
    await client.start()
    assert (await client.current_user(TOKEN))["token"] == TOKEN
    await client.close()


# --- secrets -----------------------------------------------------------------------------------


def exception_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + str(error)


async def test_secrets_stay_out_of_errors_and_logs(stub: Stub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def echo_everything(request: web.Request) -> web.StreamResponse:
        # A hostile upstream that repeats the credentials it was sent.
        sent = (await request.read()).decode()
        envelope = {"code": 40003, "msg": f"bad {request.headers.get('Authorization')} {sent}", "data": None}
        return web.json_response(envelope)

    async def echo_422(request: web.Request) -> web.StreamResponse:
        detail = [{"loc": ["body"], "msg": "bad", "input": await request.json()}]
        return web.json_response({"detail": detail}, status=422)

    raw = capture("new-thinking-plain-answer-20260405.txt")
    stub.on("/api/v0/users/current", echo_everything)
    stub.on("/api/v0/chat_session/create", echo_everything)
    stub.on("/api/v0/users/login", echo_422)
    stub.on(COMPLETION_PATH, stream(raw, chunk=700, stop_after=1, then="drop"))
    stub.on("/api/v0/chat/continue", echo_everything)
    errors: list[DeepSeekError] = []
    async with DeepSeekClient(make_config(stub.url)) as client:
        for attempt in (
            client.current_user(TOKEN),
            client.create_session(TOKEN),
            client.login(email="a@x.com", password=PASSWORD),
            client.continue_stream(TOKEN, session_id="s", message_id=1),
        ):
            errors.append(await raises(attempt))
        completion = await start_completion(client)
        errors.append(await raises(read_all(completion)))
    async with DeepSeekClient(make_config(f"http://127.0.0.1:{free_port()}")) as client:
        errors.append(await raises(client.login(email="a@x.com", password=PASSWORD)))
        errors.append(await raises(start_completion(client)))
    assert [e.kind for e in errors] == [ErrorKind.AUTH, ErrorKind.AUTH, ErrorKind.UPSTREAM, ErrorKind.AUTH] + [
        ErrorKind.UNAVAILABLE
    ] * 3
    assert "bad" in errors[0].message  # the upstream's words survive, minus the secret
    for error in errors:
        text = exception_text(error)
        assert TOKEN not in text and PASSWORD not in text, text
    assert caplog.records, "the client should log its failures"
    assert TOKEN not in caplog.text and PASSWORD not in caplog.text


def test_resume_guard_forwards_only_when_paused_and_never_stacks() -> None:
    from ds2a.deepseek.client import _resume_only_when_paused

    class FakeProtocol:  # aiohttp's ResponseHandler attributes the guard relies on
        def __init__(self) -> None:
            self._reading_paused = False
            self._buffer_paused = False
            self.resumed: list[bool] = []

        def resume_reading(self, resume_parser: bool = True) -> None:
            self.resumed.append(resume_parser)
            self._reading_paused = False

    protocol = FakeProtocol()
    _resume_only_when_paused(protocol)
    guarded = protocol.resume_reading
    _resume_only_when_paused(protocol)  # a kept-alive connection's next stream
    assert protocol.resume_reading is guarded
    protocol.resume_reading()
    assert protocol.resumed == []  # not paused: nothing to do, no parser re-entry
    protocol._reading_paused = True
    protocol.resume_reading()
    assert protocol.resumed == [True] and protocol._reading_paused is False
    protocol._buffer_paused = True
    protocol.resume_reading(False)
    assert protocol.resumed == [True, False]


# --- drift of August-October 2026 (protocol doc §16) -----------------------------------------


async def test_default_personality_is_the_current_web_client(stub: Stub) -> None:
    from ds2a.deepseek.client import host_timezone_offset

    stub.on("/api/v0/users/current", ok({"token": TOKEN}))
    async with DeepSeekClient(DeepSeekConfig(base_url=stub.url)) as client:
        await client.current_user(TOKEN)
    headers = stub.last("/api/v0/users/current").headers
    assert headers["x-client-platform"] == "web"
    assert headers["x-client-version"] == "2.5.0"
    assert headers["x-client-locale"] == "en_US"
    assert headers["x-client-bundle-id"] == "com.deepseek.chat"
    assert headers["x-client-timezone-offset"] == str(host_timezone_offset())
    assert headers["Accept"] == "*/*"
    assert "Chrome/" in headers["User-Agent"]
    assert "x-app-version" not in {k.lower() for k in headers}  # dropped by the 2.x web client


async def test_personality_is_configurable_in_one_place(stub: Stub) -> None:
    stub.on("/api/v0/users/login", ok({"user": {"token": "t"}}))
    config = DeepSeekConfig(
        base_url=stub.url,
        client_version="2.6.0",
        timezone_offset=-14400,
        extra_headers={"x-client-bundle-id": "", "x-app-version": "2.6.0"},
    )
    async with DeepSeekClient(config) as client:
        await client.login(email="a@x.com", password=PASSWORD)
    seen = stub.last("/api/v0/users/login")
    assert seen.headers["x-client-version"] == "2.6.0"
    assert seen.headers["x-client-timezone-offset"] == "-14400"
    assert seen.headers["x-app-version"] == "2.6.0"
    assert "x-client-bundle-id" not in seen.headers  # "" drops a header
    assert seen.json["os"] == "web"


HTML_PAGE = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>captcha</body></html>"
BLOCKS = {
    "aws-405-captcha": (405, {"x-amzn-waf-action": "captcha"}, "text/html", HTML_PAGE),
    "aws-202-challenge": (202, {"x-amzn-waf-action": "challenge"}, "text/html", HTML_PAGE),
    "202-challenge-body": (202, {}, "application/json", b'{"challenge":"a1b2","type":"js"}'),
    "cf-403-challenge": (403, {"cf-mitigated": "challenge"}, "text/html", HTML_PAGE),
    "cf-429-challenge": (429, {"cf-mitigated": "challenge"}, "text/html", HTML_PAGE),
    "html-200": (200, {}, "text/html", HTML_PAGE),
    "html-403-no-header": (403, {}, "text/html", HTML_PAGE),
    "html-untyped-200": (200, {}, "application/octet-stream", HTML_PAGE),
}


@pytest.mark.parametrize("case", list(BLOCKS))
async def test_cdn_and_waf_blocks_are_blocked_never_auth(stub: Stub, client: DeepSeekClient, case: str) -> None:
    status, headers, content_type, raw = BLOCKS[case]
    for path in ("/api/v0/users/current", "/api/v0/users/login", COMPLETION_PATH):
        stub.on(path, body(raw, status=status, content_type=content_type, headers=headers))
    errors = [
        await raises(client.current_user(TOKEN)),
        await raises(client.login(email="a@x.com", password=PASSWORD)),
        await raises(start_completion(client)),
    ]
    for error in errors:
        assert error.kind is ErrorKind.BLOCKED, error
        assert "blocking requests from this host" in error.message
        assert error.http_status == status


async def test_json_403_is_still_auth_and_an_html_outage_is_unavailable(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/current", body(b'{"code":40003,"msg":"Authorization Failed"}', status=403))
    assert (await raises(client.current_user(TOKEN))).kind is ErrorKind.AUTH
    stub.on("/api/v0/users/current", body(b"<html>502 Bad Gateway</html>", status=502, content_type="text/html"))
    assert (await raises(client.current_user(TOKEN))).kind is ErrorKind.UNAVAILABLE


async def test_client_version_too_low_tells_the_operator_once(
    stub: Stub, client: DeepSeekClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ds2a.deepseek.client")
    stub.on("/api/v0/users/current", body(b'{"code":40005,"msg":"CLIENT_VERSION_TOO_LOW","data":null}'))
    stub.on(COMPLETION_PATH, body(b'{"code":40005,"msg":"CLIENT_VERSION_TOO_LOW","data":null}'))
    first = await raises(client.current_user(TOKEN))
    second = await raises(start_completion(client))
    for error in (first, second):
        assert error.kind is ErrorKind.UPSTREAM and error.code == 40005
        assert "deepseek.client_version" in error.message and "CLIENT_VERSION_TOO_LOW" in error.message
    warnings = [r for r in caplog.records if "client_version" in r.getMessage()]
    assert len(warnings) == 1 and "'9.9.9'" in warnings[0].getMessage()


async def test_invalid_pow_response_envelope_is_pow(stub: Stub, client: DeepSeekClient) -> None:
    stub.on(COMPLETION_PATH, body(b'{"code":40301,"msg":"INVALID_POW_RESPONSE","data":null}'))
    error = await raises(start_completion(client))
    assert error.kind is ErrorKind.POW and error.code == 40301


async def test_login_of_a_banned_user(stub: Stub, client: DeepSeekClient) -> None:
    stub.on("/api/v0/users/login", body(b'{"code":0,"msg":"","data":{"biz_code":10,"biz_msg":"USER_IS_BANNED","biz_data":null}}'))
    error = await raises(client.login(email="a@x.com", password=PASSWORD))
    assert error.kind is ErrorKind.BANNED and error.biz_code == 10
    assert "banned" in error.message and "USER_IS_BANNED" in error.message


async def test_login_refused_for_this_device_says_use_a_token_account(stub: Stub, client: DeepSeekClient) -> None:
    stub.on(
        "/api/v0/users/login",
        body(b'{"code":0,"msg":"","data":{"biz_code":11,"biz_msg":"RISK_DEVICE_DETECTED","biz_data":null}}'),
    )
    error = await raises(client.login(email="a@x.com", password=PASSWORD))
    assert error.kind is ErrorKind.LOGIN_FAILED and error.biz_code == 11
    assert "RISK_DEVICE_DETECTED" in error.message and "token account" in error.message


async def test_login_of_a_muted_user_says_so(stub: Stub, client: DeepSeekClient) -> None:
    user = {"token": "t-muted", "chat": {"is_muted": 1, "mute_until": 1791027488.5}}
    stub.on("/api/v0/users/login", ok({"user": user}))
    token = await client.login(email="a@x.com", password=PASSWORD)
    assert token == "t-muted" and token.muted and token.mute_until == 1791027488.5
    stub.on("/api/v0/users/login", ok({"user": {"token": "t-free", "chat": {"is_muted": 0, "mute_until": None}}}))
    token = await client.login(email="a@x.com", password=PASSWORD)
    assert token == "t-free" and not token.muted and token.mute_until is None


def heartbeat_stream(stub: Stub, raw: bytes, *, every: float, pause_after: int, pause: float | None) -> Handler:
    """SSE with the heartbeat header; after ``pause_after`` bytes a pause of ``pause`` s during
    which only keep-alive comments flow (``None``: total silence until the stub is released)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "x-ds-sse-heartbeat-timeout-secs": f"{every:g}"}
        )
        await response.prepare(request)
        await response.write(raw[:pause_after])
        if pause is None:
            await stub.release.wait()
            return response
        loop = asyncio.get_running_loop()
        end = loop.time() + pause
        while loop.time() < end:
            await asyncio.sleep(every / 2)
            await response.write(b": \n\n")
        await response.write(raw[pause_after:])
        await response.write_eof()
        return response

    return handler


async def test_a_promised_heartbeat_detects_a_dead_stream_long_before_the_idle_timeout(stub: Stub) -> None:
    raw = capture("new-thinking-plain-answer-20260405.txt")
    stub.on(COMPLETION_PATH, heartbeat_stream(stub, raw, every=0.2, pause_after=900, pause=None))
    # Idle and first-byte limits far beyond GUARD: only the heartbeat promise ends this in time.
    async with DeepSeekClient(make_config(stub.url, first_byte_timeout=60.0, idle_timeout=60.0)) as client:
        completion = await start_completion(client)
        assert completion.heartbeat == 0.2
        received = b""
        with pytest.raises(DeepSeekError) as info:
            while True:
                chunk = await asyncio.wait_for(completion.read(), GUARD)
                assert chunk, "a dead stream must not end normally"
                received += chunk
        assert info.value.kind is ErrorKind.TIMEOUT and "heartbeat" in info.value.message
        assert received == raw[:900]


async def test_heartbeats_keep_a_long_quiet_thought_alive(stub: Stub) -> None:
    raw = capture("new-thinking-plain-answer-20260405.txt")
    # Quiet for 3 s, longer than heartbeat x factor (2 s), but the comments keep coming.
    stub.on(COMPLETION_PATH, heartbeat_stream(stub, raw, every=0.5, pause_after=900, pause=3.0))
    async with DeepSeekClient(make_config(stub.url, first_byte_timeout=60.0, idle_timeout=60.0, heartbeat_factor=4.0)) as client:
        completion = await start_completion(client)
        received = await asyncio.wait_for(read_all(completion), GUARD)
    assert received.replace(b": \n\n", b"") == raw


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon", ""])
async def test_a_nonsense_heartbeat_promise_is_ignored(stub: Stub, value: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-ds-sse-heartbeat-timeout-secs": value})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        await response.write_eof()
        return response

    stub.on(COMPLETION_PATH, handler)
    async with DeepSeekClient(make_config(stub.url)) as client:
        completion = await start_completion(client)
        assert completion.heartbeat is None
        await read_all(completion)


async def test_an_endless_envelope_is_refused_not_buffered(stub: Stub, client: DeepSeekClient) -> None:
    from ds2a.deepseek.client import MAX_BODY_BYTES

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"code":0,"msg":"' )
        for _ in range(MAX_BODY_BYTES // 65536 + 8):
            await response.write(b"x" * 65536)
        await response.write_eof()
        return response

    stub.on("/api/v0/users/current", endless)
    error = await raises(client.current_user(TOKEN))
    assert error.kind is ErrorKind.PROTOCOL and "larger than" in error.message
