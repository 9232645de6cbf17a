"""Router on its own: matching, parameters, HEAD, OPTIONS/preflight, 404 and 405 answers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest

from ds2a.api.errors import render_openai_error
from ds2a.server.errors import HTTPError
from ds2a.server import Request, Responder, Router


class FakeResponder:
    """Records what the router (or a handler) answered."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, str, list[tuple[str, str]]]] = []

    def send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.sent.append((status, body, content_type, list(headers)))

    @property
    def status(self) -> int:
        return self.sent[-1][0]

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.sent[-1][3])

    def json(self) -> Any:
        return json.loads(self.sent[-1][1])


def request(method: str, path: str, **headers: str) -> Request:
    return Request(
        method=method,
        path=path,
        query="",
        headers={k.replace("_", "-"): v for k, v in headers.items()},
        body=b"",
        client=None,
    )


def named(name: str) -> Any:
    async def handler(req: Request, resp: Responder) -> None:
        resp.send(200, json.dumps({"handler": name, "params": req.params}).encode())

    return handler


def router() -> Router:
    r = Router()
    r.add("GET", "/v1/models", named("list"))
    r.add("GET", "/v1/models/{model}", named("one"))
    r.add("DELETE", "/v1/models/{model}", named("delete"))
    r.add("POST", "/v1/chat/completions", named("chat"))
    r.add("GET", "/v1/files/{file}/content", named("content"))
    return r


async def call(r: Router, req: Request) -> FakeResponder:
    """As the server does: a raised HTTPError is answered through the dialect's renderer."""
    resp = FakeResponder()
    try:
        await r(req, resp)  # type: ignore[arg-type]
    except HTTPError as exc:
        resp.send(exc.status, render_openai_error(req.path, exc), headers=exc.headers)
    return resp


async def test_static_and_parameter_routes() -> None:
    r = router()
    assert (await call(r, request("GET", "/v1/models"))).json() == {"handler": "list", "params": {}}
    assert (await call(r, request("GET", "/v1/models/deepseek%2Dchat"))).json() == {
        "handler": "one",
        "params": {"model": "deepseek-chat"},
    }
    assert (await call(r, request("DELETE", "/v1/models/x"))).json()["handler"] == "delete"
    assert (await call(r, request("GET", "/v1/files/f1/content"))).json() == {
        "handler": "content",
        "params": {"file": "f1"},
    }


@pytest.mark.parametrize("path", ["/v1/model", "/v1/models/", "/v1/models/a/b", "/v1/files//content", "/", "*"])
async def test_unknown_paths_get_404_in_openai_shape(path: str) -> None:
    resp = await call(router(), request("POST", path))
    assert resp.status == 404
    assert resp.json() == {
        "error": {"message": f"Invalid URL (POST {path})", "type": "invalid_request_error", "param": None, "code": None}
    }


async def test_wrong_method_gets_405_with_allow() -> None:
    resp = await call(router(), request("GET", "/v1/chat/completions"))
    assert resp.status == 405
    assert resp.headers == {"allow": "OPTIONS, POST"}
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "method_not_allowed"
    assert "GET" in error["message"] and "/v1/chat/completions" in error["message"]
    resp = await call(router(), request("PUT", "/v1/models/x"))
    assert resp.headers == {"allow": "DELETE, GET, HEAD, OPTIONS"}


async def test_head_uses_the_get_handler_unless_one_is_registered() -> None:
    r = router()
    assert (await call(r, request("HEAD", "/v1/models"))).json()["handler"] == "list"
    assert (await call(r, request("HEAD", "/v1/chat/completions"))).status == 405
    r.add("HEAD", "/v1/models", named("own-head"))
    assert (await call(r, request("HEAD", "/v1/models"))).json()["handler"] == "own-head"


async def test_cors_preflight() -> None:
    resp = await call(
        router(),
        request(
            "OPTIONS",
            "/v1/chat/completions",
            origin="https://x.example",
            access_control_request_method="POST",
            access_control_request_headers="Authorization, Content-Type, X-Stainless-OS",
        ),
    )
    assert resp.status == 204 and resp.sent[-1][1] == b""
    assert resp.headers == {
        "allow": "OPTIONS, POST",
        "access-control-allow-methods": "OPTIONS, POST",
        "access-control-allow-headers": "Authorization, Content-Type, X-Stainless-OS",
        "access-control-max-age": "7200",
    }


async def test_plain_options_lists_methods_and_unknown_path_is_404() -> None:
    resp = await call(router(), request("OPTIONS", "/v1/models/m"))
    assert resp.status == 204 and resp.headers == {"allow": "DELETE, GET, HEAD, OPTIONS"}
    assert (await call(router(), request("OPTIONS", "/nope", access_control_request_method="GET"))).status == 404


async def test_registered_options_handler_wins() -> None:
    r = router()
    r.add("OPTIONS", "/v1/models", named("own-options"))
    assert (await call(r, request("OPTIONS", "/v1/models"))).json()["handler"] == "own-options"


def test_bad_registrations_are_refused() -> None:
    r = router()
    with pytest.raises(ValueError, match="duplicate"):
        r.add("get", "/v1/models", named("again"))
    with pytest.raises(ValueError, match="duplicate"):
        r.add("GET", "/v1/models/{model}", named("again"))
    with pytest.raises(ValueError, match="start with"):
        r.add("GET", "v1/models", named("relative"))


async def test_decorator_form() -> None:
    r = Router()

    @r.route("post", "/things/{id}")
    async def make(req: Request, resp: Responder) -> None:
        resp.send(201, req.params["id"].encode())

    resp = await call(r, request("POST", "/things/a%20b"))
    assert (resp.status, resp.sent[-1][1]) == (201, b"a b")
