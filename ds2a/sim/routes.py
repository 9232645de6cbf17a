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
from ds2a.sim.faults import AUTH, MODIFIERS, REFUSALS, Fault
from ds2a.sim.frames import Compiled, compile_plan
from ds2a.sim.generation import INCOMPLETE, Behaviour, Generation, hint_stream
from ds2a.sim.text import plan_for, sizes_for

if TYPE_CHECKING:
    from ds2a.sim.accounts import Account, Session
    from ds2a.sim.app import Simulator

SIM_KEY: web.AppKey[Simulator] = web.AppKey("ds2a_sim")

DEFAULT_DROP_FRAMES = 8
DEFAULT_SLOW_SECONDS = 3.0


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v0/users/login", login)
    app.router.add_get("/api/v0/users/current", current_user)
    app.router.add_post("/api/v0/chat_session/create", create_session)
    app.router.add_post("/api/v0/chat_session/delete", delete_session)
    app.router.add_post("/api/v0/chat/create_pow_challenge", create_pow_challenge)
    app.router.add_post("/api/v0/chat/completion", completion)
    app.router.add_post("/api/v0/chat/continue", continue_stream)
    app.router.add_post("/api/v0/chat/stop_stream", stop_stream)


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
    sim.counters.logins += 1
    return reply(sim, bodies.ok({"user": account.user_json(time.time())}))


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
        return reply(sim, bodies.POW_MISSING_HEADER if reason in ("missing", "undecodable") else bodies.POW_INVALID)
    if body is None:
        return reply(sim, bodies.invalid_json(), 422)
    absent = missing(body, ("chat_session_id", "prompt"))
    if absent:
        return reply(sim, bodies.missing_fields(absent), 422)
    prompt = body["prompt"] if isinstance(body["prompt"], str) else str(body["prompt"])
    found = directives.parse(prompt)
    if "expired_token" in found:
        sim.accounts.revoke(account.token)
        sim.counters.auth_failures += 1
        return reply(sim, bodies.INVALID_TOKEN)
    session = sim.accounts.session_of(account, body["chat_session_id"])
    if session is None or "invalid_session" in found:
        sim.counters.invalid_sessions += 1
        return reply(sim, bodies.INVALID_SESSION)
    return await _generate(sim, request, account, session, body, prompt, found)


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
        compiled = compile_plan(plan, behaviour.chunk, sim.config.keepalive_every, sim.config.tip)
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
    return behaviour


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
