"""The gateway's HTTP behaviour end to end: errors, auth, direct tokens, CORS, admin, secrets.

Everything goes over real loopback sockets to a gateway backed by the simulator.
The official ``openai`` SDK is used where a client would use it (it must raise the
right exception classes); raw HTTP is used where the SDK would forgive a mistake
(status lines, headers, the exact error body, a stream that should not be one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from ds2a.sim import SimConfig, expected
from harness import KEY, Stack, http, sdk
from openai_schema import validate

CHAT = "/v1/chat/completions"
# A long, slow answer: an account stays busy for as long as a test holds the stream open.
HOLD = "[[sim:delay=0.02]] [[sim:tokens=5000]] hold the account"


def chat_body(content: str, model: str = "deepseek-chat", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def api_error(response: tuple[int, dict[str, str], bytes], status: int) -> dict[str, Any]:
    """The ``error`` object of a JSON error answer, checked against OpenAI's schema."""
    got, headers, body = response
    assert got == status, body
    assert headers["content-type"].startswith("application/json"), headers
    payload = json.loads(body)
    validate(payload, "ErrorResponse")
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]
    return payload["error"]


def retry_after(headers: dict[str, str]) -> int:
    value = headers.get("retry-after")
    assert value is not None and value.isdigit(), headers
    return int(value)


def wait_for(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """A bounded wait for a state the test cannot be told about directly."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class RawStream:
    """One streamed request over a raw socket, read incrementally.

    The SDK hides what these tests are about (the status line, the chunked framing,
    whether the body ended with the terminal chunk, a client that stops reading or
    hangs up), so the stream is parsed here by hand.
    """

    def __init__(
        self,
        target: Stack | int,  # a stack, or the port of a gateway started some other way
        body: dict[str, Any],
        *,
        key: str | None = KEY,
        path: str = CHAT,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
        rcvbuf: int | None = None,  # pins the client's socket buffer (no kernel autotuning)
    ) -> None:
        data = json.dumps(body).encode()
        fields = {"Host": "localhost", "Content-Type": "application/json", "Content-Length": str(len(data))}
        if key is not None:
            fields["Authorization"] = f"Bearer {key}"
        fields.update(headers or {})
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        port = target if isinstance(target, int) else target.port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(head.encode() + data)
        self._buf = bytearray()
        self._pos = 0
        self._sse = bytearray()
        self.ended = False  # the terminal zero-size chunk arrived
        self.eof = False
        self.status, self.headers = self._read_head()
        self.body_bytes = 0  # de-chunked body bytes received so far

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 18)
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    def _read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if not self._fill():
                raise ConnectionError("connection closed before the response head")
        lines = self._buf[:end].decode("latin-1").split("\r\n")
        self._pos = end + 4
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def _chunk(self) -> bytes | None:
        """The next chunk's data; None after the terminal chunk or at EOF."""
        while True:
            eol = self._buf.find(b"\r\n", self._pos)
            if eol >= 0:
                size = int(self._buf[self._pos : eol], 16)
                end = eol + 2 + size
                if len(self._buf) >= end + 2:
                    assert self._buf[end : end + 2] == b"\r\n", "chunk not followed by CRLF"
                    data = bytes(self._buf[eol + 2 : end])
                    self._pos = end + 2
                    if self._pos > 1 << 20:  # keep parsing linear on long streams
                        del self._buf[: self._pos]
                        self._pos = 0
                    if size == 0:
                        self.ended = True
                        return None
                    self.body_bytes += size
                    return data
            if self.ended or not self._fill():
                return None

    def next_event(self) -> str | None:
        """The next SSE ``data:`` payload; None at the end of the body."""
        while True:
            while (end := self._sse.find(b"\n\n")) < 0:
                data = None if self.ended or self.eof else self._chunk()
                if data is None:
                    return None
                self._sse += data
            block = bytes(self._sse[:end]).decode()
            del self._sse[: end + 2]
            if block.startswith("data: "):
                return block[len("data: ") :]

    def events(self) -> list[str]:
        out = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def content_of(events: list[str]) -> str:
    text = ""
    for event in events:
        if event == "[DONE]":
            continue
        chunk = json.loads(event)
        for choice in chunk.get("choices") or []:
            text += choice["delta"].get("content") or ""
    return text


def hold_account(stack: Stack, key: str = KEY) -> RawStream:
    """Start a long answer and keep it running: its account is busy until close()."""
    raw = RawStream(stack, chat_body(HOLD, stream=True), key=key)
    assert raw.status == 200
    assert raw.next_event() is not None  # the role chunk: the upstream answer is running
    return raw


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2, config={"server": {"max_body_bytes": 64 * 1024}}) as s:
        yield s


