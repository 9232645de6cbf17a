"""Talking to the simulator's /_sim/ endpoints and the gateway's /healthz and /admin/accounts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from ds2a.sim import SimConfig

READY_POLL = 0.02  # between two /admin/accounts looks while waiting for ready tickets


class SimControl:
    """The simulator's control endpoints, over the bench's own client session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def configure(self, **changes: Any) -> SimConfig:
        """Change generation settings; returns the config ``expected()`` must be given."""
        async with self.session.post(f"{self.base_url}/_sim/config", json=changes) as resp:
            view = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"/_sim/config refused {changes}: {view}")
        return SimConfig().with_changes(view)

    async def reset(self) -> None:
        async with self.session.post(f"{self.base_url}/_sim/reset") as resp:
            await resp.read()

    async def counters(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base_url}/_sim/counters") as resp:
            return dict(await resp.json())

    async def requests(self) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.base_url}/_sim/requests") as resp:
            return list(await resp.json())

    async def add_token_account(self, token: str) -> None:
        async with self.session.post(f"{self.base_url}/_sim/accounts", json={"token": token}) as resp:
            await resp.read()


@dataclass(slots=True)
class Arrival:
    """Where and when a completion request reached the simulator."""

    account: str | None
    at: float  # the simulator's time.time()


class RecordPoller:
    """Collects which simulator account served which prompt, and when the request arrived.

    The simulator keeps only its latest 256 requests, so they are fetched often
    enough during a run not to lose any; the same polling runs in the direct and the
    gateway run, so its (small) cost is on both sides of every ratio.
    """

    def __init__(self, sim: SimControl, interval: float) -> None:
        self.sim = sim
        self.interval = interval
        self.arrivals: dict[str, Arrival] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> dict[str, Arrival]:
        """Stop polling, then read the records once more so the last requests are in."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.poll_once()
        return self.arrivals

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.poll_once()

    async def poll_once(self) -> None:
        for record in await self.sim.requests():
            prompt = record.get("prompt")
            if record.get("path", "").endswith("/completion") and prompt and prompt not in self.arrivals:
                self.arrivals[prompt] = Arrival(record.get("account"), float(record["at"]))


class GatewayControl:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: str) -> None:
        self.session = session
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {key}"}

    async def wait_healthy(self, alive: Any, timeout: float) -> None:
        """Until /healthz answers 200; ``alive()`` false means the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError("the gateway exited during start-up")
            try:
                async with self.session.get(f"{self.base_url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the gateway was not healthy within {timeout:g} s")

    async def accounts(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base_url}/admin/accounts", headers=self.headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/admin/accounts answered {resp.status}: {await resp.text()}")
            return dict(await resp.json())

    async def wait_ready(self, timeout: float) -> float:
        """Until every account is idle with a solved challenge ready; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            snapshot = await self.accounts()
            rows = snapshot["accounts"]
            if all(r["status"] == "ready" and r["ready_ticket"] and r["inflight"] == 0 for r in rows) and not snapshot[
                "queued"
            ]:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                states = sorted({(r["status"], r["ready_ticket"]) for r in rows})
                raise RuntimeError(f"gateway accounts not all ready after {timeout:g} s: {states}")
            await asyncio.sleep(READY_POLL)
