"""Router: method + path (with ``{param}`` segments) -> handler.

Also answers what every route shares: 404 and 405 (+ Allow) in OpenAI's error shape,
HEAD through the GET handler (the responder drops the body), and OPTIONS, including
CORS preflight. The Access-Control-Allow-Origin header itself is added by the
responder to every response, this one included.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

from .cors import allowed_request_headers
from .errors import HTTPError
from .request import Request
from .responder import Responder
from .server import Handler

# Browsers cap this anyway (Chromium at 2 hours); it spares one preflight per request.
PREFLIGHT_MAX_AGE = "7200"

_Methods = dict[str, Handler]


class _Pattern:
    """A route with parameters, matched segment by segment."""

    __slots__ = ("methods", "segments")

    def __init__(self, segments: list[str]) -> None:
        self.segments = segments
        self.methods: _Methods = {}

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.segments, parts):
            if want[:1] == "{":
                if not got:
                    return None
                params[want[1:-1]] = unquote(got)
            elif want != got:
                return None
        return params


class Router:
    def __init__(self) -> None:
        self._static: dict[str, _Methods] = {}
        self._patterns: list[_Pattern] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` on ``path`` ("/v1/models/{model}")."""
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        methods = self._methods_for(path)
        method = method.upper()
        if method in methods:
            raise ValueError(f"duplicate route: {method} {path}")
        methods[method] = handler

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        """Decorator form of ``add``."""

        def register(handler: Handler) -> Handler:
            self.add(method, path, handler)
            return handler

        return register

    def _methods_for(self, path: str) -> _Methods:
        if "{" not in path:
            return self._static.setdefault(path, {})
        segments = path.split("/")
        for pattern in self._patterns:
            if pattern.segments == segments:
                return pattern.methods
        pattern = _Pattern(segments)
        self._patterns.append(pattern)
        return pattern.methods

    def resolve(self, path: str) -> tuple[_Methods, dict[str, str]] | None:
        """The handlers registered for ``path`` and its parameters; None if no route matches."""
        methods = self._static.get(path)
        if methods is not None:
            return methods, {}
        if self._patterns:
            parts = path.split("/")
            for pattern in self._patterns:
                params = pattern.match(parts)
                if params is not None:
                    return pattern.methods, params
        return None

    async def __call__(self, request: Request, responder: Responder) -> None:
        found = self.resolve(request.path)
        if found is None:
            raise HTTPError(404, f"Invalid URL ({request.method} {request.path})")
        methods, params = found
        handler = methods.get(request.method)
        if handler is None:
            if request.method == "HEAD":
                handler = methods.get("GET")
            elif request.method == "OPTIONS":
                answer_options(request, responder, allowed_methods(methods))
                return
        if handler is None:
            allow = allowed_methods(methods)
            message = f"Method {request.method} not allowed for {request.path} (allowed: {allow})"
            raise HTTPError(405, message, code="method_not_allowed", headers=[("allow", allow)])
        request.params = params
        await handler(request, responder)


def allowed_methods(methods: _Methods) -> str:
    names = set(methods)
    if "GET" in names:
        names.add("HEAD")
    names.add("OPTIONS")
    return ", ".join(sorted(names))


def answer_options(request: Request, responder: Responder, allow: str) -> None:
    """204: a CORS preflight gets the Access-Control-Allow-* answer, plain OPTIONS gets Allow."""
    headers = [("allow", allow)]
    if "access-control-request-method" in request.headers:
        headers.append(("access-control-allow-methods", allow))
        requested = allowed_request_headers(request.headers.get("access-control-request-headers", ""))
        if requested:
            headers.append(("access-control-allow-headers", requested))
        headers.append(("access-control-max-age", PREFLIGHT_MAX_AGE))
    responder.send(204, b"", headers=headers)
