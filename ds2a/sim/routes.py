"""The /api/v0 endpoints, each checking what the real service checks, in that order."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ds2a.deepseek.pow import COMPLETION_PATH
from ds2a.sim import bodies, directives
from ds2a.sim.accounts import Message
from ds2a.sim.directives import Directives
from ds2a.sim.faults import AUTH, GATE, LOGIN, MODIFIERS, REFUSALS, Fault
from ds2a.sim.frames import Compiled, compile_plan
from ds2a.sim.generation import (
    CONTEXT_LENGTH_EXCEEDED, INCOMPLETE, TIMEOUT, Behaviour, Generation, error_frame_stream, hint_stream, toast_stream,
)
from ds2a.sim.text import plan_for, sizes_for

if TYPE_CHECKING:
    from ds2a.sim.accounts import Account, Session
    from ds2a.sim.app import Simulator

SIM_KEY: web.AppKey[Simulator] = web.AppKey("ds2a_sim")

DEFAULT_DROP_FRAMES = 8
DEFAULT_SLOW_SECONDS = 3.0
DEFAULT_STALL_FRAMES = 4
DEFAULT_PAUSE_SECONDS = 3.0
DEFAULT_WAF_MODE = "captcha"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v0/users/login", login)
    app.router.add_get("/api/v0/users/current", current_user)
    app.router.add_post("/api/v0/chat_session/create", create_session)
    app.router.add_post("/api/v0/chat_session/delete", delete_session)
    app.router.add_post("/api/v0/chat/create_pow_challenge", create_pow_challenge)
    app.router.add_post("/api/v0/chat/completion", completion)
    app.router.add_post("/api/v0/chat/continue", continue_stream)
    app.router.add_post("/api/v0/chat/stop_stream", stop_stream)


# --- in front of everything: the CDN/WAF and the client-version check (§16.2, §16.4) ------


@web.middleware
async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
    """What answers before the API sees a request: a CDN/WAF block (the whole host is
    refused, whatever the account), or 40005 for a client version the service no longer
    accepts. Only /api/v0 is gated; /_sim stays reachable."""
    if not request.path.startswith("/api/v0/"):
        return await handler(request)
    sim = request.app[SIM_KEY]
    gated = {f.name: f for f in sim.faults.take(GATE, set())}
    sim.counters.faults_fired += len(gated)
    mode = str(gated["waf"].params.get("mode", DEFAULT_WAF_MODE)) if "waf" in gated else sim.config.waf
    if mode:
        return waf_block(sim, mode)
    if "client_too_old" in gated or too_old(request.headers.get("x-client-version"), sim.config.min_client_version):
        sim.counters.client_too_old += 1
        return reply(sim, bodies.CLIENT_TOO_OLD)
    return await handler(request)


def waf_block(sim: Simulator, mode: str) -> web.Response:
    """The shapes of §2.1/§16.4; the simulator picks the HTML (a captcha page)."""
    sim.counters.waf_blocks += 1
    html = "text/html"
    if mode == "challenge":
        return web.Response(body=bodies.WAF_PAGE, status=202, content_type=html,
                            headers={"x-amzn-waf-action": "challenge"})
    if mode == "challenge_body":
        return web.Response(body=bodies.CHALLENGE_BODY, status=202, content_type="application/json")
    if mode == "cloudflare":
        return web.Response(body=bodies.WAF_PAGE, status=403, content_type=html, headers={"cf-mitigated": "challenge"})
    if mode == "cloudflare_429":
        return web.Response(body=bodies.WAF_PAGE, status=429, content_type=html, headers={"cf-mitigated": "challenge"})
    if mode == "html":
        return web.Response(body=bodies.WAF_PAGE, status=200, content_type=html)
    return web.Response(body=bodies.WAF_PAGE, status=405, content_type=html, headers={"x-amzn-waf-action": "captcha"})


def too_old(version: str | None, minimum: str) -> bool:
    if not minimum:
        return False
    return _version(version or "") < _version(minimum)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# --- helpers ----------------------------------------------------------------------


def reply(sim: Simulator, body: bytes, status: int = 200) -> web.Response:
    # Errors come with HTTP 200 like everything else (§2.1); only 422 differs.
    return web.Response(body=body, status=status, content_type="application/json",
                        headers={"x-ds-trace-id": sim.trace_id()})


async def read_body(request: web.Request) -> dict[str, Any] | None:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def missing(body: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    return [name for name in fields if name not in body]


def authenticate(sim: Simulator, request: web.Request) -> Account | web.Response:
    header = request.headers.get("Authorization", "").strip()
    if not header:
        sim.counters.auth_failures += 1
        return reply(sim, bodies.MISSING_TOKEN)
    scheme, _, token = header.partition(" ")
    account = sim.accounts.authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if account is not None and sim.faults.take(AUTH, account.aliases):
        sim.counters.faults_fired += 1
        sim.accounts.revoke(account.token)
        account = None
    if account is None:
        sim.counters.auth_failures += 1
        return reply(sim, bodies.INVALID_TOKEN)
    return account


async def authenticated_body(
    sim: Simulator, request: web.Request, required: tuple[str, ...]
) -> tuple[Account, dict[str, Any]] | web.Response:
    account = authenticate(sim, request)
    if isinstance(account, web.Response):
        return account
    body = await read_body(request)
    if body is None:
        return reply(sim, bodies.invalid_json(), 422)
    absent = missing(body, required)
    if absent:
        return reply(sim, bodies.missing_fields(absent), 422)
    return account, body


# --- users ------------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    body = await read_body(request)
    if body is None:
        return reply(sim, bodies.invalid_json(), 422)
    absent = missing(body, ("password", "device_id", "os"))
    if absent:
        return reply(sim, bodies.missing_fields(absent), 422)
    account = sim.accounts.login(
        _text(body.get("email")), _text(body.get("mobile")), _text(body.get("area_code")), str(body["password"])
    )
    if account is None:
        sim.counters.login_failures += 1
        return reply(sim, bodies.WRONG_PASSWORD)
    faults = {f.name: f for f in sim.faults.take(LOGIN, account.aliases)}
    sim.counters.faults_fired += len(faults)
    # Which check comes first upstream is unpublished: a ban outranks the device check here.
    if account.banned or "banned" in faults:
        sim.counters.login_banned += 1
        return reply(sim, bodies.BANNED_LOGIN)
    if sim.config.device_check or account.device_refused or "risk_device" in faults:
        sim.counters.login_device_refused += 1
        return reply(sim, bodies.RISK_DEVICE_LOGIN)
    now = time.time()
    if "muted_login" in faults:
        account.mute_until = now + float(faults["muted_login"].params.get("seconds", sim.config.mute_seconds))
    sim.counters.logins += 1
    if account.muted(now):
        sim.counters.muted_logins += 1  # a login succeeds for a muted user, and says so (§16.3)
    return reply(sim, bodies.ok({"user": account.user_json(now)}))


async def current_user(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    account = authenticate(sim, request)
    if isinstance(account, web.Response):
        return account
    return reply(sim, bodies.ok(account.user_json(time.time())))


# --- sessions and challenges --------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    got = await authenticated_body(sim, request, ())
    if isinstance(got, web.Response):
        return got
    session = sim.accounts.create_session(got[0])
    sim.counters.sessions_created += 1
    if sim.config.legacy_session_shape:
        return reply(sim, bodies.ok(session.json()))
    return reply(sim, bodies.ok({"chat_session": session.json(), "ttl_seconds": sim.config.session_ttl}))


async def delete_session(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    got = await authenticated_body(sim, request, ("chat_session_id",))
    if isinstance(got, web.Response):
        return got
    # Deleting an unknown session answers success too: the service's reply is unknown
    # and a gateway's cleanup should not fail over it.
    if sim.accounts.delete_session(got[0], got[1]["chat_session_id"]):
        sim.counters.sessions_deleted += 1
    return reply(sim, bodies.ok(None))


async def create_pow_challenge(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    got = await authenticated_body(sim, request, ("target_path",))
    if isinstance(got, web.Response):
        return got
    config = sim.config
    challenge = sim.challenges.issue(str(got[1]["target_path"]), config.difficulty, config.pow_expire_ms)
    sim.counters.challenges_issued += 1
    return reply(sim, bodies.ok({"challenge": challenge}))


# --- generation ---------------------------------------------------------------------


async def completion(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    body = await read_body(request)
    record = sim.record(request, body)
    account = authenticate(sim, request)
    if isinstance(account, web.Response):
        return account
    record.account = account.key
    reason = sim.challenges.verify(request.headers.get("x-ds-pow-response"), COMPLETION_PATH)
    if reason is not None:
        sim.counters.reject_pow(reason)
        if reason in ("missing", "undecodable"):
            return reply(sim, bodies.POW_MISSING_HEADER)
        if sim.config.pow_reject_in_stream:
            return await error_frame_stream(sim, request, bodies.POW_INVALID_IN_STREAM)
        return reply(sim, bodies.POW_INVALID)
    if body is None:
        return reply(sim, bodies.invalid_json(), 422)
    absent = missing(body, ("chat_session_id", "prompt"))
    if absent:
        return reply(sim, bodies.missing_fields(absent), 422)
    prompt = body["prompt"] if isinstance(body["prompt"], str) else str(body["prompt"])
    found = directives.parse(prompt)
    if "waf" in found:
        return waf_block(sim, found.values["waf"] or DEFAULT_WAF_MODE)
    if "client_too_old" in found:
        sim.counters.client_too_old += 1
        return reply(sim, bodies.CLIENT_TOO_OLD)
    if "invalid_pow" in found and sim.directive_hits[("invalid_pow", prompt)] < found.integer("invalid_pow", 1):
        # The first N requests with this prompt are rejected as if the answer were stale.
        sim.directive_hits[("invalid_pow", prompt)] += 1
        sim.counters.reject_pow("directive")
        return await error_frame_stream(sim, request, bodies.POW_INVALID_IN_STREAM)
    if "expired_token" in found or _account_directive(sim, account, prompt, found):
        sim.accounts.revoke(account.token)
        sim.counters.auth_failures += 1
        return reply(sim, bodies.INVALID_TOKEN)
    session = sim.accounts.session_of(account, body["chat_session_id"])
    if session is None or "invalid_session" in found:
        sim.counters.invalid_sessions += 1
        return reply(sim, bodies.INVALID_SESSION)
    return await _generate(sim, request, account, session, body, prompt, found)


def _account_directive(sim: Simulator, account: Account, prompt: str, found: Directives) -> bool:
    """[[sim:banned]], [[sim:risk_device]], [[sim:muted_login=S]]: something happens to the
    account that serves this prompt first (once per prompt, so a gateway's retry on another
    account is served); its token dies now, and its next login shows what (§16.3)."""
    names = [name for name in ("banned", "risk_device", "muted_login") if name in found]
    if not names or sim.directive_hits[(names[0], prompt)]:
        return False
    sim.directive_hits[(names[0], prompt)] += 1
    if "banned" in found:
        account.banned = True
    elif "risk_device" in found:
        account.device_refused = True
    elif "muted_login" in found:
        account.mute_until = time.time() + found.number("muted_login", sim.config.mute_seconds)
    else:
        return False
    return True


async def _generate(sim: Simulator, request: web.Request, account: Account, session: Session,
                    body: dict[str, Any], prompt: str, found: Directives) -> web.StreamResponse:
    if account.muted(time.time()):
        return _muted(sim, account)
    faults = {f.name: f for f in sim.faults.take(REFUSALS | MODIFIERS, account.aliases)}
    sim.counters.faults_fired += len(faults)
    if "muted" in faults or "muted" in found:
        seconds = faults["muted"].params.get("seconds") if "muted" in faults else None
        account.mute_until = time.time() + float(seconds or found.number("muted", sim.config.mute_seconds))
        return _muted(sim, account)
    model_type = body.get("model_type") or session.model_type or "default"
    ready = {"request_message_id": session.next_id, "response_message_id": session.next_id + 1,
             "model_type": model_type}
    with sim.streaming(account):
        if account.generation is not None:
            sim.counters.parallel_violations += 1
            return await hint_stream(sim, request, ready, bodies.BUSY_HINT, bodies.CLOSE_RETRY)
        refused = await _refuse(sim, request, ready, faults, found)
        if refused is not None:
            return refused
        thinking, search = bool(body.get("thinking_enabled")), bool(body.get("search_enabled"))
        plan = plan_for(prompt, thinking, search, sizes_for(prompt, sim.config))
        behaviour = _behaviour(sim, found, faults, plan.usage)
        if behaviour.toast_after == 0:
            return await toast_stream(sim, request, ready, behaviour.heartbeat)
        new_fragments = sim.config.new_fragments or "new_fragments" in found
        compiled = compile_plan(plan, behaviour.chunk, sim.config.keepalive_every, sim.config.tip, new_fragments)
        message = _new_message(session, model_type, thinking, search, compiled, behaviour.delay)
        sim.counters.completions += 1
        return await Generation(sim, account, message, behaviour, request).run(resume=False)


async def _refuse(sim: Simulator, request: web.Request, ready: dict[str, Any], faults: dict[str, Fault],
                  found: Directives) -> web.StreamResponse | None:
    """Hint-stream refusals; the ids in `ready` are not used up (the turn never happened)."""
    if "rate_limit" in faults or "rate_limit" in found:
        return await hint_stream(sim, request, ready, bodies.RATE_LIMIT_HINT, bodies.CLOSE_RETRY)
    if "input_too_long" in faults or "input_too_long" in found:
        return await hint_stream(sim, request, ready, bodies.INPUT_TOO_LONG_HINT, bodies.CLOSE_NONE)
    if "busy" in faults or "busy" in found:
        return await hint_stream(sim, request, ready, bodies.BUSY_HINT, bodies.CLOSE_RETRY)
    if "invalid_pow" in faults:
        sim.counters.reject_pow("fault")
        return await error_frame_stream(sim, request, bodies.POW_INVALID_IN_STREAM)
    return None


def _muted(sim: Simulator, account: Account) -> web.Response:
    sim.counters.muted_rejections += 1
    return reply(sim, bodies.muted(round(account.mute_until or 0.0, 3)))


def _behaviour(sim: Simulator, found: Directives, faults: dict[str, Fault], usage: int) -> Behaviour:
    config = sim.config
    first_delay = found.number("first_delay", config.first_delay)
    if "slow_first_byte" in found:
        first_delay = found.number("slow_first_byte", DEFAULT_SLOW_SECONDS)
    if "slow_first_byte" in faults:
        first_delay = float(faults["slow_first_byte"].params.get("seconds", DEFAULT_SLOW_SECONDS))
    behaviour = Behaviour(
        delay=found.number("delay", config.delay),
        first_delay=first_delay,
        chunk=max(1, found.integer("chunk", config.chunk)),
        content_filter="content_filter" in faults or "content_filter" in found,
    )
    half = max(1, usage // 2)  # default cut: halfway, so the answer is always unfinished
    if "incomplete" in faults:
        behaviour.incomplete_after = int(faults["incomplete"].params.get("tokens", half))
    elif "incomplete" in found:
        behaviour.incomplete_after = found.integer("incomplete", half)
    if "drop" in faults:
        behaviour.drop_after = max(1, int(faults["drop"].params.get("frames", DEFAULT_DROP_FRAMES)))
    elif "drop" in found:
        behaviour.drop_after = max(1, found.integer("drop", DEFAULT_DROP_FRAMES))
    _drift_behaviour(sim, found, faults, behaviour, half)
    return behaviour


def _drift_behaviour(sim: Simulator, found: Directives, faults: dict[str, Fault], behaviour: Behaviour,
                     half: int) -> None:
    """The endings and stream conditions of §16 (a fault's params, else the directive's value)."""
    for name, status in (("context_length_exceeded", CONTEXT_LENGTH_EXCEEDED), ("status_timeout", TIMEOUT)):
        after = _amount(name, found, faults, "tokens", 0)
        if after is not None and (behaviour.end_status is None or after < behaviour.end_after):
            behaviour.end_status, behaviour.end_after = status, int(after)
    after = _amount("toast", found, faults, "tokens", 0)
    if after is not None:
        behaviour.toast_after = int(after)
    after = _amount("user_stop", found, faults, "tokens", half)
    if after is not None:
        behaviour.user_stop_after = int(after)
    frames = _amount("stall", found, faults, "frames", DEFAULT_STALL_FRAMES)
    if frames is not None:
        behaviour.stall_after = max(1, int(frames))
    frames = _amount("endless_block", found, faults, "frames", DEFAULT_STALL_FRAMES)
    if frames is not None:
        behaviour.endless_after = max(1, int(frames))
    pause = _amount("pause", found, faults, "seconds", DEFAULT_PAUSE_SECONDS)
    if pause is not None:
        behaviour.pause = float(pause)
    behaviour.heartbeat = found.number("heartbeat", sim.config.heartbeat)


def _amount(name: str, found: Directives, faults: dict[str, Fault], param: str, default: float) -> float | None:
    if name in faults:
        return float(faults[name].params.get(param, default))
    if name in found:
        return found.number(name, default)
    return None


def _new_message(session: Session, model_type: str, thinking: bool, search: bool, compiled: Compiled,
                 delay: float) -> Message:
    message = Message(
        session=session, request_id=session.next_id, response_id=session.next_id + 1, thinking=thinking,
        search=search, model_type=model_type, compiled=compiled, inserted_at=time.time(),
        first_turn=session.turns == 0, delay=delay,
    )
    session.next_id += 2
    session.turns += 1
    session.model_type = session.model_type or model_type
    session.messages[message.response_id] = message
    return message


async def continue_stream(request: web.Request) -> web.StreamResponse:
    """chat/continue: no PoW header (the web client's captures send none)."""
    sim = request.app[SIM_KEY]
    body = await read_body(request)
    record = sim.record(request, body)
    got = await authenticated_body(sim, request, ("chat_session_id", "message_id"))
    if isinstance(got, web.Response):
        return got
    account, body = got
    record.account = account.key
    session = sim.accounts.session_of(account, body["chat_session_id"])
    if session is None:
        sim.counters.invalid_sessions += 1
        return reply(sim, bodies.INVALID_SESSION)
    message = session.messages.get(body["message_id"]) if type(body["message_id"]) is int else None
    if message is None or message.status != INCOMPLETE:
        return reply(sim, bodies.INVALID_MESSAGE)
    if account.muted(time.time()):
        return _muted(sim, account)
    # Injected faults apply to continuations too; prompt directives belong to the turn
    # that carried them and do not fire again here.
    faults = {f.name: f for f in sim.faults.take(REFUSALS | MODIFIERS, account.aliases)}
    sim.counters.faults_fired += len(faults)
    if "muted" in faults:
        account.mute_until = time.time() + float(faults["muted"].params.get("seconds", sim.config.mute_seconds))
        return _muted(sim, account)
    ready = sim.ready_payload(message)
    with sim.streaming(account):
        if account.generation is not None:
            sim.counters.parallel_violations += 1
            return await hint_stream(sim, request, ready, bodies.BUSY_HINT, bodies.CLOSE_RETRY)
        refused = await _refuse(sim, request, ready, faults, directives.EMPTY)
        if refused is not None:
            return refused
        behaviour = _behaviour(sim, directives.EMPTY, faults, message.compiled.plan.usage - message.tokens)
        behaviour.delay = message.delay
        if behaviour.toast_after == 0:
            return await toast_stream(sim, request, ready, behaviour.heartbeat)
        message.status = "WIP"
        sim.counters.continues += 1
        return await Generation(sim, account, message, behaviour, request).run(resume=True)


async def stop_stream(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    got = await authenticated_body(sim, request, ("chat_session_id", "message_id"))
    if isinstance(got, web.Response):
        return got
    account, body = got
    sim.counters.stops += 1
    session = sim.accounts.session_of(account, body["chat_session_id"])
    if session is None:
        sim.counters.invalid_sessions += 1
        return reply(sim, bodies.INVALID_SESSION)
    message = session.messages.get(body["message_id"]) if type(body["message_id"]) is int else None
    if message is not None and message.generation is not None:
        message.generation.stop()
    return reply(sim, bodies.ok(None))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
