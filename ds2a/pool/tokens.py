"""Tokens obtained by login, persisted so a restart does not log in again.

``TokenStore`` is the interface the pool logs in through; this module's file store
is the embedded backend (the Redis backend shares tokens between replicas, in
``ds2a/pool/redis_pool.py``). The file store is its own file (never config.json: the user's settings are not ours
to rewrite). Writes are atomic: a temporary file in the same folder is written,
fsynced and renamed over the old one, then the folder is fsynced, so a crash at
any point leaves either the old or the new file, both valid JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = 1


class TokenStore:
    """Tokens by account key (``Account.key``), in a file or in memory only.

    ``login_lock`` serialises logins of one account (so it logs in once); ``fetch``
    reads the current token (a shared store: what another replica stored meanwhile);
    ``drop`` with a ``token`` forgets it only if it is still that one.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: keep tokens in memory only
        self._tokens: dict[str, dict[str, object]] = {}
        self._lock = asyncio.Lock()
        self._login_locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        self.load()

    async def close(self) -> None:
        pass

    @contextlib.asynccontextmanager
    async def login_lock(self, key: str) -> AsyncIterator[None]:
        lock = self._login_locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield

    async def fetch(self, key: str) -> str | None:
        return self.get(key)

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            tokens = data["tokens"]
            if not isinstance(tokens, dict):
                raise TypeError("tokens is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A broken store costs one login per account, not the gateway: carry on.
            log.warning("ignoring unreadable token store %s (%s)", self.path, exc)
            return
        self._tokens = {k: v for k, v in tokens.items() if isinstance(v, dict) and isinstance(v.get("token"), str)}

    def get(self, key: str) -> str | None:
        entry = self._tokens.get(key)
        return entry["token"] if entry else None  # type: ignore[return-value]

    async def put(self, key: str, token: str) -> None:
        self._tokens[key] = {"token": token, "obtained_at": int(time.time())}
        await self._save()

    async def drop(self, key: str, token: str | None = None) -> None:
        entry = self._tokens.get(key)
        if entry is None or (token is not None and entry["token"] != token):
            return  # already replaced by a newer login: keep that one
        del self._tokens[key]
        await self._save()

    async def _save(self) -> None:
        if self.path is None:
            return
        async with self._lock:
            snapshot = json.dumps({"format": FORMAT, "tokens": self._tokens}, indent=1, sort_keys=True)
            try:
                await asyncio.to_thread(write_atomic, self.path, snapshot.encode())
            except OSError as exc:
                log.warning("could not save token store %s: %s", self.path, exc)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # tokens are credentials
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
