"""The gateway assembled: config -> DeepSeek client -> account pool -> API handlers -> HTTP server."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

from ds2a.anthropic.errors import render_anthropic_error
from ds2a.anthropic.handler import MessagesHandler
from ds2a.anthropic.models import ClaudeModels
from ds2a.api.auth import Authenticator
from ds2a.api.chat import ChatHandler
from ds2a.api.errors import ApiError, render_openai_error
from ds2a.api.models import ModelTable
from ds2a.config import SECTIONS, Config, ConfigError, load_config
from ds2a.deepseek import pow as pow_
from ds2a.deepseek.client import DeepSeekClient
from ds2a.metrics import CONTENT_TYPE, Handler, Metrics
from ds2a.pool import AccountPool
from ds2a.relay.core import Relay
from ds2a.responses.handler import ResponsesHandler
from ds2a.responses.store import MemoryStore, ResponseStore
from ds2a.server import ErrorRenderer, HTTPError, HTTPServer, Request, Responder, Router

log = logging.getLogger(__name__)

# Settings a running gateway cannot take over (sockets, the upstream client, the shared
# pool's Redis, the log set-up, the response store's size): a reload keeps the running
# value and says so.
RESTART_ONLY = frozenset(
    {"server.host", "server.port", "server.backlog", "redis.url", "redis.prefix", "redis.lease_ttl",
     "redis.connect_timeout", "log.format"}
    | {f"deepseek.{f.name}" for f in dataclasses.fields(SECTIONS["deepseek"])}
    | {f"responses.{f.name}" for f in dataclasses.fields(SECTIONS["responses"])}
) - {"deepseek.delete_sessions", "deepseek.model_type"}


class Gateway:
    def __init__(self, config: Config, *, config_source: Callable[[], Config] | None = None) -> None:
        self.config = config
        # Where a reload reads the config again (the CLI passes its own, flags included).
        self.config_source = config_source or (lambda: load_config(config.path))
        self.client = DeepSeekClient(config.deepseek)
        self.pool = AccountPool(config, self.client)
        self.metrics = Metrics()
        self.metrics.watch(self.pool)
        self.models = ModelTable.from_config(config.api, config.deepseek)
        self.auth = Authenticator(config.keys, allow_direct_tokens=config.api.allow_direct_tokens)
        self.relay = Relay(config, self.pool)
        self.chat = ChatHandler(config, self.relay, self.models, self.auth)
        claude_models = ClaudeModels.from_config(config.anthropic, self.models)
        self.anthropic = MessagesHandler(config, self.relay, claude_models, self.auth)
        self.response_store = self._response_store()
        self.responses = ResponsesHandler(self.relay, self.models, self.auth, self.response_store)
        self.router = self._routes()
        render_error = render_error_by_path(
            {"/v1/messages": render_anthropic_error, "/messages": render_anthropic_error}, render_openai_error
        )
        self.server = HTTPServer(self.router, config.server, render_error=render_error)

    def _response_store(self) -> ResponseStore:
        """In memory, or shared by the replicas through the pool's Redis (``redis.url``)."""
        limits = self.config.responses
        bounds = {"max_count": limits.store_max_count, "max_age": limits.store_max_age,
                  "max_bytes": limits.store_max_bytes}
        if not self.config.redis.url:
            return MemoryStore(**bounds)
        from ds2a.pool.redis_pool import RedisBroker
        from ds2a.responses.redis_store import RedisResponseStore

        broker = self.pool.broker
        assert isinstance(broker, RedisBroker)
        return RedisResponseStore(broker.redis, self.config.redis.prefix, where=broker.where, **bounds)

    def _routes(self) -> Router:
        router = Router()
        metered = self.metrics.route

        def add(method: str, path: str, name: str, handler: Handler) -> None:
            router.add(method, path, metered(name, handler))  # `name`: the route label of the metrics

        for prefix in ("/v1", ""):  # some clients are configured without the /v1 suffix
            add("POST", f"{prefix}/chat/completions", "chat_completions", self.chat)
            add("POST", f"{prefix}/messages", "messages", self.anthropic.messages)
            add("POST", f"{prefix}/messages/count_tokens", "count_tokens", self.anthropic.count_tokens)
            add("POST", f"{prefix}/responses", "responses", self.responses.create)
            add("GET", f"{prefix}/responses/{{response_id}}", "responses_get", self.responses.retrieve)
            add("DELETE", f"{prefix}/responses/{{response_id}}", "responses_delete", self.responses.delete)
            add("GET", f"{prefix}/responses/{{response_id}}/input_items", "responses_input_items",
                self.responses.input_items)
            add("GET", f"{prefix}/models", "models", self.list_models)
            add("GET", f"{prefix}/models/{{model}}", "models", self.get_model)
        add("GET", "/healthz", "healthz", self.healthz)
        add("GET", "/metrics", "metrics", self.metrics_endpoint)
        add("GET", "/admin/accounts", "admin", self.accounts)
        add("POST", "/admin/reload", "admin", self.reload_endpoint)
        add("GET", "/", "index", self.index)
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

    # --- reload -----------------------------------------------------------------

    async def reload(self) -> dict[str, list[str]]:
        """Read the config again and apply it without dropping a stream.

        Keys, accounts, limits and the model tables change in place (every handler holds
        the same objects); a removed account finishes its running answer, then leaves.
        An invalid config raises ``ConfigError`` and nothing changes.
        """
        new = self.config_source()  # ConfigError: refused, the running config stays
        models = ModelTable.from_config(new.api, new.deepseek)
        claude_models = ClaudeModels.from_config(new.anthropic, models)
        old = self.config
        changed: list[str] = []
        restart: list[str] = []
        for section in SECTIONS:
            running, wanted = getattr(old, section), getattr(new, section)
            for f in dataclasses.fields(running):
                name = f"{section}.{f.name}"
                if getattr(running, f.name) == getattr(wanted, f.name):
                    continue
                if name in RESTART_ONLY:
                    restart.append(name)
                else:
                    setattr(running, f.name, getattr(wanted, f.name))
                    changed.append(name)
        if old.keys != new.keys:
            changed.append("keys")
            old.keys[:] = new.keys
        self.auth.keys = [k.encode() for k in old.keys]
        self.auth.allow_direct_tokens = old.api.allow_direct_tokens
        # In place: every handler holds these tables.
        vars(self.models).update(vars(models))
        vars(self.anthropic.models).update(vars(claude_models))
        if [dataclasses.asdict(a) for a in old.accounts] != [dataclasses.asdict(a) for a in new.accounts]:
            changed.append("accounts")
        old.accounts[:] = new.accounts
        added, removed = await self.pool.update_accounts(old.accounts)
        if restart:
            log.warning("reload: %s changed but only take effect after a restart", ", ".join(restart))
        log.info(
            "config reloaded: %s; accounts added %d, removed %d",
            ", ".join(changed) or "nothing changed",
            len(added),
            len(removed),
        )
        return {"changed": changed, "restart_needed": restart, "added": added, "removed": removed}

    async def reload_logged(self) -> None:
        """SIGHUP: reload, or log why the new config was refused and keep the old one."""
        try:
            await self.reload()
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)

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

    async def metrics_endpoint(self, request: Request, responder: Responder) -> None:
        """Prometheus text format; needs a gateway key unless ``metrics.public``."""
        if not self.config.metrics.public:
            self.auth(request.headers, key_required=True)
        responder.send(200, self.metrics.render(), content_type=CONTENT_TYPE)

    async def accounts(self, request: Request, responder: Responder) -> None:
        """Account health for operators; needs a gateway key (never a direct token)."""
        self.auth(request.headers, key_required=True)
        responder.send(200, json.dumps(self.pool.snapshot(), ensure_ascii=False).encode())

    async def reload_endpoint(self, request: Request, responder: Responder) -> None:
        """``POST /admin/reload``: as SIGHUP, with the outcome in the answer."""
        self.auth(request.headers, key_required=True)
        try:
            outcome = await self.reload()
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            raise ApiError(400, f"the new config was refused, the running one is kept: {exc}", code="invalid_config")
        responder.send(200, json.dumps({"reloaded": True, **outcome}, ensure_ascii=False).encode())

    async def index(self, request: Request, responder: Responder) -> None:
        body = {
            "name": "ds2a",
            "about": "OpenAI-compatible gateway to the DeepSeek web chat, for personal use",
            "endpoints": [
                "/v1/models", "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens",
                "/v1/responses", "/healthz", "/metrics", "/admin/accounts",
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