@pytest.fixture(scope="module")
def strict() -> Iterator[Stack]:
    """Only gateway keys, and CORS for one named origin."""
    config = {"api": {"allow_direct_tokens": False}, "server": {"cors_origins": ["https://chat.example"]}}
    with Stack(accounts=1, config=config) as s:
        yield s


# --- 401 --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("POST", CHAT), ("GET", "/v1/models"), ("GET", "/admin/accounts")])
def test_missing_key_is_401(stack: Stack, method: str, path: str) -> None:
    body = chat_body("hi") if method == "POST" else None
    err = api_error(http(stack, method, path, body, key=None), 401)
    assert err["type"] == "authentication_error" and err["code"] == "missing_api_key"


def test_authorization_that_is_not_a_bearer_is_401(stack: Stack) -> None:
    response = http(stack, "POST", CHAT, chat_body("hi"), {"Authorization": f"Basic {KEY}"}, key=None)
    assert api_error(response, 401)["code"] == "invalid_api_key"


@pytest.mark.parametrize("stream", [False, True])
def test_wrong_key_is_401_naming_both_readings_of_the_bearer(stack: Stack, stream: bool) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(stack, "not-a-key-nor-a-token").chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
    exc = caught.value
    assert exc.status_code == 401 and exc.code == "invalid_api_key"
    # The caller learns both what the bearer is not (a key) and what DeepSeek said of it.
    assert "not one of this gateway's keys" in exc.message
    assert "DeepSeek rejected it as a user token" in exc.message
    raw = http(stack, "POST", CHAT, chat_body("hi", stream=stream), key="not-a-key-nor-a-token")
    assert api_error(raw, 401)["type"] == "authentication_error"


def test_wrong_key_is_401_without_asking_upstream_when_direct_tokens_are_off(strict: Stack) -> None:
    token = strict.call(lambda: strict.sim.add_account(email="real-but-direct@example.com", password="pw"))
    strict.wait_idle()
    before = strict.counters()
    for bearer in ("sk-wrong", token):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(strict, bearer).chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            sdk(strict, bearer).models.list()
    after = strict.counters()
    # Not even a valid DeepSeek token is tried: the upstream never heard of these requests.
    assert after["completions"] == before["completions"]
    assert after["auth_failures"] == before["auth_failures"]
    seen = strict.call(lambda: [r.headers.get("Authorization") for r in strict.sim.requests])
    assert f"Bearer {token}" not in seen


# --- 400 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [(b'{"model": "deepseek-chat", "messages": [', "invalid_json"), (b"", "invalid_json"), (b"[1]", "invalid_type")],
)
def test_malformed_json_is_400(stack: Stack, body: bytes, code: str) -> None:
    err = api_error(http(stack, "POST", CHAT, body), 400)
    assert err["type"] == "invalid_request_error" and err["code"] == code and err["param"] is None


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"stream": "yes"}, "stream"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 5}, "stop"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"tool_choice": "required", "tools": []}, "tool_choice"),
    ],
)
def test_invalid_field_is_400_naming_the_param(stack: Stack, patch: dict[str, Any], param: str) -> None:
    body = {**chat_body("hi", stream=True), **patch}
    body = {k: v for k, v in body.items() if v is not None}
    err = api_error(http(stack, "POST", CHAT, body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_sdk_raises_bad_request_with_the_param(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack).chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], n=3)
    assert caught.value.status_code == 400 and caught.value.param == "n"


# --- 404 / 405 / 413 ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404(stack: Stack, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(stack).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
    assert caught.value.param == "model" and caught.value.code == "model_not_found"
    assert "gpt-4o" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        sdk(stack).models.retrieve("gpt-4o")
    api_error(http(stack, "GET", "/v1/models/gpt-4o"), 404)


def test_unknown_path_is_404(stack: Stack) -> None:
    err = api_error(http(stack, "GET", "/v1/nothing/here"), 404)
    assert "/v1/nothing/here" in err["message"]
    # The legacy completions endpoint is not served: the SDK must say so, not hang or 500.
    with pytest.raises(openai.NotFoundError):
        sdk(stack).completions.create(model="deepseek-chat", prompt="hi")


