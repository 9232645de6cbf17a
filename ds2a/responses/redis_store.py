"""Stored responses shared by every replica through Redis (with ``redis.url``).

A continuation (``previous_response_id``) or a ``GET /v1/responses/{id}`` may reach
any replica behind the load balancer, so the records live where the shared pool
lives. The bounds are ``MemoryStore``'s (count, bytes, age), kept for the whole
cluster by one atomic step; a record also expires by itself after ``max_age``.

Redis unreachable: reading or deleting answers 503 naming Redis; storing is skipped
with a warning (the answer itself was fine, only a later continuation misses it).
"""

from __future__ import annotations

import logging
from typing import Any

from redis import exceptions as redis_errors

from ds2a.responses.store import StoredResponse
from ds2a.server.errors import HTTPError

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)

_COMMON = r"""
local P = ARGV[1]
local function drop(id)
  local size = redis.call('HGET', P .. 'resp:sizes', id)
  if size then redis.call('DECRBY', P .. 'resp:bytes', size) end
  redis.call('HDEL', P .. 'resp:sizes', id)
  redis.call('ZREM', P .. 'resp:order', id)
  return redis.call('DEL', P .. 'resp:' .. id)
end
"""

# ARGV: prefix, id, record JSON, size, max_count, max_bytes, max_age ms
PUT = _COMMON + r"""
local id, size = ARGV[2], tonumber(ARGV[4])
local max_count, max_bytes, max_age = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
drop(id)
redis.call('SET', P .. 'resp:' .. id, ARGV[3], 'PX', max_age)
redis.call('ZADD', P .. 'resp:order', now, id)
redis.call('HSET', P .. 'resp:sizes', id, size)
redis.call('INCRBY', P .. 'resp:bytes', size)
while true do  -- oldest first: past the count, the bytes, or its age
  local oldest = redis.call('ZRANGE', P .. 'resp:order', 0, 0, 'WITHSCORES')
  if #oldest == 0 then break end
  local over = redis.call('ZCARD', P .. 'resp:order') > max_count
    or tonumber(redis.call('GET', P .. 'resp:bytes') or '0') > max_bytes
    or tonumber(oldest[2]) < now - max_age
  if not over then break end
  drop(oldest[1])
end
return 1
"""

# ARGV: prefix, id -> 1 forgotten | 0 unknown
DELETE = _COMMON + r"""
return drop(ARGV[2])
"""


class RedisResponseStore:
    def __init__(
        self, redis: Any, prefix: str, *, max_count: int, max_age: float, max_bytes: int, where: str = "Redis"
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_count = max_count
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.where = where
        self._put = redis.register_script(PUT)
        self._delete = redis.register_script(DELETE)

    def _unreachable(self, exc: BaseException) -> HTTPError:
        return HTTPError(
            503,
            f"the shared response store's Redis at {self.where} is unreachable ({exc}); try again shortly",
            code="redis_unavailable",
            headers=[("Retry-After", "5")],
        )

    async def get(self, response_id: str) -> StoredResponse | None:
        try:
            raw = await self.redis.get(f"{self.prefix}resp:{response_id}")
        except REDIS_ERRORS as exc:
            raise self._unreachable(exc) from None
        return None if raw is None else StoredResponse.from_json(raw)

    async def put(self, record: StoredResponse) -> None:
        if self.max_count < 1 or record.size > self.max_bytes:
            return  # storing is off, or this one alone would overflow the store
        args = [self.prefix, record.id, record.to_json(), record.size, self.max_count, self.max_bytes,
                max(1, int(self.max_age * 1000))]
        try:
            await self._put(args=args)
        except REDIS_ERRORS as exc:
            log.warning("response %s not stored: Redis at %s unreachable (%s)", record.id, self.where, exc)

    async def delete(self, response_id: str) -> bool:
        try:
            return bool(await self._delete(args=[self.prefix, response_id]))
        except REDIS_ERRORS as exc:
            raise self._unreachable(exc) from None
