"""Stored responses: what ``previous_response_id`` continues and ``GET /v1/responses/{id}`` reads.

A record keeps the response object as last sent, the request's own input items and
the items before them (the conversation the previous response had), so a continued
request is ``history + input + output`` of the record, then its new input: no chain
of records is walked, and a record outlives the ones it continued from.

``ResponseStore`` is the interface (three coroutines, so a networked store fits
behind it); ``MemoryStore`` is the default, bounded in count, age and bytes and
evicting the oldest first. Records serialise to plain JSON (``to_json`` /
``from_json``) for stores that keep bytes.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class StoredResponse:
    response: dict[str, Any]  # the response object as the client last got it
    input_items: list[dict[str, Any]]  # this request's input, normalised (ids included)
    history: list[dict[str, Any]] = field(default_factory=list)  # the items before that input
    owner: str = ""  # who may read it (a digest of the caller's credential)
    size: int = 0  # approximate bytes, for the memory bound

    @property
    def id(self) -> str:
        return self.response["id"]

    def context(self) -> list[dict[str, Any]]:
        """Every item this response was generated from: history, then its own input."""
        return [*self.history, *self.input_items]

    def conversation(self) -> list[dict[str, Any]]:
        """The items a continuation starts from: the context and this response's output."""
        return [*self.history, *self.input_items, *self.response["output"]]

    def to_json(self) -> bytes:
        data = {"response": self.response, "input_items": self.input_items, "history": self.history,
                "owner": self.owner, "size": self.size}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")

    @classmethod
    def from_json(cls, raw: bytes | str) -> StoredResponse:
        data = json.loads(raw)
        return cls(data["response"], data["input_items"], data["history"], data["owner"], data["size"])


class ResponseStore(Protocol):
    async def get(self, response_id: str) -> StoredResponse | None:
        """The record, or None when unknown, expired or deleted."""

    async def put(self, record: StoredResponse) -> None:
        """Keep (or replace) ``record`` under ``record.id``."""

    async def delete(self, response_id: str) -> bool:
        """Forget it; False when there was nothing to forget."""


class MemoryStore:
    """In-process records, oldest evicted first past ``max_count`` or ``max_bytes``, and
    dropped ``max_age`` seconds after they were stored."""

    def __init__(
        self,
        *,
        max_count: int = 1000,
        max_age: float = 86400.0,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_count = max_count
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.clock = clock
        self.records: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()  # oldest first
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    async def get(self, response_id: str) -> StoredResponse | None:
        entry = self.records.get(response_id)
        if entry is None:
            return None
        stored_at, record = entry
        if self.clock() - stored_at > self.max_age:
            self._drop(response_id)
            return None
        return record

    async def put(self, record: StoredResponse) -> None:
        if self.max_count < 1 or record.size > self.max_bytes:
            return  # storing is off, or this one alone would overflow the store
        self._drop(record.id)
        self.records[record.id] = (self.clock(), record)
        self.bytes += record.size
        self._evict()

    async def delete(self, response_id: str) -> bool:
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        entry = self.records.pop(response_id, None)
        if entry is None:
            return False
        self.bytes -= entry[1].size
        return True

    def _evict(self) -> None:
        records = self.records
        now = self.clock()
        while records:
            oldest_id, (stored_at, _) = next(iter(records.items()))
            if len(records) > self.max_count or self.bytes > self.max_bytes or now - stored_at > self.max_age:
                self._drop(oldest_id)
            else:
                break
