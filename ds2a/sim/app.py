"""The `Simulator`: state, the aiohttp server around the routes, and the test-facing API."""

from __future__ import annotations

import collections
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from aiohttp import web

from ds2a.sim import control, routes
from ds2a.sim.accounts import Account, AccountStore
from ds2a.sim.challenges import ChallengeBook
from ds2a.sim.config import SimConfig
from ds2a.sim.counters import Counters
from ds2a.sim.faults import FaultBook

if TYPE_CHECKING:
    from ds2a.sim.accounts import Message
    from ds2a.sim.generation import Generation

# Whole flattened conversations arrive as one prompt; aiohttp's 1 MiB default is too small.
MAX_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class ReceivedRequest:
    """A completion or continue request as it arrived upstream."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float
    account: str | None = None  # set once the token checked out
    prompt: str | None = field(init=False, default=None)
    thinking: bool | None = field(init=False, default=None)
    search: bool | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.body is not None:
            prompt = self.body.get("prompt")
            self.prompt = prompt if isinstance(prompt, str) else None
            self.thinking = self.body.get("thinking_enabled")
            self.search = self.body.get("search_enabled")

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "headers": self.headers, "body": self.body, "at": self.at,
                "account": self.account, "prompt": self.prompt, "thinking": self.thinking, "search": self.search}


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.counters = Counters()
        self.accounts = AccountStore(self.config)
        # The simulator's own clock, which may disagree with the host's (clock_skew).
        self.challenges = ChallengeBook(clock=lambda: time.time() + self.config.clock_skew)
        self.directive_hits: collections.Counter[tuple[str, str]] = collections.Counter()  # once-per-prompt directives
        self.faults = FaultBook()
        self.requests: collections.deque[ReceivedRequest] = collections.deque(maxlen=self.config.requests_kept)
        self.generations: set[Generation] = set()
        self.base_url: str | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[routes.gate])
        app[routes.SIM_KEY] = self
        routes.add_routes(app)
        control.add_routes(app)
        # handler_cancellation: a client that hangs up cancels its handler at once, so the
        # account's generation slot is freed without waiting for the next write to fail.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.base_url = f"http://{shown}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        for generation in list(self.generations):
            generation.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- test-facing API --------------------------------------------------------------

    def inject(self, fault: str, account: str | None = None, count: int = 1, **params: Any) -> None:
        """Make the next `count` matching requests fail as `fault` (negative count: until reset).

        `account` is an email, mobile or token; None means any account.
        """
        self.faults.add(fault, account, count, params)

    def add_account(self, email: str | None = None, mobile: str | None = None, password: str | None = None,
                    token: str | None = None) -> str:
        account = self.accounts.add(email=email, mobile=mobile, password=password, token=token)
        assert account.token is not None
        return account.token

    def revoke_token(self, token: str) -> bool:
        return self.accounts.revoke(token)

    def account(self, ident: str) -> Account | None:
        return self.accounts.find(ident)

    def configure(self, **changes: Any) -> SimConfig:
        self.config = self.config.with_changes(changes)
        self.accounts.config = self.config
        return self.config

    def reset(self) -> None:
        """Forget counters, faults, recorded requests and mutes; keep accounts, sessions and challenges."""
        active = self.counters.active_streams
        self.counters = Counters(active_streams=active, max_active_streams=active)
        self.faults.clear()
        self.requests.clear()
        self.directive_hits.clear()
        for account in self.accounts.accounts():
            account.mute_until = None

    # --- used by the routes -------------------------------------------------------------

    def record(self, request: web.Request, body: dict[str, Any] | None) -> ReceivedRequest:
        received = ReceivedRequest(request.path, dict(request.headers), body, time.time())
        self.requests.append(received)
        return received

    @contextlib.contextmanager
    def streaming(self, account: Account) -> Iterator[None]:
        account.active += 1
        if account.active > self.counters.max_active_per_account:
            self.counters.max_active_per_account = account.active
        try:
            yield
        finally:
            account.active -= 1

    @staticmethod
    def ready_payload(message: Message) -> dict[str, Any]:
        return {"request_message_id": message.request_id, "response_message_id": message.response_id,
                "model_type": message.model_type}

    @staticmethod
    def trace_id() -> str:
        return secrets.token_hex(16)
