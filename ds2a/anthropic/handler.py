"""The Anthropic Messages API on the relay core.

``POST /v1/messages`` (Claude Code adds ``?beta=true``): the request is
authenticated (``x-api-key`` or ``Authorization: Bearer``) and parsed into a
``Generation``; the relay starts the upstream answer. Errors up to that point keep
their HTTP status in Anthropic's envelope (a full pool is 529 ``overloaded_error``,
which Anthropic's SDKs and Claude Code retry by themselves), so the stream opens
only once the answer has begun: ``message_start`` and a ``ping``, then one event per
answer event. While nothing else is sent (a quiet upstream, a tool call the relay
holds back until it is complete) a ``ping`` every ``PING_INTERVAL`` seconds keeps
proxies and clients from timing the connection out.

``POST /v1/messages/count_tokens`` counts the prompt the request would make.
``GET /v1/models`` answers in Anthropic's list shape when the request carries an
``anthropic-version`` header (the app routes it here). ``anthropic-version`` and
``anthropic-beta`` are accepted whatever their value: the answer does not depend on them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from ds2a.api.dialect import SHUTTING_DOWN, open_answer, run_answer, run_stream
from ds2a.anthropic.encode import MessageCollector, MessageStream, dumps, new_id
from ds2a.anthropic.errors import OVERLOADED, deepseek_error, pool_error, render_anthropic_error
from ds2a.anthropic.models import ClaudeModels
from ds2a.anthropic.parse import MessagesRequest, parse_messages_request
from ds2a.api.auth import Authenticator
from ds2a.api.errors import ApiError
from ds2a.config import Config
from ds2a.relay.core import Generation, Relay, RelayAnswer
from ds2a.server import Request, Responder
from ds2a.server.errors import HTTPError

log = logging.getLogger(__name__)

PING_INTERVAL = 10.0  # seconds of silence before a keep-alive ping
MAX_LIST_LIMIT = 1000


class MessagesHandler:
    def __init__(
        self,
        config: Config,
        relay: Relay,
        models: ClaudeModels,
        auth: Authenticator,
        *,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self.config = config
        self.relay = relay
        self.models = models
        self.auth = auth
        self.ping_interval = ping_interval

    # --- POST /v1/messages ------------------------------------------------------------

    async def messages(self, request: Request, responder: Responder) -> None:
        caller = self.auth(request.headers)
        req = parse_messages_request(request.body, self.models)
        generation = Generation(
            req.conversation, req.spec, req.stop, req.max_tokens, caller.direct_token, stream=req.stream
        )
        answer = await open_answer(
            self.relay, generation, responder, req.model, upstream_error=deepseek_error, pool_error=pool_error
        )
        try:
            if req.stream:
                await self._stream(responder, answer, req)
            else:
                await self._collect(responder, answer, req)
        finally:
            answer.close()

    async def _stream(self, responder: Responder, answer: RelayAnswer, req: MessagesRequest) -> None:
        sink = MessageStream(responder, new_id("msg_"), req.model, show_thinking=req.show_thinking)
        responder.start_stream(200)
        sink.start(answer.prompt_tokens)
        keepalive = asyncio.create_task(self._keepalive(sink))
        try:
            outcome = await run_stream(answer, sink, responder, lambda code, message: self._fail(sink, code, message))
        finally:
            keepalive.cancel()
        if outcome is None:
            return
        if outcome.error is not None:
            # A visible error, never a fake end_turn: the SDKs raise on an error event.
            err = deepseek_error(outcome.error)
            sink.fail(err.status, err.message)
            responder.end_stream()
            return
        sink.finish(outcome)
        responder.end_stream()

    @staticmethod
    def _fail(sink: MessageStream, code: str, message: str) -> None:
        sink.fail(OVERLOADED if code == SHUTTING_DOWN else 500, message)

    async def _keepalive(self, sink: MessageStream) -> None:
        seen = sink.writes
        while True:
            await asyncio.sleep(self.ping_interval)
            if sink.writes == seen and not sink.paused:
                sink.ping()
            seen = sink.writes

    async def _collect(self, responder: Responder, answer: RelayAnswer, req: MessagesRequest) -> None:
        sink = MessageCollector(show_thinking=req.show_thinking)
        outcome = await run_answer(answer, sink, responder)
        if outcome.error is not None:
            raise deepseek_error(outcome.error)
        responder.send(200, sink.body(new_id("msg_"), req.model, outcome))

    # --- POST /v1/messages/count_tokens -------------------------------------------------

    async def count_tokens(self, request: Request, responder: Responder) -> None:
        self.auth(request.headers)
        req = parse_messages_request(request.body, self.models, count_only=True)
        # Off the loop: rendering and counting an agent's long history costs milliseconds.
        tokens = await asyncio.to_thread(self.relay.count_tokens, req.conversation)
        responder.send(200, dumps({"input_tokens": tokens}))

    # --- GET /v1/models (with an anthropic-version header) ---------------------------

    async def list_models(self, request: Request, responder: Responder) -> None:
        try:
            self.auth(request.headers)
            body = list_body(self.models, request.query)
        except HTTPError as exc:
            responder.send(exc.status, render_anthropic_error(request.path, exc), headers=exc.headers)
            return
        responder.send(200, dumps(body))

    async def get_model(self, request: Request, responder: Responder) -> None:
        try:
            self.auth(request.headers)
            name = request.params["model"]
            spec = self.models.resolve(name)
        except HTTPError as exc:
            responder.send(exc.status, render_anthropic_error(request.path, exc), headers=exc.headers)
            return
        responder.send(200, dumps(model_info(name, spec.created)))


def _created_at(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_info(name: str, created: int) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": _created_at(created)}


def list_body(models: ClaudeModels, query: str) -> dict[str, Any]:
    """Anthropic's page of models: ``limit`` (1-1000, default 20), ``after_id`` / ``before_id``.

    The gateway's own model names are listed (Claude names are patterns, not a list);
    each is accepted as ``model`` like any Claude name.
    """
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    limit = _limit(params.get("limit"))
    names = models.table.names
    start = _position(names, params["after_id"], "after_id") + 1 if "after_id" in params else 0
    end = _position(names, params["before_id"], "before_id") if "before_id" in params else len(names)
    window = names[start:end]
    # Paging backwards (before_id alone) returns the models just before the cursor.
    page = window[-limit:] if "before_id" in params and "after_id" not in params else window[:limit]
    data = [model_info(name, models.table.resolve(name).created) for name in page]
    return {
        "data": data,
        "has_more": len(window) > len(page),
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, f"limit: Input should be a valid integer, got {raw!r}") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ApiError(400, f"limit: Input should be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    return limit


def _position(names: list[str], name: str, param: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise ApiError(404, f"{param}: no model {name!r}") from None
