"""The Responses API routes: create (streamed or not), retrieve, delete, list input items.

``POST /v1/responses`` is authenticated like chat completions, parsed into a
``Generation`` (``parse.py``) with the stored conversation of ``previous_response_id``
in front of the new input, and handed to the relay. Errors up to the first text are
plain JSON errors with the right status (OpenAI's shape); after that a stream ends
with ``response.failed``. A response with ``store`` (the API's default) is kept in the
``ResponseStore`` before the client sees its terminal event, so a client may continue
from it at once; it is readable only with the credential that created it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from ds2a.api.dialect import open_answer, run_answer, run_stream
from ds2a.api.auth import Authenticator
from ds2a.api.errors import ApiError, pool_error, upstream_error
from ds2a.api.models import ModelTable
from ds2a.relay.core import Generation, Relay, RelayAnswer
from ds2a.responses.encode import CollectSink, ResponseEnvelope, StreamSink
from ds2a.responses.parse import ResponsesRequest, parse_responses_request
from ds2a.responses.store import ResponseStore, StoredResponse
from ds2a.server import Request, Responder

log = logging.getLogger(__name__)

MAX_PAGE = 100  # input_items: the API's largest page


def owner_of(request: Request) -> str:
    """Who may read a stored response: a digest of the credential that created it."""
    credential = request.headers.get("authorization", "").strip()
    return hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def not_found(response_id: str) -> ApiError:
    return ApiError(404, f"Response with id '{response_id}' not found.", param="response_id", code="not_found")


class ResponsesHandler:
    def __init__(self, relay: Relay, models: ModelTable, auth: Authenticator, store: ResponseStore) -> None:
        self.relay = relay
        self.models = models
        self.auth = auth
        self.store = store

    # --- POST /v1/responses ---------------------------------------------------

    async def create(self, request: Request, responder: Responder) -> None:
        caller = self.auth(request.headers)
        req = parse_responses_request(request.body, self.models)
        owner = owner_of(request)
        history = await self._history(req, owner)
        generation = Generation(
            req.conversation(history), req.spec, [], req.max_output_tokens, caller.direct_token, stream=req.stream
        )
        answer = await open_answer(
            self.relay, generation, responder, req.model, upstream_error=upstream_error, pool_error=pool_error
        )
        envelope = ResponseEnvelope(req.model, req.echo)
        try:
            if req.stream:
                await self._stream(request, responder, answer, req, envelope, history, owner)
            else:
                await self._collect(request, responder, answer, req, envelope, history, owner)
        finally:
            answer.close()

    async def _history(self, req: ResponsesRequest, owner: str) -> list[dict[str, Any]]:
        """The conversation a continued response starts from (empty for a new one)."""
        if req.previous_response_id is None:
            return []
        record = await self.store.get(req.previous_response_id)
        if record is None or record.owner != owner:
            raise ApiError(
                400,
                f"Previous response with id '{req.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return record.conversation()

    async def _keep(
        self, request: Request, req: ResponsesRequest, body: dict[str, Any], history: list[dict[str, Any]], owner: str
    ) -> None:
        if not req.store:
            return
        size = len(request.body) + len(_dumps(body["output"]))
        try:
            await self.store.put(StoredResponse(body, req.input_items, history, owner, size))
        except Exception:
            # The answer itself was fine; a store that failed costs only later continuations.
            log.exception("storing response %s failed", body["id"])

    async def _stream(
        self,
        request: Request,
        responder: Responder,
        answer: RelayAnswer,
        req: ResponsesRequest,
        envelope: ResponseEnvelope,
        history: list[dict[str, Any]],
        owner: str,
    ) -> None:
        responder.start_stream(200)
        sink = StreamSink(responder, envelope, summary=req.reasoning_summary)
        sink.begin()
        outcome = await run_stream(answer, sink, responder, lambda code, message: sink.fail(message))
        if outcome is None:
            return
        body = sink.finish(outcome)
        await self._keep(request, req, body, history, owner)
        sink.flush()  # the terminal event, once the response can be continued from
        responder.end_stream()

    async def _collect(
        self,
        request: Request,
        responder: Responder,
        answer: RelayAnswer,
        req: ResponsesRequest,
        envelope: ResponseEnvelope,
        history: list[dict[str, Any]],
        owner: str,
    ) -> None:
        sink = CollectSink(envelope, summary=req.reasoning_summary)
        outcome = await run_answer(answer, sink, responder)
        if outcome.error is not None:
            raise upstream_error(outcome.error)
        body = sink.finish(outcome)
        await self._keep(request, req, body, history, owner)
        responder.send(200, _dumps(body))

    # --- stored responses -------------------------------------------------------

    async def _record(self, request: Request) -> StoredResponse:
        self.auth(request.headers)
        response_id = request.params["response_id"]
        record = await self.store.get(response_id)
        if record is None or record.owner != owner_of(request):
            raise not_found(response_id)
        return record

    async def retrieve(self, request: Request, responder: Responder) -> None:
        record = await self._record(request)
        responder.send(200, _dumps(record.response))

    async def delete(self, request: Request, responder: Responder) -> None:
        record = await self._record(request)
        await self.store.delete(record.id)
        responder.send(200, _dumps({"id": record.id, "object": "response", "deleted": True}))

    async def input_items(self, request: Request, responder: Responder) -> None:
        record = await self._record(request)
        limit, order, after, before = _page_params(request.query)
        items = record.context()
        if order == "desc":
            items = items[::-1]
        ids = [item.get("id") for item in items]
        start, end = 0, len(items)
        if after is not None:
            start = _cursor(ids, after, "after") + 1
        if before is not None:
            end = _cursor(ids, before, "before")
        page = items[start:end][:limit]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + len(page) < end,
        }
        responder.send(200, _dumps(body))


def _page_params(query: str) -> tuple[int, str, str | None, str | None]:
    params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    raw_limit = params.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise ApiError(400, f"Invalid 'limit': expected an integer, got {raw_limit!r}.", param="limit",
                       code="invalid_type") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, f"Invalid 'limit': must be between 1 and {MAX_PAGE}, got {limit}.", param="limit",
                       code="invalid_value")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid value for 'order': {order!r}. Supported values are: 'asc' and 'desc'.",
                       param="order", code="invalid_value")
    return limit, order, params.get("after"), params.get("before")


def _cursor(ids: list[Any], item_id: str, param: str) -> int:
    try:
        return ids.index(item_id)
    except ValueError:
        raise ApiError(400, f"Invalid '{param}': no input item with id '{item_id}' in this response.",
                       param=param, code="invalid_value") from None
