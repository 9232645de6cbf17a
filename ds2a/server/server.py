"""HTTPServer: listens, tracks connections and handler tasks, shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..config import ServerConfig
from .cors import CorsPolicy
from .errors import ErrorRenderer, plain_error_body
from .protocol import HTTPConnection
from .request import Request
from .responder import Responder

Handler = Callable[[Request, Responder], Coroutine[Any, Any, None]]

log = logging.getLogger("ds2a.server")

# Handlers cancelled at the end of the grace get this long to run their cleanup.
CANCEL_WAIT_SECONDS = 5.0
# Connections whose last bytes are still flushing get at least this long before abort.
CLOSE_WAIT_SECONDS = 1.0


class HTTPServer:
    def __init__(
        self,
        handler: Handler,
        config: ServerConfig | None = None,
        *,
        render_error: ErrorRenderer = plain_error_body,
    ) -> None:
        self.handler = handler
        self.render_error = render_error
        self.config = config or ServerConfig()
        self.cors = CorsPolicy(self.config.cors_origins)
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[HTTPConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutting_down = False
        self._shutdown_done: asyncio.Event | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "start() first"
        return self._loop

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> tuple[str, int]:
        """Listen on config.host/port (port 0: any free port); returns the bound address."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: HTTPConnection(self),
            self.config.host,
            self.config.port,
            reuse_address=True,
            backlog=self.config.backlog,
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        log.info("listening on %s:%d", host, port)
        return host, port

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let running handlers finish within ``grace``, cancel the rest."""
        if self._shutdown_done is not None:
            await self._shutdown_done.wait()
            return
        self._shutdown_done = asyncio.Event()
        grace = self.config.shutdown_grace if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._shutting_down = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.begin_shutdown()
        await self._wait_for_handlers(grace)
        await self._close_connections(max(CLOSE_WAIT_SECONDS, deadline - loop.time()))
        if self._server is not None:
            await self._server.wait_closed()
        self._shutdown_done.set()

    async def _wait_for_handlers(self, grace: float) -> None:
        running = set(self._tasks)
        if running and grace > 0:
            _, running = await asyncio.wait(running, timeout=grace)
        if not running:
            return
        log.info("shutdown: cancelling %d running request(s)", len(running))
        for task in running:
            task.cancel("shutdown")
        _, stuck = await asyncio.wait(running, timeout=CANCEL_WAIT_SECONDS)
        if stuck:
            log.error("shutdown: %d handler(s) ignored cancellation", len(stuck))

    async def _close_connections(self, wait: float) -> None:
        """Every connection ends here: finished ones close themselves, stragglers are aborted."""
        for conn in list(self._connections):
            conn.begin_shutdown()
        pending = [conn.lost for conn in self._connections]
        if pending:
            await asyncio.wait(pending, timeout=wait)
        for conn in list(self._connections):
            conn.force_close()
        pending = [conn.lost for conn in self._connections]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_WAIT_SECONDS)

    # -- called by HTTPConnection --------------------------------------------

    def connection_opened(self, conn: HTTPConnection) -> None:
        self._connections.add(conn)

    def connection_closed(self, conn: HTTPConnection) -> None:
        self._connections.discard(conn)

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
