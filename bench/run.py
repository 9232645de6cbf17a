"""``python -m bench``: the streaming benchmark, gateway side by side with the upstream alone.

Starts the simulator and, per scenario, a fresh gateway as child processes on
loopback, runs every scenario against both, and writes ``results.json``,
``results.md`` and ``latency.png`` (with matplotlib) into ``bench/out/<stamp>/``.
Every child is stopped on the way out, however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shlex
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from bench import procs, real, report
from bench.loadgen import new_session
from bench.procs import Children, Pinning
from bench.scenarios import FULL, QUICK, REAL_DIFFICULTY, Scenario, select, with_redis
from bench.suite import Context, ScenarioResult, run_scenario

OUT = procs.ROOT / "bench" / "out"
T = TypeVar("T")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (small scenarios)")
    parser.add_argument("--scenarios", help="comma-separated scenario names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--out", type=Path, help="output folder (default bench/out/<date-time>)")
    parser.add_argument("--pin", choices=("auto", "off"), default="auto",
                        help="auto: the gateway alone on one CPU, simulator + load generator on the others")
    parser.add_argument("--profile", default="",
                        help="comma-separated scenarios during whose gateway run py-spy samples the gateway")
    parser.add_argument("--profile-mode", choices=("nonblocking", "blocking", "native"), default="nonblocking",
                        help="py-spy sampling: nonblocking (least intrusive), blocking (pauses the gateway per "
                             "sample, cleaner), native (blocking + C frames and syscalls)")
    parser.add_argument("--gateway-cmd", default="",
                        help="how to start the gateway, e.g. to A/B a patched checkout "
                             "(default: this Python -m ds2a; --config/--host/--port are appended)")
    parser.add_argument("--redis", action="store_true",
                        help="run each scenario twice: embedded pool, then shared through a Redis "
                             "(redis-server started on a free port, or --redis-url)")
    parser.add_argument("--redis-url", default="", help="an existing Redis for --redis")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG even when matplotlib is there")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    real.add_arguments(parser)
    return parser.parse_args(argv)


def list_scenarios() -> None:
    for title, table in (("full run", FULL), ("--quick", QUICK)):
        print(f"{title}:")
        for s in table:
            print(f"  {s.name:<18} {s.title}")


async def run_all(scenarios: list[Scenario], children: Children, pinning: Pinning, out: Path,
                  args: argparse.Namespace) -> list[ScenarioResult]:
    _stop_on_signals()
    sim_child, sim_url = procs.start_simulator(children, pinning, difficulty=REAL_DIFFICULTY)
    redis_url = args.redis_url
    if args.redis and not redis_url:
        _, redis_url = procs.start_redis(children, pinning)
    results: list[ScenarioResult] = []
    async with new_session() as session:
        ctx = Context(children, pinning, sim_child, sim_url, session, out, _names(args.profile), args.profile_mode,
                      tuple(shlex.split(args.gateway_cmd)) or procs.GATEWAY_COMMAND, redis_url)
        for i, scenario in enumerate(scenarios, 1):
            print(f"[{i}/{len(scenarios)}] {scenario.name}: {scenario.title} ...", flush=True)
            started = time.perf_counter()
            result = await run_scenario(ctx, scenario)
            g, d = result.gateway.overall, result.direct.overall
            print(f"    {time.perf_counter() - started:.1f} s; gateway {g.tokens_per_s:,.0f} tok/s, "
                  f"TTFT p50 {g.ttft['p50']} ms; direct {d.tokens_per_s:,.0f} tok/s, TTFT p50 {d.ttft['p50']} ms; "
                  f"errors {g.errors}/{d.errors}", flush=True)
            results.append(result)
    children.stop(sim_child)
    return results


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the run the way Ctrl-C does: the run is cancelled and unwinds."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, task.cancel)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_scenarios()
        return 0
    started_at = dt.datetime.now(dt.timezone.utc)
    out = args.out or OUT / started_at.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if args.real or args.real_config:
        return real.main(args, out)
    scenarios = select(args.scenarios, args.quick)
    if args.redis or args.redis_url:
        scenarios = with_redis(scenarios)
    pinning = Pinning.choose(args.pin)
    children = Children()
    began = time.perf_counter()
    try:
        pinning.apply("self", "loadgen")
        results = _run_loop(run_all(scenarios, children, pinning, out, args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every process the bench started has been stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a child that would not start or died: its log tail is in the message
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    finally:
        children.stop_all()
    children.forget_logs()
    return write_outputs(args, out, results, pinning, started_at, time.perf_counter() - began)


def _names(text: str) -> set[str]:
    return {n.strip() for n in text.split(",") if n.strip()}


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def write_outputs(args: argparse.Namespace, out: Path, results: list[ScenarioResult], pinning: Pinning,
                  started_at: dt.datetime, seconds: float) -> int:
    info = report.meta(quick=args.quick, pinning=pinning.describe(), started=started_at, seconds=seconds)
    verdicts = report.verdicts(results)
    chart = None if args.no_chart else report.chart(out / "latency.png", results)
    report.write_json(out / "results.json", info, results, verdicts)
    (out / "results.md").write_text(report.markdown(info, results, verdicts, chart))
    if any(r.scenario.redis for r in results):
        side_by_side = report.redis_side_by_side(results)
        with open(out / "results.md", "a") as md:
            md.write("\n" + "\n".join(side_by_side) + "\n")
        print()
        print("\n".join(side_by_side))
    print()
    print(report.console_summary(results, verdicts))
    print()
    if chart is None and not args.no_chart:
        print("no chart: matplotlib is not installed (.venv/bin/pip install matplotlib); JSON and Markdown written")
    print(f"results: {out}/results.json, {out}/results.md" + (f", {out}/{chart}" if chart else ""))
    missed = any(v.passed is False for v in verdicts)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
