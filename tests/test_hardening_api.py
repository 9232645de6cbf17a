"""Issue 8 through the whole gateway (simulator upstream, real sockets): invalid Unicode
is refused before anything upstream is touched, a mistyped key is never sent to
DeepSeek, the model's own ``model_type`` is what the upstream receives, the access log
says what happened to each request, and requests queued at shutdown are answered at
once. What the simulator received is asserted, not what the gateway stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from harness import KEY, Stack, http, sdk, sse_events
from test_e2e_http import RawStream, api_error, chat_body, content_of

SLOW = "[[sim:delay=0.01]] [[sim:tokens=3000]]"
CHAT = "/v1/chat/completions"
UPSTREAM = ("completions", "challenges_issued", "sessions_created", "logins", "auth_failures")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(accounts=2, config={"server": {"access_log": True}}) as s:
        s.wait_idle()
        yield s


def upstream_counts(stack: Stack) -> dict[str, int]:
    counters = stack.counters()
    return {name: counters[name] for name in UPSTREAM}


def settled(stack: Stack) -> dict[str, int]:
    """Upstream counters once every account has its ticket ready (nothing left in flight)."""
    stack.wait_idle()

    async def ready() -> None:
        pool = stack.gateway.pool
        while any(a.preparing is not None or a.ticket is None for a in pool.accounts):
            await asyncio.sleep(0.01)

    stack.run(ready)
    return upstream_counts(stack)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- defect 4: invalid Unicode is a 400 naming the field; nothing upstream is touched -----------

LONE = '"a\\ud800b"'  # JSON text: an escaped lone surrogate
RAW = b'"a\xed\xa0\x80b"'  # the same code point as raw (CESU-8) bytes, which json.loads lets through


def body_with(fragment: str | bytes, where: str) -> bytes:
    frag = fragment.encode() if isinstance(fragment, str) else fragment
    user = b'{"role": "user", "content": "hi"}'
    templates = {
        "messages[0].content": b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": %s}]}',
        "messages[1].content[0].text": b'{"model": "deepseek-chat", "messages": [' + user + b', '
        b'{"role": "user", "content": [{"type": "text", "text": %s}]}]}',
        "messages[0].name": b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "x", "name": %s}]}',
        "model": b'{"model": %s, "messages": [' + user + b"]}",
        "stop[1]": b'{"model": "deepseek-chat", "messages": [' + user + b'], "stop": ["ok", %s]}',
        "user": b'{"model": "deepseek-chat", "messages": [' + user + b'], "user": %s}',
        "metadata": b'{"model": "deepseek-chat", "messages": [' + user + b'], "metadata": {%s: "v"}}',
        "stream": b'{"model": "deepseek-chat", "stream": true, "messages": [{"role": "user", "content": %s}]}',
    }
    return templates[where] % frag


@pytest.mark.parametrize(
    "fragment, where, param",
    [
        (LONE, "messages[0].content", "messages[0].content"),
        (RAW, "messages[0].content", "messages[0].content"),
        (LONE, "messages[1].content[0].text", "messages[1].content[0].text"),
        ('"\\udc00"', "messages[0].name", "messages[0].name"),
        ('"deepseek-chat\\udfff"', "model", "model"),
        (LONE, "stop[1]", "stop[1]"),
        (RAW, "user", "user"),  # an ignored parameter is still part of the request
        (LONE, "metadata", "metadata"),  # a key
        (LONE, "stream", "messages[0].content"),  # a streamed request answers JSON too
    ],
    ids=["escaped", "raw-bytes", "content-part", "name", "model", "stop", "ignored-param", "key", "stream"],
)
def test_invalid_unicode_is_a_400_naming_the_field_and_touches_nothing_upstream(
    stack: Stack, caplog: pytest.LogCaptureFixture, fragment: str | bytes, where: str, param: str
) -> None:
    before = settled(stack)
    error = api_error(http(stack, "POST", CHAT, body_with(fragment, where)), 400)
    assert error["param"] == param and error["code"] == "invalid_unicode", error
    assert "surrogate" in error["message"]
    assert upstream_counts(stack) == before, "a request that will fail touched the upstream"
    assert not errors_logged(caplog)
    # The prepared ticket is still there for the next request.
    reply = sdk(stack).chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "ok"}])
    assert reply.choices[0].message.content


# -- a mistyped key is never a DeepSeek token -----------------------------------------------------


@pytest.mark.parametrize("bearer", ["sk-typo", "sk-test-kez", "sk-deepseek-platform-key-0123456789abcdef"])
def test_a_key_shaped_bearer_that_matches_no_key_is_401_without_asking_upstream(stack: Stack, bearer: str) -> None:
    before = settled(stack)
    for method, path, body in (("POST", CHAT, chat_body("hi")), ("GET", "/v1/models", None)):
        error = api_error(http(stack, method, path, body, key=bearer), 401)
        assert error["code"] == "invalid_api_key" and "shape of a gateway key" in error["message"]
    with pytest.raises(openai.AuthenticationError):
        sdk(stack, bearer).chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "x"}])
    assert upstream_counts(stack) == before
    seen = stack.call(lambda: [r.headers.get("Authorization") for r in stack.sim.requests])
    assert f"Bearer {bearer}" not in seen


def test_the_configured_keys_prefix_marks_a_key(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=0, keys=["ds2a_live_abc", "ds2a_live_xyz"])
    error = api_error(http(s, "GET", "/v1/models", key="ds2a_live_abd"), 401)
    assert "shape of a gateway key" in error["message"]
    assert http(s, "GET", "/v1/models", key="ds2a_live_xyz")[0] == 200


def test_models_need_a_key_or_a_user_token_as_the_readme_says(stack: Stack, make_stack: Callable[..., Stack]) -> None:
    assert http(stack, "GET", "/v1/models", key=KEY)[0] == 200
    api_error(http(stack, "GET", "/v1/models", key=None), 401)
    # Direct tokens on (the default): a bearer that is not key-shaped may be a user token.
    assert http(stack, "GET", "/v1/models", key="a-deepseek-user-token")[0] == 200
    strict = make_stack(accounts=0, config={"api": {"allow_direct_tokens": False}})
    api_error(http(strict, "GET", "/v1/models", key="a-deepseek-user-token"), 401)
    api_error(http(strict, "GET", "/v1/models/deepseek-chat", key="a-deepseek-user-token"), 401)


# -- the model's own model_type reaches the upstream ---------------------------------------------


def test_each_model_sends_its_own_model_type(make_stack: Callable[..., Stack]) -> None:
    models = [
        {"id": "deep-expert", "thinking": True, "search": False, "model_type": "expert"},
        {"id": "plain", "thinking": False, "search": False},  # inherits deepseek.model_type
    ]
    s = make_stack(accounts=1, config={"api": {"models": models}, "deepseek": {"model_type": "default"}})
    client = sdk(s)
    for model in ("deep-expert", "plain"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"via {model}"}])
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"streamed via {model}"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    received = s.call(
        lambda: {
            r.body["prompt"]: r.body["model_type"]
            for r in s.sim.requests
            if r.path.endswith("/chat/completion") and r.body
        }
    )
    by_prompt = {
        prompt.split("via ")[-1].strip() + (" stream" if "streamed" in prompt else ""): model_type
        for prompt, model_type in received.items()
    }
    assert by_prompt == {
        "deep-expert": "expert",
        "deep-expert stream": "expert",
        "plain": "default",
        "plain stream": "default",
    }, received


# -- access log -----------------------------------------------------------------------------------

LINE = re.compile(
    r"(?P<rid>\S+) (?P<client>\S+) (?P<method>\S+) (?P<path>\S+) (?P<status>\d+) (?P<outcome>\S+) "
    r"(?P<bytes>\d+) (?P<duration>[\d.]+)ms model=(?P<model>\S+) account=(?P<account>\S+) "
    r"ttft=(?P<ttft>\S+) tokens=(?P<tokens>\S+)"
)


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records if r.name == "ds2a.access"]  # type: ignore[attr-defined]


def wait_for_record(caplog: pytest.LogCaptureFixture, rid: str) -> dict[str, Any]:
    for _ in range(500):
        for record in access_records(caplog):
            if record["request_id"] == rid:
                return record
        threading.Event().wait(0.02)
    raise AssertionError(f"no access record for {rid}")


def test_access_log_line_for_a_streamed_answer(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ds2a.access")
    with RawStream(stack, chat_body("logged", stream=True), headers={"X-Request-Id": "client-rid-1"}) as conn:
        assert conn.headers["x-request-id"] == "client-rid-1"
        assert content_of(conn.events())
    record = wait_for_record(caplog, "client-rid-1")
    assert record["status"] == 200 and record["outcome"] == "ok"
    assert record["model"] == "deepseek-chat" and record["method"] == "POST" and record["path"] == CHAT
    assert record["client"].startswith("127.0.0.1:")
    assert record["tokens"] and record["tokens"] > 0
    assert record["ttft_ms"] is not None and record["ttft_ms"] <= record["duration_ms"]
    labels = {a["account"] for a in stack.pool_snapshot()["accounts"]}
    assert record["account"] in labels and "***" in record["account"]  # masked, as /admin/accounts shows it
    line = next(r.getMessage() for r in caplog.records if getattr(r, "access", {}).get("request_id") == "client-rid-1")
    match = LINE.fullmatch(line)
    assert match and match["outcome"] == "ok" and match["model"] == "deepseek-chat", line
    assert KEY not in caplog.text


def test_access_log_says_client_gone_for_a_client_that_left_mid_stream(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ds2a.access")
    conn = RawStream(stack, chat_body(f"{SLOW} leaving", stream=True), headers={"X-Request-Id": "leaver-1"})
    for _ in range(3):
        assert conn.next_event() is not None
    conn.close()
    record = wait_for_record(caplog, "leaver-1")
    assert record["status"] == 200 and record["outcome"] == "client_gone"
    stack.wait_idle()


def test_access_log_outcomes_for_refusals(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ds2a.access")
    cases = [
        ({"X-Request-Id": "bad-json"}, b"{not json", KEY, 400, "bad_request"),
        ({"X-Request-Id": "no-key"}, json.dumps(chat_body("x")).encode(), None, 401, "bad_request"),
        ({"X-Request-Id": "upstream-down"}, json.dumps(chat_body("x")).encode(), "a-dead-token", 401, None),
    ]
    for headers, body, key, status, outcome in cases:
        assert http(stack, "POST", CHAT, body, headers, key=key)[0] == status
        record = wait_for_record(caplog, headers["X-Request-Id"])
        assert record["status"] == status
        if outcome:
            assert record["outcome"] == outcome
    assert wait_for_record(caplog, "upstream-down")["outcome"] == "upstream_error"


def test_access_log_says_upstream_error_when_the_answer_breaks_mid_stream(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ds2a.access")
    body = chat_body("[[sim:drop=20]] [[sim:tokens=200]] cut", stream=True)
    with RawStream(stack, body, headers={"X-Request-Id": "cut-1"}) as conn:
        events = conn.events()
    assert any("error" in json.loads(e) for e in events if e != "[DONE]")
    record = wait_for_record(caplog, "cut-1")
    assert record["status"] == 200 and record["outcome"] == "upstream_error"
    stack.wait_idle()


# -- shutdown: queued requests are answered at once, with a code -----------------------------------


def test_requests_queued_at_shutdown_get_503_with_a_code_at_once(make_stack: Callable[..., Stack]) -> None:
    s = make_stack(accounts=1, config={"server": {"shutdown_grace": 60}})
    s.wait_idle()
    holder = RawStream(s, chat_body(f"{SLOW} holding the only account", stream=True))
    assert holder.next_event() is not None
    results: list[Any] = []
    queued = threading.Thread(target=lambda: results.append(http(s, "POST", CHAT, chat_body("queued"))))
    queued.start()
    s.run(lambda: wait_until(lambda: len(s.gateway.pool.group.waiters) == 1))
    stopping = asyncio.run_coroutine_threadsafe(s.gateway.stop(), s.loop)
    queued.join(20)  # long before the 60 s grace: the queue is refused when shutdown begins
    assert not queued.is_alive(), "the queued request waited for the grace"
    assert not stopping.done(), "the running stream is still allowed to finish"
    status, headers, body = results[0]
    assert status == 503 and headers.get("connection") == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "shutting_down", error
    assert holder.next_event() is not None  # the running answer goes on
    holder.close()
    stopping.result(30)


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# -- no input produces a 500 or an ERROR log -------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body, headers",
    [
        ("POST", CHAT, b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "\\ud800"}]}', {}),
        ("OPTIONS", CHAT, None, {"Origin": "https://x.example", "Access-Control-Request-Method": "POST",
                                 "Access-Control-Request-Headers": "x-caf\u00e9"}),
        ("GET", "/v1/models/%ED%A0%80", None, {}),
        ("GET", "/v1/models/%FF%FE", None, {}),
        ("POST", CHAT, b"[" * 100_000, {}),
        ("POST", CHAT, b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "n": 1e999}', {}),
        ("GET", "/v1/models", None, {"X-Request-Id": "\u00e9\u00e9"}),
    ],
    ids=["surrogate", "cors", "model-surrogate", "model-latin1", "deep-nesting", "huge-number", "request-id"],
)
def test_no_input_gives_a_500_or_an_error_log(
    stack: Stack, caplog: pytest.LogCaptureFixture, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> None:
    raw_headers = {k: v.encode("latin-1").decode("latin-1") for k, v in headers.items()}
    status, _, _ = http(stack, method, path, body, raw_headers)
    assert status < 500, status
    assert not errors_logged(caplog)


def test_sse_events_helper_is_used(stack: Stack) -> None:
    """A streamed answer still reads as before through the hardened server (sanity)."""
    status, headers, body = http(stack, "POST", CHAT, chat_body("plain", stream=True))
    assert status == 200 and headers["x-request-id"] and sse_events(body)[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("path", "body", "model"),
    [
        ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}, "claude-sonnet-4-5"),
        ("/v1/responses", {"model": "deepseek-reasoner", "input": "hi"}, "deepseek-reasoner"),
    ],
)
def test_every_dialect_fills_the_access_record(
    stack: Stack, caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any], model: str
) -> None:
    caplog.set_level(logging.INFO, logger="ds2a.access")
    rid = "dialect-" + path.rsplit("/", 1)[1]
    status, headers, _ = http(stack, "POST", path, body, {"X-Request-Id": rid})
    assert status == 200 and headers["x-request-id"] == rid
    record = wait_for_record(caplog, rid)
    assert record["outcome"] == "ok" and record["model"] == model
    assert record["tokens"] and record["ttft_ms"] is not None
    assert record["account"] in {a["account"] for a in stack.pool_snapshot()["accounts"]}
