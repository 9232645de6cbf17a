"""Against the real chat.deepseek.com: off unless asked for twice (``--real`` and ``--real-config``).

One stream per account and never more: one wave of as many requests as the config
has accounts, first straight to DeepSeek, then, once every direct answer has
ended and its session is deleted, through a gateway started on that same config.
No text can be checked (the model answers freely), so exactness is not reported;
latency, throughput, the gateway's CPU and RSS are. The gateway side cannot tell
which account served which request (there are no simulator records), so only the
direct side has per-account figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.control import GatewayControl
from bench.decode import decode
from bench.loadgen import DirectPool, DirectTarget, GatewayTarget, Sample, new_session, run_waves
from bench.procs import Children, Pinning
from bench.stats import Measured, figures, label, per_account, window_of
from ds2a.config import Config, ConfigError, load_config

MODEL = "deepseek-reasoner"
PROMPT = "In one short sentence: what is a proof of work? ({kind} #{n})"
READY_TIMEOUT = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("real DeepSeek (needs internet and your own accounts; off by default)")
    group.add_argument("--real", action="store_true", help="run against the upstream in --real-config")
    group.add_argument("--real-config", type=Path, help="a ds2a config.json with accounts and at least one key")


def check(args: argparse.Namespace) -> Config:
    """Refuse anything but an explicit, complete request to use real accounts."""
    if not (args.real and args.real_config):
        raise SystemExit("the real-DeepSeek run needs both --real and --real-config PATH")
    try:
        config = load_config(str(args.real_config), env={})
    except ConfigError as exc:
        raise SystemExit(f"bad config {args.real_config}: {exc}") from None
    if not config.accounts:
        raise SystemExit(f"{args.real_config} has no accounts: nothing to measure")
    if not config.keys:
        raise SystemExit(f"{args.real_config} has no keys: the gateway run needs one")
    if config.pool.max_inflight_per_account != 1:
        raise SystemExit("pool.max_inflight_per_account must be 1: one stream per account, never more")
    return config


def main(args: argparse.Namespace, out: Path) -> int:
    config = check(args)
    print(f"real run: {len(config.accounts)} account(s) at {config.deepseek.base_url}, one stream each", flush=True)
    children = Children()
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            body = runner.run(run(config, args.real_config, children))
    finally:
        children.stop_all()
    children.forget_logs()
    body["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "upstream": config.deepseek.base_url,
                    "accounts": len(config.accounts)}
    path = out / "real.json"
    path.write_text(json.dumps(body, indent=1, ensure_ascii=False))
    for kind in ("direct", "gateway"):
        o = body[kind]["overall"]
        print(f"{kind:<8} {o['requests']} requests, {o['errors']} errors, {o['tokens']} tokens, "
              f"TTFT p50 {o['ttft']['p50']} ms / max {o['ttft']['max']} ms, gap p99 {o['gap']['p99']} ms, "
              f"{o['tokens_per_s']} tok/s" + (f"; gateway CPU {body[kind]['gateway_cpu_per_1k_tokens']} s/1000 tok, "
                                               f"peak RSS {body[kind]['gateway_peak_rss_mb']} MB"
                                               if kind == "gateway" else ""))
    print(f"results: {path}")
    return 0


async def run(config: Config, config_path: Path, children: Children) -> dict[str, Any]:
    accounts = [{k: v for k, v in dataclasses.asdict(a).items() if v} for a in config.accounts]
    direct = await run_direct(config, accounts)
    gateway = await run_gateway(config, config_path, children, len(accounts))
    return {"direct": direct, "gateway": gateway}


async def run_direct(config: Config, accounts: list[dict[str, str]]) -> dict[str, Any]:
    pool = DirectPool(config.deepseek, accounts)
    await pool.start()
    try:
        async with new_session() as session:
            target = DirectTarget(session, pool, thinking=True, parse_terminal=True)
            samples = await run_waves(target, clients=len(accounts), waves=1,
                                      prompt=lambda n: PROMPT.format(kind="direct", n=n), between=pool.wait_ready)
            await pool.wait_ready()  # tails read and sessions deleted while the connections are open
    finally:
        await pool.close()  # every session deleted before the gateway may use the accounts
    return summarise(samples, "direct", cpu=None)


async def run_gateway(config: Config, config_path: Path, children: Children, streams: int) -> dict[str, Any]:
    port = procs.free_port()
    child = procs.start_gateway(children, Pinning(None, None), config_path.resolve(), port=port)
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with new_session() as session:
            control = GatewayControl(session, base_url, config.keys[0])
            await control.wait_healthy(child.alive, procs.START_TIMEOUT)
            await control.wait_ready(READY_TIMEOUT)
            target = GatewayTarget(session, base_url, config.keys[0], MODEL)
            before = child.cpu()

            async def ready() -> None:
                await control.wait_ready(READY_TIMEOUT)

            samples = await run_waves(target, clients=streams, waves=1,
                                      prompt=lambda n: PROMPT.format(kind="gateway", n=n), between=ready)
            cpu = child.cpu() - before
            await ready()  # the gateway ends and deletes its sessions before it is stopped
            result = summarise(samples, "gateway", cpu=cpu)
            result["gateway_peak_rss_mb"] = round(child.peak_rss_kib() * 1024 / 1e6, 1)
            return result
    except Exception as exc:
        print(f"gateway log:\n{child.log_tail()}", file=sys.stderr)
        raise RuntimeError(f"real gateway run failed: {exc}") from exc
    finally:
        children.stop(child)


def summarise(samples: list[Sample], kind: str, cpu: float | None) -> dict[str, Any]:
    measured = [Measured(s, decode(s, kind, None), label(s.account), None) for s in samples]
    window = window_of(measured)
    overall = figures(measured, window)
    out: dict[str, Any] = {"overall": overall.as_json(), "window": round(window, 3)}
    if kind == "direct":
        out["accounts"] = {k: v.as_json() for k, v in per_account(measured, window).items()}
    if cpu is not None:
        out["gateway_cpu_s"] = round(cpu, 3)
        out["gateway_cpu_per_1k_tokens"] = round(cpu / (overall.tokens / 1000), 4) if overall.tokens else None
    return out
