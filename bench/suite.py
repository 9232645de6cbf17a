"""One scenario, twice: the load straight at the simulator, then through a fresh gateway.

Order inside a run: configure the simulator, warm up (one short unmeasured request
per account opens the connections), wait until every account is idle with a
solved challenge ready, then measure. CPU seconds are read from /proc around the
measured part only; the gateway is a new process per scenario, so its VmHWM is
the peak of that scenario (start-up included).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.control import GatewayControl, RecordPoller, SimControl
from bench.decode import decode
from bench.loadgen import DirectPool, DirectTarget, GatewayTarget, Sample, Target, new_session, run_continuous, run_waves
from bench.profile import Recording
from bench.procs import Child, Children, Pinning
from bench.scenarios import Scenario
from bench.stats import Figures, Measured, distributions, figures, label, max_concurrent, per_account, window_of
from ds2a.config import DeepSeekConfig
from ds2a.relay.prompt import build_prompt
from ds2a.sim import SimConfig

KEY = "sk-ds2a-bench-key"
MODEL = "deepseek-reasoner"
SIM_PASSWORD = SimConfig().password
READY_TIMEOUT = 180.0  # 1000 accounts each log in and solve a 144000 challenge first
KEPT_COUNTERS = ("completions", "finished", "incomplete", "disconnects", "stops", "pow_rejects",
                 "parallel_violations", "max_active_per_account", "max_active_streams", "sessions_created",
                 "sessions_deleted")


@dataclass(slots=True)
class Context:
    children: Children
    pinning: Pinning
    sim_child: Child
    sim_url: str
    session: aiohttp.ClientSession
    out: Path
    profile: set[str] = field(default_factory=set)
    profile_mode: str = "nonblocking"
    gateway_command: tuple[str, ...] = procs.GATEWAY_COMMAND
    redis_url: str = ""  # --redis: the Redis the `+redis` scenarios' gateways share their pool through

    @property
    def sim(self) -> SimControl:
        return SimControl(self.session, self.sim_url)

    def pin(self, scenario: Scenario) -> Pinning:
        pinning = self.pinning if scenario.pinned else Pinning(None, None)
        pinning.apply(self.sim_child.pid, "simulator")
        pinning.apply("self", "loadgen")
        return pinning


@dataclass(slots=True)
class RunResult:
    kind: str
    overall: Figures
    accounts: dict[str, Figures]
    window: float  # seconds: first request issued -> last token received
    wall: float  # seconds of the measured part, waits between waves included
    cpu: dict[str, float]  # seconds per process during the measured part
    cpu_per_1k_tokens: dict[str, float | None]
    memory_mb: dict[str, float | None]
    max_concurrent: int
    unattributed: int  # requests whose account the simulator's records did not tell
    sim_counters: dict[str, Any]
    distributions: dict[str, list[float]]
    gateway_accounts: list[dict[str, Any]] | None = None
    profile: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["overall"] = self.overall.as_json()
        out["accounts"] = {k: v.as_json() for k, v in self.accounts.items()}
        return out


@dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    direct: RunResult
    gateway: RunResult

    def as_json(self) -> dict[str, Any]:
        return {"scenario": asdict(self.scenario), "direct": self.direct.as_json(), "gateway": self.gateway.as_json()}


def bench_accounts(count: int) -> list[dict[str, str]]:
    return [{"email": f"bench{i}@example.com", "password": SIM_PASSWORD, "name": f"bench{i}"} for i in range(count)]


def prompt_for(scenario: Scenario, kind: str, n: int) -> str:
    # Unique per request: the simulator's records then tell which account served it.
    text = f"bench {scenario.name} {kind} #{n}: explain streaming in one paragraph."
    prompt = build_prompt([("user", text)])
    assert prompt == text, "a single user message must reach the upstream unchanged"
    return prompt


def warmup_prompt(scenario: Scenario, kind: str, n: int) -> str:
    return f"warm-up {scenario.name} {kind} #{n} [[sim:delay=0]][[sim:thinking_tokens=1]][[sim:tokens=2]]"


async def run_scenario(ctx: Context, scenario: Scenario) -> ScenarioResult:
    settings = await ctx.sim.configure(
        difficulty=scenario.difficulty, delay=scenario.delay, first_delay=0.0,
        thinking_tokens=scenario.thinking_tokens, answer_tokens=scenario.answer_tokens,
    )
    pinning = ctx.pin(scenario)
    accounts = bench_accounts(scenario.accounts)
    direct = await run_direct(ctx, scenario, accounts, settings, pinning)
    gateway = await run_gateway(ctx, scenario, accounts, settings, pinning)
    return ScenarioResult(scenario, direct, gateway)


async def run_direct(ctx: Context, scenario: Scenario, accounts: list[dict[str, str]],
                     settings: SimConfig, pinning: Pinning) -> RunResult:
    pool = DirectPool(DeepSeekConfig(base_url=ctx.sim_url), accounts, pow_cpus=pinning.gateway)
    await pool.start()
    try:
        async with new_session() as session:
            target = DirectTarget(session, pool, thinking=True)
            return await measure(ctx, scenario, target, settings, ready=pool.wait_ready, gateway=None,
                                 pow_tids=pool.pow_tids)
    finally:
        await pool.close()


def gateway_config(ctx: Context, scenario: Scenario, accounts: list[dict[str, str]], port: int) -> dict[str, Any]:
    config = {
        "keys": [KEY],
        "accounts": accounts,
        "server": {"host": "127.0.0.1", "port": port, "access_log": False, "shutdown_grace": 2},
        # pool_limit: 1000 held streams need 1000 upstream connections (default 256).
        "deepseek": {"base_url": ctx.sim_url, "pool_limit": max(256, len(accounts) + 64)},
        "pool": {"token_store": "", "queue_max": max(256, scenario.clients)},
    }
    if scenario.redis:
        # A prefix per scenario: each starts from an empty shared pool, as the embedded one does.
        config["redis"] = {"url": ctx.redis_url, "prefix": f"bench-{scenario.name}-{time.time_ns()}:"}
    return config


async def run_gateway(ctx: Context, scenario: Scenario, accounts: list[dict[str, str]], settings: SimConfig,
                      pinning: Pinning) -> RunResult:
    port = procs.free_port()
    path = procs.write_config(ctx.children, f"gateway-{scenario.name}", gateway_config(ctx, scenario, accounts, port))
    child = procs.start_gateway(ctx.children, pinning, path, port=port, command=ctx.gateway_command)
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with new_session() as session:
            control = GatewayControl(session, base_url, KEY)
            await control.wait_healthy(child.alive, procs.START_TIMEOUT)
            await control.wait_ready(READY_TIMEOUT)
            pinning.apply(child.pid, "gateway")  # threads started since (PoW) follow too
            idle_kib = child.rss_kib()
            target = GatewayTarget(session, base_url, KEY, MODEL)

            async def ready() -> None:
                await control.wait_ready(READY_TIMEOUT)

            result = await measure(ctx, scenario, target, settings, ready=ready, gateway=child)
            result.gateway_accounts = (await control.accounts())["accounts"]
            result.memory_mb["gateway_idle_rss"] = _mb(idle_kib)
            result.memory_mb["gateway_peak_rss"] = _mb(child.peak_rss_kib())
            return result
    except Exception as exc:
        raise RuntimeError(f"gateway run of {scenario.name} failed: {exc}\n--- gateway log ---\n{child.log_tail()}") from exc
    finally:
        ctx.children.stop(child)


def _mb(kib: int) -> float:
    return round(kib * 1024 / 1e6, 1)


async def measure(ctx: Context, scenario: Scenario, target: Target, settings: SimConfig, *,
                  ready: Callable[[], Awaitable[None]], gateway: Child | None,
                  pow_tids: set[int] | None = None) -> RunResult:
    await _warm_up(scenario, target, ready)
    await ready()
    await ctx.sim.reset()
    poller = RecordPoller(ctx.sim, scenario.poll)
    poller.start()
    pids: dict[str, int | str] = {"simulator": ctx.sim_child.pid, "loadgen": "self"}
    if gateway is not None:
        pids["gateway"] = gateway.pid
    procs.reset_peak_rss(ctx.sim_child.pid)
    recording = _start_profile(ctx, scenario, gateway)
    try:
        before = _cpu(pids, pow_tids)
        started = time.perf_counter()
        samples = await _load(scenario, target, ready)
        wall = time.perf_counter() - started
        after = _cpu(pids, pow_tids)
        profile = recording.stop() if recording is not None else None
        await ready()  # the last answers' cleanups end while their connections are still open
        arrivals = await poller.stop()
    finally:  # also when interrupted: nothing may outlive the run
        poller.cancel()
        if recording is not None:
            recording.stop()
    measured = [_measured(s, target.kind, settings, arrivals) for s in samples]
    cpu = {name: round(after[name] - before[name], 3) for name in after}
    result = _result(target.kind, measured, cpu, wall, await ctx.sim.counters())
    result.memory_mb["simulator_peak_rss"] = _mb(procs.status_kib("VmHWM", ctx.sim_child.pid))
    result.profile = profile
    return result


async def _warm_up(scenario: Scenario, target: Target, ready: Callable[[], Awaitable[None]]) -> None:
    """One short unmeasured answer per account: connections opened, code paths warm."""
    if scenario.warmup:
        await run_waves(target, clients=min(scenario.clients, scenario.accounts), waves=1,
                        prompt=lambda n: warmup_prompt(scenario, target.kind, n), between=ready)


def _result(kind: str, measured: list[Measured], cpu: dict[str, float], wall: float,
            counters: dict[str, Any]) -> RunResult:
    window = window_of(measured)
    overall = figures(measured, window)
    per_1k = {name: (round(seconds / (overall.tokens / 1000), 4) if overall.tokens else None)
              for name, seconds in cpu.items()}
    return RunResult(
        kind=kind, overall=overall, accounts=per_account(measured, window), window=round(window, 3),
        wall=round(wall, 3), cpu=cpu, cpu_per_1k_tokens=per_1k, memory_mb={},
        max_concurrent=max_concurrent(measured),
        unattributed=sum(1 for m in measured if m.account == "unknown"),
        sim_counters={k: counters.get(k) for k in KEPT_COUNTERS},
        distributions=distributions(measured),
    )


def _cpu(pids: dict[str, int | str], pow_tids: set[int] | None) -> dict[str, float]:
    """CPU seconds so far per process; the direct run's PoW threads apart from the load generator."""
    out = {name: procs.cpu_seconds(pid) for name, pid in pids.items()}
    if "gateway" in pids:
        # Threads that end between the two readings drop out of "workers": the total stays exact.
        split = procs.gateway_threads(int(pids["gateway"]))
        out.update({f"gateway_{name}": seconds for name, seconds in split.items()})
    if pow_tids is not None:
        out["direct_pow"] = procs.threads_cpu_seconds(pow_tids)
        out["loadgen"] -= out["direct_pow"]
    return out


async def _load(scenario: Scenario, target: Target, ready: Callable[[], Awaitable[None]]) -> list[Sample]:
    kind = target.kind
    if scenario.mode == "continuous":
        return await run_continuous(target, clients=scenario.clients, duration=scenario.duration,
                                    max_requests=scenario.max_requests,
                                    prompt=lambda n: prompt_for(scenario, kind, n))
    return await run_waves(target, clients=scenario.clients, waves=scenario.waves,
                           prompt=lambda n: prompt_for(scenario, kind, n), between=ready, ramp=scenario.ramp)


def _measured(sample: Sample, kind: str, settings: SimConfig, arrivals: dict[str, Any]) -> Measured:
    arrival = arrivals.get(sample.prompt)
    account = (arrival.account if arrival is not None else None) or sample.account
    return Measured(sample, decode(sample, kind, settings), label(account), arrival)


def _start_profile(ctx: Context, scenario: Scenario, gateway: Child | None) -> Recording | None:
    if gateway is None or scenario.name not in ctx.profile:
        return None
    return Recording(gateway.pid, ctx.out / f"profile-{scenario.name}.txt", mode=ctx.profile_mode)
