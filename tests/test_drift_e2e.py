"""What DeepSeek changed from August to October 2026 (protocol doc §16, issue 11), end to end.

The official ``openai`` SDK -> the gateway -> the simulator, over loopback. Each case
asserts what the client sees, what an operator sees on ``/admin/accounts``, and the
simulator's counters (no re-login on a block, one generation per account, a fresh
challenge after a rejected one).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from ds2a.sim import SimConfig, expected
from ds2a.sim.bodies import TOAST_ERROR
from harness import Stack, http, sdk
from test_e2e_http import wait_for

StackMaker = Callable[..., Stack]
COMPLETION = "/api/v0/chat/completion"
ACCOUNT0, ACCOUNT1 = "email:user0@example.com", "email:user1@example.com"


# --- helpers ----------------------------------------------------------------------------------


def admin(stack: Stack) -> dict[str, Any]:
    """/admin/accounts over HTTP, as an operator reads it."""
    status, _, body = http(stack, "GET", "/admin/accounts")
    assert status == 200, body
    return json.loads(body)


def accounts(stack: Stack) -> dict[str, dict[str, Any]]:
    return {a["account"]: a for a in admin(stack)["accounts"]}


def settle(stack: Stack) -> None:
    """No lease or background work left, and a ready ticket on every usable account."""

    def settled() -> bool:
        pool = stack.gateway.pool
        now = time.monotonic()
        if pool.leases or any(not t.done() for t in pool.tasks):
            return False
        return all(a.ticket is not None and a.ticket.usable(now) for a in pool.accounts if a.usable(now))

    wait_for(lambda: stack.call(settled), what="the pool to settle")


def completions(stack: Stack) -> list[tuple[str | None, str | None, dict[str, str]]]:
    """(account, prompt, headers) of every completion the simulator received, in order."""
    return stack.call(lambda: [(r.account, r.prompt, r.headers) for r in stack.sim.requests if r.path == COMPLETION])


def ask(stack: Stack, prompt: str, model: str = "deepseek-chat") -> Any:
    return sdk(stack).chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])


def ask_stream(stack: Stack, prompt: str, model: str = "deepseek-chat") -> tuple[list[Any], Exception | None]:
    """The chunks that arrived, and the error the SDK raised (if any)."""
    chunks: list[Any] = []
    try:
        for chunk in sdk(stack).chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True
        ):
            chunks.append(chunk)
    except openai.APIError as exc:
        return chunks, exc
    return chunks, None


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finishes(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def no_parallel_generation(c: dict[str, Any]) -> None:
    assert c["parallel_violations"] == 0 and c["max_active_per_account"] <= 1, c


@pytest.fixture(scope="module")
def shared() -> Iterator[Stack]:
    """For cases that leave every account as it was."""
    with Stack(accounts=2) as stack:
        yield stack


# --- CONTEXT_LENGTH_EXCEEDED -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_exceeded_before_text_is_a_400_and_the_account_is_fine(shared: Stack, stream: bool) -> None:
    shared.wait_idle()
    before = shared.counters()
    prompt = f"[[sim:context_length_exceeded]] a very long history, stream={stream}"
    if stream:
        chunks, error = ask_stream(shared, prompt)
        assert chunks == []
    else:
        with pytest.raises(openai.APIError) as caught:
            ask(shared, prompt)
        error = caught.value
    assert isinstance(error, openai.BadRequestError) and error.status_code == 400
    assert error.code == "context_length_exceeded"
    assert "context" in error.message
    shared.wait_idle()
    after = shared.counters()
    assert after["completions"] - before["completions"] == 1  # the client's problem: no failover
    assert after["error_statuses"].get("CONTEXT_LENGTH_EXCEEDED", 0) - before["error_statuses"].get("CONTEXT_LENGTH_EXCEEDED", 0) == 1
    no_parallel_generation(after)
    assert {a["status"] for a in admin(shared)["accounts"]} == {"ready"}


def test_context_length_exceeded_after_text_is_an_error_event_never_a_stop(shared: Stack) -> None:
    prompt = "[[sim:delay=0.01]] [[sim:context_length_exceeded=6]] cut for context"
    chunks, error = ask_stream(shared, prompt)
    assert isinstance(error, openai.APIError) and error.code == "context_length_exceeded"
    assert text_of(chunks) and expected(prompt, False, False, shared.sim.config).answer.startswith(text_of(chunks))
    assert finishes(chunks) == []
    shared.wait_idle()
    assert {a["status"] for a in admin(shared)["accounts"]} == {"ready"}


# --- TIMEOUT status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_status_before_text_fails_over_to_another_account(make_stack: StackMaker, stream: bool) -> None:
    stack = make_stack(accounts=2)
    settle(stack)
    stack.inject("status_timeout")  # the next completion, whichever account it is on
    prompt = f"gave up once, stream={stream}"
    want = expected(prompt, False, False, stack.sim.config).answer
    if stream:
        chunks, error = ask_stream(stack, prompt)
        assert error is None and text_of(chunks) == want and finishes(chunks) == ["stop"]
    else:
        assert ask(stack, prompt).choices[0].message.content == want
    stack.wait_idle()
    c = stack.counters()
    assert c["error_statuses"] == {"TIMEOUT": 1} and c["completions"] == 2 and c["finished"] == 1
    no_parallel_generation(c)
    first, second = completions(stack)
    assert first[0] != second[0], "retried on the other account"
    timed_out = [a for a in admin(stack)["accounts"] if a["status"] == "cooling"]
    assert len(timed_out) == 1 and "timed out" in timed_out[0]["reason"]


def test_timeout_status_after_text_is_an_error_event(shared: Stack) -> None:
    chunks, error = ask_stream(shared, "[[sim:delay=0.01]] [[sim:status_timeout=5]] slow upstream")
    assert isinstance(error, openai.APIError) and error.code == "upstream_timeout"
    assert "TIMEOUT" in error.message
    assert text_of(chunks) and finishes(chunks) == []


# --- event: toast ----------------------------------------------------------------------------------------


def test_error_toast_is_a_clean_error_naming_the_upstreams_words_without_a_hang(make_stack: StackMaker) -> None:
    # The simulator keeps the stream open for a minute after its toast: only understanding
    # the toast answers the client within the SDK's 30 s.
    stack = make_stack(accounts=2, sim=SimConfig(toast_hold=60.0))
    settle(stack)
    with pytest.raises(openai.APIStatusError) as caught:
        ask(stack, "[[sim:toast]] a mode the client is too old for")
    assert caught.value.status_code == 502
    assert TOAST_ERROR["content"] in caught.value.message
    stack.wait_idle()
    c = stack.counters()
    assert c["toasts"] == 1 and c["completions"] == 0  # not retried: every account would be told the same
    no_parallel_generation(c)
    assert {a["status"] for a in admin(stack)["accounts"]} == {"ready"}


def test_error_toast_mid_answer_is_an_error_event(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=1, sim=SimConfig(toast_hold=60.0))
    chunks, error = ask_stream(stack, "[[sim:delay=0.01]] [[sim:toast=5]] toasted halfway")
    assert isinstance(error, openai.APIError) and TOAST_ERROR["content"] in error.message
    assert text_of(chunks) and finishes(chunks) == []
    stack.wait_idle()
    assert admin(stack)["accounts"][0]["status"] == "ready" and admin(stack)["accounts"][0]["inflight"] == 0


# --- in-stream 40301 INVALID_POW_RESPONSE -------------------------------------------------------------------


def test_invalid_pow_response_is_answered_with_a_fresh_challenge(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=1)  # the retry can only be on the same account
    settle(stack)
    before = stack.counters()
    prompt = "[[sim:invalid_pow]] rejected once"
    reply = ask(stack, prompt)
    assert reply.choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer
    stack.wait_idle()
    c = stack.counters()
    assert c["pow_reject_reasons"] == {"directive": 1}
    assert c["challenges_issued"] - before["challenges_issued"] >= 1, "a second challenge after the 40301"
    sent = [headers["x-ds-pow-response"] for _, _, headers in completions(stack)]
    assert len(sent) == 2 and sent[0] != sent[1], "never the rejected answer again"
    assert c["logins"] == before["logins"]
    no_parallel_generation(c)
    (account,) = admin(stack)["accounts"]
    assert account["status"] == "ready" and account["logged_in"]


def test_a_challenge_issued_by_a_skewed_clock_is_still_kept_ready_and_accepted(make_stack: StackMaker) -> None:
    # The simulator's clock runs an hour behind this host: its expire_at looks long past
    # here, yet the challenge is valid for five minutes from its issue.
    stack = make_stack(accounts=2, sim=SimConfig(clock_skew=-3600.0))
    settle(stack)
    assert all(a["ready_ticket"] for a in admin(stack)["accounts"])
    for i in range(3):
        prompt = f"skewed clocks {i}"
        assert ask(stack, prompt).choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer
    c = stack.counters()
    assert c["pow_rejects"] == 0


# --- CDN/WAF blocks ----------------------------------------------------------------------------------------------


def test_a_waf_block_backs_off_the_whole_upstream_without_any_login(
    make_stack: StackMaker, caplog: pytest.LogCaptureFixture
) -> None:
    stack = make_stack(accounts=2, config={"deepseek": {"block_backoff": 0.5, "block_backoff_max": 30.0}})
    settle(stack)
    before = stack.counters()
    stack.call(lambda: stack.sim.configure(waf="captcha"))
    with caplog.at_level(logging.WARNING, logger="ds2a.pool.gate"):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(stack, "meets the captcha")
        assert caught.value.status_code == 503 and caught.value.code == "upstream_blocked"
        assert "blocking requests from this host" in caught.value.message
        assert stack.counters()["waf_blocks"] == 1
        # Meanwhile nothing reaches DeepSeek: every request is answered at once.
        for i in range(4):
            with pytest.raises(openai.APIStatusError) as again:
                ask(stack, f"while blocked {i}")
            assert again.value.status_code == 503 and int(again.value.response.headers["retry-after"]) >= 1
        upstream = admin(stack)["upstream"]
        assert upstream["status"] == "blocked" and upstream["blocks_in_a_row"] == 1 and "captcha" in upstream["reason"]
        assert upstream["backoff"] == 0.5
        assert stack.counters()["waf_blocks"] == 1
        # After the backoff one call probes (here the pool's own preparation): blocked again,
        # so the next wait is twice as long.
        wait_for(lambda: admin(stack)["upstream"]["blocks_in_a_row"] >= 2, what="a second, longer backoff")
        upstream = admin(stack)["upstream"]
        assert upstream["status"] == "blocked" and upstream["backoff"] == 1.0
        assert stack.counters()["waf_blocks"] == 2
        # The block lifts: once the backoff is over, the next call (a request, or the pool's
        # own preparation: then requests wait for that probe) goes through, and requests are served.
        stack.call(lambda: stack.sim.configure(waf=""))
        prompt = "after the block"
        replies: list[Any] = []

        def served() -> bool:
            try:
                replies.append(ask(stack, prompt))
            except openai.APIStatusError as exc:
                assert exc.code == "upstream_blocked"
                time.sleep(0.05)
                return False
            return True

        wait_for(served, what="the block to lift")
        assert replies[0].choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer
        assert admin(stack)["upstream"]["status"] == "ok"
    c = stack.counters()
    assert c["logins"] == before["logins"] and c["login_failures"] == 0 and c["auth_failures"] == 0
    no_parallel_generation(c)
    for account in admin(stack)["accounts"]:
        assert account["status"] in ("ready", "busy") and account["logged_in"], account
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "ds2a.pool.gate"]
    assert len([w for w in warnings if "is blocking requests" in w]) == 1, warnings  # once, not per request
    assert len([w for w in warnings if "answers requests from this host again" in w]) == 1, warnings


@pytest.mark.parametrize("mode", ["challenge", "challenge_body", "cloudflare", "cloudflare_429", "html"])
def test_every_kind_of_block_is_a_503_and_never_a_relogin(make_stack: StackMaker, mode: str) -> None:
    stack = make_stack(accounts=2, config={"deepseek": {"block_backoff": 30.0}})
    settle(stack)
    logins = stack.counters()["logins"]
    chunks, error = ask_stream(stack, f"[[sim:waf={mode}]] blocked by {mode}")
    assert isinstance(error, openai.APIStatusError) and error.status_code == 503
    assert error.code == "upstream_blocked" and chunks == []
    stack.wait_idle()
    c = stack.counters()
    assert c["waf_blocks"] == 1 and c["logins"] == logins and c["auth_failures"] == 0
    snapshot = admin(stack)
    assert snapshot["upstream"]["status"] == "blocked"
    assert all(a["status"] == "ready" and a["logged_in"] for a in snapshot["accounts"]), snapshot


# --- login answers -------------------------------------------------------------------------------------------------


def test_a_banned_account_is_never_used_again(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=2, sim=SimConfig(banned=("user0@example.com",)))
    settle(stack)
    for i in range(3):
        prompt = f"served despite a ban {i}"
        assert ask(stack, prompt).choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer
    banned = accounts(stack)["us***0@example.com"]
    assert banned["status"] == "banned" and "USER_IS_BANNED" in banned["reason"] and "remove it" in banned["reason"]
    c = stack.counters()
    assert c["login_banned"] == 1, "one login, never retried"
    assert {account for account, _, _ in completions(stack)} == {ACCOUNT1}


def test_an_account_banned_while_serving_is_found_at_its_next_login(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=2)
    settle(stack)
    prompt = "[[sim:banned]] the ban lands now"
    reply = ask(stack, prompt)
    assert reply.choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer
    wait_for(lambda: "banned" in {a["status"] for a in admin(stack)["accounts"]}, what="the ban to show")
    c = stack.counters()
    assert c["login_banned"] == 1 and c["logins"] == 2  # the two logins at start only
    statuses = sorted(a["status"] for a in admin(stack)["accounts"])
    assert statuses == ["banned", "ready"]


def test_device_refused_login_says_a_token_account_is_the_way(
    make_stack: StackMaker, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-from-a-logged-in-browser"
    config = {"accounts": [{"email": "user0@example.com", "password": SimConfig().password}, {"token": token}]}
    with caplog.at_level(logging.WARNING):
        stack = make_stack(sim=SimConfig(device_check=True, tokens=(token,)), config=config)
        settle(stack)
        prompt = "password login refused"
        assert ask(stack, prompt).choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer
    by_label = accounts(stack)
    refused = by_label["us***0@example.com"]
    assert refused["status"] == "login_failed"
    assert "RISK_DEVICE_DETECTED" in refused["reason"] and "token account" in refused["reason"]
    assert next(a for label, a in by_label.items() if label.startswith("token:"))["status"] in ("ready", "busy")
    assert stack.counters()["login_device_refused"] == 1
    assert any("token account" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_user_muted_at_login_is_muted_from_the_first_moment(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=2, sim=SimConfig(muted_at_login=("user0@example.com",), mute_seconds=3600.0))
    settle(stack)
    muted = accounts(stack)["us***0@example.com"]
    assert muted["status"] == "muted" and muted["logged_in"]
    upstream_until = stack.call(lambda: stack.sim.account("user0@example.com").mute_until)
    assert muted["mute_until"] == pytest.approx(upstream_until, abs=0.01)
    for i in range(3):
        ask(stack, f"never on the muted account {i}")
    c = stack.counters()
    assert c["muted_logins"] == 1 and c["muted_rejections"] == 0, "no generation was tried on it"
    assert {account for account, _, _ in completions(stack)} == {ACCOUNT1}


# --- new fragment types --------------------------------------------------------------------------------------------


def test_new_fragment_types_never_leak_and_still_feed_citations(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=1, sim=SimConfig(thinking_tokens=20, answer_tokens=60, cite_every=7))
    prompt = "weather in Guangzhou"
    plain = ask(stack, prompt, model="deepseek-reasoner-search").choices[0].message
    stack.call(lambda: stack.sim.configure(new_fragments=True))
    drifted = ask(stack, prompt, model="deepseek-reasoner-search").choices[0].message
    assert drifted.content == plain.content
    assert (drifted.model_extra or {}).get("reasoning_content") == (plain.model_extra or {}).get("reasoning_content")
    for text in (drifted.content or "", (drifted.model_extra or {}).get("reasoning_content") or ""):
        assert "Searching the web" not in text and "pages found" not in text and "file text" not in text
    assert drifted.annotations and [a.url_citation.url for a in drifted.annotations] == [
        a.url_citation.url for a in plain.annotations or []
    ]
    requests = stack.call(lambda: [r.body for r in stack.sim.requests if r.path == COMPLETION])
    assert len(requests) == 2


# --- heartbeats ---------------------------------------------------------------------------------------------------


def test_a_dead_stream_is_found_by_its_heartbeat_promise(make_stack: StackMaker) -> None:
    # deepseek.idle_timeout stays at 300 s: only the promise ends this within the SDK's 30 s.
    stack = make_stack(accounts=2)
    settle(stack)
    chunks, error = ask_stream(stack, "[[sim:heartbeat=0.3]] [[sim:stall=6]] goes dead")
    assert isinstance(error, openai.APIError) and error.code == "upstream_timeout"
    assert "heartbeat" in error.message
    assert text_of(chunks) and finishes(chunks) == []
    stack.wait_idle()
    c = stack.counters()
    assert c["stalls"] == 1 and c["stops"] == 1, "the dead generation is stopped before the account is reused"
    no_parallel_generation(c)
    assert all(a["inflight"] == 0 for a in admin(stack)["accounts"])


def test_a_stream_dead_before_its_first_text_fails_over(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=2, sim=SimConfig(heartbeat=0.3))
    settle(stack)
    stack.inject("stall", frames=2)  # ready, update_session, then silence
    prompt = "dead at first"
    assert ask(stack, prompt).choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer
    stack.wait_idle()
    c = stack.counters()
    assert c["stalls"] == 1 and c["completions"] == 2 and c["finished"] == 1
    no_parallel_generation(c)


def test_heartbeats_keep_a_long_quiet_answer_alive(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=1)
    prompt = "[[sim:heartbeat=0.3]] [[sim:pause=3]] thinks quietly for longer than 3 x 0.3 s"
    chunks, error = ask_stream(stack, prompt)
    assert error is None and finishes(chunks) == ["stop"]
    assert text_of(chunks) == expected(prompt, False, False, stack.sim.config).answer
    assert stack.counters()["heartbeats"] >= 5


# --- headers and client version ------------------------------------------------------------------------------------


def test_requests_carry_the_current_web_client_personality(shared: Stack) -> None:
    ask(shared, "which client are you")
    _, _, headers = completions(shared)[-1]
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-client-platform"] == "web" and lower["x-client-version"] == "2.5.0"
    assert lower["x-client-locale"] == "en_US" and lower["x-client-bundle-id"] == "com.deepseek.chat"
    assert int(lower["x-client-timezone-offset"]) == time.localtime().tm_gmtoff
    assert "x-app-version" not in lower


def test_client_version_too_low_tells_the_operator_what_to_change(
    make_stack: StackMaker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ds2a.deepseek.client"):
        stack = make_stack(accounts=2, sim=SimConfig(min_client_version="9.0.0"))
        with pytest.raises(openai.APIStatusError) as caught:
            ask(stack, "refused for the version")
    assert caught.value.status_code == 502
    assert "deepseek.client_version" in caught.value.message and "CLIENT_VERSION_TOO_LOW" in caught.value.message
    told = [r for r in caplog.records if "client_version" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in told]
    assert {a["status"] for a in admin(stack)["accounts"]} <= {"ready", "busy"}, "the accounts are not to blame"
    stack.call(lambda: stack.sim.configure(min_client_version="2.5.0"))  # the operator updated ds2a's version
    prompt = "after the update"
    wait_for(lambda: stack.call(lambda: all(a.token for a in stack.gateway.pool.accounts)), what="logins")
    assert ask(stack, prompt).choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer


# --- a user's stop ----------------------------------------------------------------------------------------------------


def test_a_stopped_answer_stays_stopped(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=1)
    prompt = "[[sim:user_stop=6]] stopped in the web UI"
    chunks, error = ask_stream(stack, prompt)
    assert error is None
    assert finishes(chunks) == ["length"]  # unfinished, and said so: not a fake "stop"
    assert expected(prompt, False, False, stack.sim.config).answer.startswith(text_of(chunks)) and text_of(chunks)
    stack.wait_idle()
    c = stack.counters()
    assert c["user_stops"] == 1 and c["continues"] == 0, "no automatic continuation of a user's stop"
    no_parallel_generation(c)
    assert admin(stack)["accounts"][0]["status"] == "ready"


def test_a_server_cut_is_still_continued(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=1)
    prompt = "[[sim:incomplete=6]] cut by the server"
    chunks, error = ask_stream(stack, prompt)
    assert error is None and finishes(chunks) == ["stop"]
    assert text_of(chunks) == expected(prompt, False, False, stack.sim.config).answer
    assert stack.counters()["continues"] == 1


# --- a broken upstream (issue 8, defect 6) ------------------------------------------------------------------------


def test_an_endless_block_ends_the_answer_with_a_clear_error_and_frees_the_account(make_stack: StackMaker) -> None:
    stack = make_stack(accounts=1)
    chunks, error = ask_stream(stack, "[[sim:endless_block=4]] never ends its block")
    assert isinstance(error, openai.APIError) and error.code == "upstream_protocol_error"
    assert "larger than" in error.message
    assert text_of(chunks) and finishes(chunks) == []
    stack.wait_idle()
    c = stack.counters()
    assert c["endless_blocks"] == 1 and c["stops"] == 1, "the generation behind it is stopped"
    (account,) = admin(stack)["accounts"]
    assert account["inflight"] == 0 and account["status"] == "ready"
    prompt = "served after the broken answer"
    assert ask(stack, prompt).choices[0].message.content == expected(prompt, False, False, stack.sim.config).answer