@pytest.mark.parametrize(("method", "path", "allowed"), [("GET", CHAT, "POST"), ("DELETE", "/v1/models", "GET")])
def test_wrong_method_is_405_with_allow(stack: Stack, method: str, path: str, allowed: str) -> None:
    response = http(stack, method, path)
    err = api_error(response, 405)
    assert err["code"] == "method_not_allowed"
    allow = {m.strip() for m in response[1]["allow"].split(",")}
    assert allowed in allow and method not in allow


def test_too_large_body_is_413(stack: Stack) -> None:
    body = json.dumps(chat_body("x" * (65 * 1024))).encode()
    err = api_error(http(stack, "POST", CHAT, body), 413)
    assert "too large" in err["message"]
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(stack).chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "x" * 70_000}])
    assert caught.value.status_code == 413


# --- 429 ------------------------------------------------------------------------------------


def test_queue_full_and_queue_wait_expired_are_429_with_retry_after(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1, config={"pool": {"queue_max": 1, "queue_timeout": 1.0}})
    waited: list[BaseException] = []

    def waiter() -> None:
        try:
            sdk(s).chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "wait"}])
        except BaseException as exc:  # handed to the test thread
            waited.append(exc)

    with hold_account(s):
        thread = threading.Thread(target=waiter)
        thread.start()
        try:
            wait_for(lambda: s.pool_snapshot()["queued"] == 1, what="the first request to queue")
            # Queue full: refused at once, also for a stream (a JSON error, never a 200 stream).
            full = http(s, "POST", CHAT, chat_body("one too many", stream=True))
            err = api_error(full, 429)
            assert err["type"] == "rate_limit_error" and "queue is full" in err["message"]
            assert retry_after(full[1]) >= 1
        finally:
            thread.join(15)
    # The queued request's wait ran out while the only account stayed busy.
    assert len(waited) == 1 and isinstance(waited[0], openai.RateLimitError), waited
    exc = waited[0]
    assert "no DeepSeek account became free" in exc.message
    assert int(exc.response.headers["retry-after"]) >= 1
    s.wait_idle()
    assert s.counters()["parallel_violations"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_rate_limit_on_every_account_is_429(make_stack: Callable[..., Stack], stream: bool) -> None:
    s = make_stack(accounts=2, config={"pool": {"cooldown": 45}})
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(s).chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "[[sim:rate_limit]] hi"}], stream=stream
        )
    exc = caught.value
    assert exc.code == "upstream_rate_limited"
    assert "Messages too frequent" in exc.message  # the upstream's own words
    # Both accounts now rest for pool.cooldown: a client told to come back sooner would
    # only be queued or refused again.
    assert 40 <= int(exc.response.headers["retry-after"]) <= 45
    assert s.counters()["hints"] == 2  # every account was tried


# --- 5xx: upstream failures before the first byte --------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_every_attempt_dropped_before_the_first_byte_is_502(make_stack: Callable[..., Stack], stream: bool) -> None:
    s = make_stack(accounts=2)
    raw = http(s, "POST", CHAT, chat_body("[[sim:drop=1]] hi", stream=stream))
    err = api_error(raw, 502)  # JSON, not a 200 stream carrying an error
    assert err["code"] == "upstream_unavailable" and err["type"] == "upstream_error"
    assert err["message"].startswith("DeepSeek: ")
    assert "connection" in err["message"].lower()
    assert s.counters()["drops"] == 2  # failed over once, then gave up


def test_sdk_raises_internal_server_error_for_upstream_failures(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1)
    with pytest.raises(openai.InternalServerError) as caught:
        list(
            sdk(s).chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "[[sim:drop=2]]"}], stream=True
            )
        )
    assert caught.value.status_code == 502


def test_no_accounts_is_503(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=0)
    for stream in (False, True):
        err = api_error(http(s, "POST", CHAT, chat_body("hi", stream=stream)), 503)
        assert err["code"] == "no_accounts"
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(s).chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503


