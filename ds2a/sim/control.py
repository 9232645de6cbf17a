"""/_sim/ endpoints: drive a simulator running in another process."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ds2a.sim import routes


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_sim/counters", counters)
    app.router.add_get("/_sim/requests", requests)
    app.router.add_post("/_sim/faults", faults)
    app.router.add_post("/_sim/reset", reset)
    app.router.add_post("/_sim/config", config)
    app.router.add_post("/_sim/accounts", accounts)
    app.router.add_post("/_sim/revoke", revoke)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(value, ensure_ascii=False), status=status, content_type="application/json")


async def _object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


async def counters(request: web.Request) -> web.Response:
    return _json(request.app[routes.SIM_KEY].counters.snapshot())


async def requests(request: web.Request) -> web.Response:
    return _json([r.as_json() for r in request.app[routes.SIM_KEY].requests])


async def faults(request: web.Request) -> web.Response:
    """{"fault": name, "account": ident|null, "count": n, "params": {...}}"""
    body = await _object(request)
    params = body.get("params") or {}
    if not isinstance(params, dict):
        return _json({"error": "params must be an object"}, 400)
    try:
        request.app[routes.SIM_KEY].inject(
            str(body.get("fault")), body.get("account"), int(body.get("count", 1)), **params
        )
    except (TypeError, ValueError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json({"ok": True})


async def reset(request: web.Request) -> web.Response:
    request.app[routes.SIM_KEY].reset()
    return _json({"ok": True})


async def config(request: web.Request) -> web.Response:
    sim = request.app[routes.SIM_KEY]
    try:
        sim.configure(**await _object(request))
    except (TypeError, ValueError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json(sim.config.runtime_view())


async def accounts(request: web.Request) -> web.Response:
    """{"email"|"mobile"|"token", "password"} -> {"token"}"""
    body = await _object(request)
    token = request.app[routes.SIM_KEY].add_account(
        email=body.get("email"), mobile=body.get("mobile"), password=body.get("password"), token=body.get("token")
    )
    return _json({"token": token})


async def revoke(request: web.Request) -> web.Response:
    body = await _object(request)
    return _json({"revoked": request.app[routes.SIM_KEY].revoke_token(str(body.get("token")))})
