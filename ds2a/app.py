"""The gateway assembled: config -> DeepSeek client -> account pool -> API handlers -> HTTP server."""

from __future__ import annotations

import json
import logging

from ds2a.anthropic.errors import render_anthropic_error
from ds2a.anthropic.handler import MessagesHandler
from ds2a.anthropic.models import ClaudeModels
from ds2a.api.auth import Authenticator
from ds2a.api.chat import ChatHandler
from ds2a.api.errors import render_openai_error
from ds2a.api.models import ModelTable
from ds2a.config import Config
from ds2a.deepseek import pow as pow_
from ds2a.deepseek.client import DeepSeekClient
from ds2a.pool import AccountPool
from ds2a.relay.core import Relay
from ds2a.responses.handler import ResponsesHandler
from ds2a.responses.store import MemoryStore
from ds2a.server import ErrorRenderer, HTTPError, HTTPServer, Request, Responder, Router

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = DeepSeekClient(config.deepseek)
        self.pool = AccountPool(config, self.client)
        self.models = ModelTable.from_config(config.api, config.deepseek)
        self.auth = Authenticator(config.keys, allow_direct_tokens=config.api.allow_direct_tokens)
        self.relay = Relay(config, self.pool)
        self.chat = ChatHandler(config, self.relay, self.models, self.auth)
        claude_models = ClaudeModels.from_config(config.anthropic, self.models)
        self.anthropic = MessagesHandler(config, self.relay, claude_models, self.auth)
        limits = config.responses
        self.response_store = MemoryStore(
            max_count=limits.store_max_count, max_age=limits.store_max_age, max_bytes=limits.store_max_bytes
        )
        self.responses = ResponsesHandler(self.relay, self.models, self.auth, self.response_store)
        self.router = self._routes()
        render_error = render_error_by_path(
            {"/v1/messages": render_anthropic_error, "/messages": render_anthropic_error}, render_openai_error
        )
        self.server = HTTPServer(self.router, config.server, render_error=render_error)

    def _routes(self) -> Router:
        router = Router()
        for prefix in ("/v1", ""):  # some clients are configured without the /v1 suffix
            router.add("POST", f"{prefix}/chat/completions", self.chat)
            router.add("POST", f"{prefix}/messages", self.anthropic.messages)
            router.add("POST", f"{prefix}/messages/count_tokens", self.anthropic.count_tokens)
            router.add("POST", f"{prefix}/responses", self.responses.create)
            router.add("GET", f"{prefix}/responses/{{response_id}}", self.responses.retrieve)
            router.add("DELETE", f"{prefix}/responses/{{response_id}}", self.responses.delete)
            router.add("GET", f"{prefix}/responses/{{response_id}}/input_items", self.responses.input_items)
            router.add("GET", f"{prefix}/models", self.list_models)
            router.add("GET", f"{prefix}/models/{{model}}", self.get_model)
        router.add("GET", "/healthz", self.healthz)
        router.add("GET", "/admin/accounts", self.accounts)
        router.add("GET", "/", self.index)
        return router

    async def start(self) -> tuple[str, int]:
        if not pow_.NATIVE:
            log.warning("proof of work runs in pure Python: every answer waits 15-30 s for it")
        if not self.config.keys and not self.config.api.allow_direct_tokens:
            log.warning("no keys configured and direct tokens are off: every request will get 401")
        elif not self.config.keys and self.config.accounts:
            log.warning("no keys configured: nobody can use the configured accounts (add a key to 'keys')")
        await self.client.start()
        await self.pool.start()
        try:
            return await self.server.start()
        except BaseException:
            await self.pool.close()  # no half-started gateway (and no unclosed upstream session)
            await self.client.close()
            raise

    async def stop(self) -> None:
        self.pool.stop_queue()  # queued requests get their 503 now, not after the grace
        await self.server.shutdown(self.config.server.shutdown_grace)
        await self.pool.close()
        await self.client.close()

    # --- small endpoints ------------------------------------------------------

    async def list_models(self, request: Request, responder: Responder) -> None:
        if "anthropic-version" in request.headers:  # an Anthropic client: its list shape
            return await self.anthropic.list_models(request, responder)
        self.auth(request.headers)
        responder.send(200, json.dumps(self.models.list_body()).encode())

    async def get_model(self, request: Request, responder: Responder) -> None:
        if "anthropic-version" in request.headers:
            return await self.anthropic.get_model(request, responder)
        self.auth(request.headers)
        responder.send(200, json.dumps(self.models.model_body(request.params["model"])).encode())

    async def healthz(self, request: Request, responder: Responder) -> None:
        responder.send(200, b'{"status":"ok"}')

    async def accounts(self, request: Request, responder: Responder) -> None:
        """Account health for operators; needs a gateway key (never a direct token)."""
        self.auth(request.headers, key_required=True)
        responder.send(200, json.dumps(self.pool.snapshot(), ensure_ascii=False).encode())

    async def index(self, request: Request, responder: Responder) -> None:
        body = {
            "name": "ds2a",
            "about": "OpenAI-compatible gateway to the DeepSeek web chat, for personal use",
            "endpoints": [
                "/v1/models", "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens",
                "/v1/responses", "/healthz", "/admin/accounts",
            ],
        }
        responder.send(200, json.dumps(body).encode())


def render_error_by_path(by_prefix: dict[str, ErrorRenderer], default: ErrorRenderer) -> ErrorRenderer:
    """Errors in the envelope of the dialect whose routes start with a prefix (segment-wise)."""

    def render(path: str, error: HTTPError) -> bytes:
        for prefix, renderer in by_prefix.items():
            if path == prefix or path.startswith(prefix + "/"):
                return renderer(path, error)
        return default(path, error)

    return render