def test_every_account_muted_is_503_with_retry_after(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=2, config={"pool": {"queue_timeout": 5}})
    response = http(s, "POST", CHAT, chat_body("[[sim:muted=600]] hi", stream=True))
    err = api_error(response, 503)
    assert err["code"] == "upstream_account_muted" and "muted" in err["message"]
    assert 590 <= retry_after(response[1]) <= 600
    assert s.counters()["muted_rejections"] == 2
    # While they stay muted, the next request is answered at once, with the same horizon.
    again = http(s, "POST", CHAT, chat_body("plain question"))
    assert api_error(again, 503)["code"] == "accounts_muted"
    assert 590 <= retry_after(again[1]) <= 600
    health = {a["status"] for a in s.pool_snapshot()["accounts"]}
    assert health == {"muted"}


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_too_long_for_deepseek_is_400_without_failover(stack: Stack, stream: bool) -> None:
    before = stack.counters()
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack).chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "[[sim:input_too_long]] hi"}], stream=stream
        )
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert caught.value.body["message"].startswith("DeepSeek: ")  # type: ignore[index]
    # Too long for one account is too long for every account: no other one is tried.
    assert stack.counters()["hints"] - before["hints"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_first_byte_timeout_is_504(make_stack: Callable[..., Stack], stream: bool) -> None:
    s = make_stack(accounts=1, config={"deepseek": {"first_byte_timeout": 0.3}})
    err = api_error(http(s, "POST", CHAT, chat_body("[[sim:slow_first_byte=5]] hi", stream=stream)), 504)
    assert err["code"] == "upstream_timeout" and "timed out" in err["message"]


# --- direct DeepSeek tokens ---------------------------------------------------------------------


def test_direct_token_is_served_with_that_token(stack: Stack) -> None:
    token = stack.call(lambda: stack.sim.add_account(email="direct-served@example.com", password="pw"))
    reply = sdk(stack, token).chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "my own account"}]
    )
    assert reply.choices[0].message.content == expected("my own account", False, False, stack.sim_config).answer
    completion = stack.call(lambda: [r for r in stack.sim.requests if r.path.endswith("/chat/completion")][-1])
    assert completion.headers["Authorization"] == f"Bearer {token}"


def test_one_direct_token_runs_one_answer_at_a_time(stack: Stack) -> None:
    token = stack.call(lambda: stack.sim.add_account(email="direct-serial@example.com", password="pw"))
    digest = hashlib.sha256(token.encode()).hexdigest()
    first_prompt = "[[sim:delay=0.01]] [[sim:tokens=40]] first"
    results: list[Any] = []

    def second() -> None:
        try:
            results.append(
                sdk(stack, token).chat.completions.create(
                    model="deepseek-chat", messages=[{"role": "user", "content": "second"}]
                )
            )
        except BaseException as exc:
            results.append(exc)

    with RawStream(stack, chat_body(first_prompt, stream=True), key=token) as first:
        assert first.status == 200 and first.next_event() is not None
        thread = threading.Thread(target=second)
        thread.start()
        # The second request waits for the token, rather than starting a parallel generation.
        wait_for(
            lambda: stack.call(lambda: len(stack.gateway.pool.direct_groups[digest].waiters)) == 1,
            what="the second request to wait for the token",
        )
        events = first.events()
    thread.join(15)
    assert content_of(events) == expected(first_prompt, False, False, stack.sim_config).answer
    assert len(results) == 1 and not isinstance(results[0], BaseException), results
    assert results[0].choices[0].message.content == expected("second", False, False, stack.sim_config).answer
    stack.wait_idle()
    counters = stack.counters()
    assert counters["parallel_violations"] == 0 and counters["max_active_per_account"] == 1


# --- CORS, health, admin, aliases ------------------------------------------------------------


def test_cors_preflight_and_headers(stack: Stack) -> None:
    origin = {"Origin": "https://ui.example"}
    status, headers, body = http(
        stack,
        "OPTIONS",
        CHAT,
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        key=None,
    )
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "*"
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "authorization, content-type"
    assert int(headers["access-control-max-age"]) > 0
    # Every answer carries the CORS headers: successes, errors (a browser must read them),
    # and streams; Retry-After is exposed so browser clients can back off.
    for response in (
        http(stack, "POST", CHAT, chat_body("cors"), origin),
        http(stack, "POST", CHAT, chat_body("cors"), origin, key=None),
        http(stack, "POST", CHAT, chat_body("cors", stream=True), origin),
    ):
        assert response[1]["access-control-allow-origin"] == "*"
        assert "retry-after" in response[1]["access-control-expose-headers"].lower()


def test_cors_with_named_origins(strict: Stack) -> None:
    allowed = http(strict, "GET", "/v1/models", headers={"Origin": "https://chat.example"})
    assert allowed[0] == 200
    assert allowed[1]["access-control-allow-origin"] == "https://chat.example"
    assert "origin" in allowed[1]["vary"].lower()
    other = http(strict, "GET", "/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other[1]
    preflight = http(
        strict,
        "OPTIONS",
        CHAT,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        key=None,
    )
    assert "access-control-allow-origin" not in preflight[1]


def test_healthz_get_and_head_need_no_key(stack: Stack) -> None:
    status, headers, body = http(stack, "GET", "/healthz", key=None)
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, headers, body = http(stack, "HEAD", "/healthz", key=None)
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_admin_accounts_needs_a_gateway_key_and_hides_secrets(stack: Stack) -> None:
    token = stack.call(lambda: stack.sim.add_account(email="direct-admin@example.com", password="pw"))
    err = api_error(http(stack, "GET", "/admin/accounts", key=token), 401)
    assert err["type"] == "authentication_error"
    status, _, body = http(stack, "GET", "/admin/accounts")
    assert status == 200
    health = json.loads(body)
    assert len(health["accounts"]) == 2
    for account in health["accounts"]:
        assert account["status"] in ("ready", "busy", "cooling", "muted", "login_failed")
        assert account["logged_in"] is True
    secrets = [KEY, stack.sim_config.password, token, "user0@example.com", "user1@example.com"]
    secrets += [t for t in stack.call(lambda: [a.token for a in stack.gateway.pool.accounts]) if t]
    text = body.decode()
    assert not [s for s in secrets if s in text]


def test_routes_without_the_v1_prefix(stack: Stack) -> None:
    client = sdk(stack, base_url=stack.base_url)
    assert "deepseek-chat" in {m.id for m in client.models.list()}
    assert client.models.retrieve("deepseek-r1").id == "deepseek-r1"
    reply = client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "no v1"}])
    assert reply.choices[0].message.content == expected("no v1", False, False, stack.sim_config).answer
    messages = [{"role": "user", "content": "no v1"}]
    chunks = list(client.chat.completions.create(model="deepseek-chat", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content


def test_index_names_the_endpoints(stack: Stack) -> None:
    status, _, body = http(stack, "GET", "/", key=None)
    assert status == 200 and "/v1/chat/completions" in json.loads(body)["endpoints"]


# --- secrets ---------------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        # Formatted here, in whichever thread logged: message, arguments and traceback.
        self.lines.append(self.format(record))


def test_no_secret_reaches_any_log_record() -> None:
    gateway_key = "sk-gateway-secret-4f1e8d"
    password = "account-password-7c2b9a"
    direct_password = "direct-password-1a2b3c"
    bad_token = "bad-bearer-token-5d6e7f"
    collect = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    s = Stack(
        accounts=2,
        sim=SimConfig(password=password),
        keys=[gateway_key],
        config={"server": {"access_log": True}},
    )
    try:
        s.start()
        direct = s.call(lambda: s.sim.add_account(email="direct-logs@example.com", password=direct_password))

        def ask(content: str, key: str = gateway_key, stream: bool = False) -> int:
            return http(s, "POST", CHAT, chat_body(content, stream=stream), key=key)[0]

        assert ask("fine") == 200
        assert ask("fine", key=direct) == 200
        assert ask("wrong key", key=bad_token) == 401
        assert ask("[[sim:delay=0.01]] [[sim:drop=12]] mid-stream failure", key=direct, stream=True) == 200
        assert ask("[[sim:rate_limit]] rate limited", key=direct) == 429
        assert ask("[[sim:expired_token]] dead token: logs in again") == 502
        assert ask("after the dead token") == 200
        assert ask("[[sim:drop=1]] dropped everywhere") == 502
        # A malformed request head carrying the key.
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.sendall(f"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer {gateway_key}\r\nno colon\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        s.wait_idle()
        tokens = [t for t in s.call(lambda: [a.token for a in s.gateway.pool.accounts]) if t]
        assert s.counters()["logins"] >= 3  # the expired token made an account log in again
    finally:
        s.stop()
        root.removeHandler(collect)
        root.setLevel(old_level)
    assert len(collect.lines) > 20  # DEBUG records were captured
    assert any(line.startswith("ds2a.deepseek.client DEBUG") for line in collect.lines)
    secrets = [gateway_key, password, direct_password, bad_token, direct, *tokens]
    leaks = [(secret, line) for line in collect.lines for secret in secrets if secret in line]
    assert not leaks
