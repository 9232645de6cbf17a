"""``python -m ds2a``: run the gateway (``--demo``: against the built-in simulator, offline;
``--healthcheck``: ask a running gateway, at the address its configuration gives, if it serves).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import secrets
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

from ds2a.config import Config, ConfigError, load_config

log = logging.getLogger("ds2a")

DEMO_ACCOUNTS = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ds2a",
        description="OpenAI-compatible gateway to the DeepSeek web chat, for personal use.",
    )
    parser.add_argument("--config", help="config file (default: $DS2A_CONFIG, else ./config.json if present)")
    parser.add_argument("--host", help="listen address (default 127.0.0.1; the container uses 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (default 5001)")
    parser.add_argument(
        "--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="serve from the built-in DeepSeek simulator (offline; no real accounts used)",
    )
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 if the gateway configured here answers /healthz, else 1 (the container's HEALTHCHECK)",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    path: str | None = args.config or os.environ.get("DS2A_CONFIG")
    if path is None and Path("config.json").exists():
        path = "config.json"
    overrides: dict[str, Any] = {}
    server: dict[str, Any] = {}
    if args.host:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.log_level:
        server["log_level"] = args.log_level
    if server:
        overrides["server"] = server
    return load_config(path, overrides=overrides)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def run(config: Config, *, demo: bool, config_source: Any = None) -> int:
    from ds2a.app import Gateway

    sim = None
    if demo:
        config, sim = await start_demo_upstream(config)
    gateway = Gateway(config, config_source=config_source)
    try:
        host, port = await gateway.start()
    except OSError as exc:
        # One line, not a traceback: the usual cause is another process on the port.
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        print(f"ds2a: cannot listen on {config.server.host}:{config.server.port}: {reason}", file=sys.stderr)
        if sim is not None:
            await sim.stop()
        return 1
    # Before the line that says it is up: a SIGTERM right after it must stop it gracefully.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if demo:
        print_demo_banner(config, host, port)
    log.info("ds2a listening on http://%s:%d (%s)", host, port, plural(len(config.accounts), "account"))
    if not demo:  # SIGHUP: read the config again (the demo's is made up, not read)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gateway.reload_logged()))
    await stop.wait()
    log.info("shutting down: running answers get up to %g s to finish", config.server.shutdown_grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)  # a second Ctrl-C kills at once
    await gateway.stop()
    if sim is not None:
        await sim.stop()
    return 0


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def healthcheck(config: Config, timeout: float = 3.0) -> int:
    """0 when the gateway at the configured host and port answers /healthz with 200."""
    host = config.server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"  # listening on every address: ask on loopback
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{config.server.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            healthy = response.status == 200
    except OSError as exc:
        print(f"ds2a: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


async def start_demo_upstream(config: Config) -> tuple[Config, Any]:
    """Start the simulator in-process and point a demo config at it.

    Every setting from the config file, ``DS2A_*`` and the flags still applies (the
    shutdown grace, timeouts, limits, CORS...); only the keys, the accounts, the
    upstream and the token store are the demo's own, so no real account is touched.
    """
    from ds2a.sim import SimConfig, Simulator

    sim = Simulator(SimConfig(delay=0.02))
    base_url = await sim.start(host="127.0.0.1", port=0)
    key = "sk-demo-" + secrets.token_urlsafe(12)
    accounts = [{"email": f"demo{i}@example.com", "password": SimConfig().password} for i in range(DEMO_ACCOUNTS)]
    demo = load_config(
        None,
        env={},
        overrides={
            "keys": [key],
            "accounts": accounts,
            "server": dataclasses.asdict(config.server),
            "deepseek": {**dataclasses.asdict(config.deepseek), "base_url": base_url},
            "pool": {**dataclasses.asdict(config.pool), "token_store": ""},
            "api": dataclasses.asdict(config.api),
        },
    )
    return demo, sim


def print_demo_banner(config: Config, host: str, port: int) -> None:
    key = config.keys[0]
    url = f"http://{host}:{port}"
    print(
        f"""
ds2a demo: the gateway is serving from its built-in DeepSeek simulator (offline, no real accounts).
The simulator answers with deterministic filler text (mixed scripts, emoji, whitespace) that
exercises the relay; point config.json at your own accounts for real answers.

  base URL : {url}/v1
  API key  : {key}

Try it:
  curl -N {url}/v1/chat/completions \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"model": "deepseek-reasoner", "stream": true, "messages": [{{"role": "user", "content": "Hello!"}}]}}'

Press Ctrl-C to stop.
""",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"ds2a: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.healthcheck:
        return healthcheck(config)
    setup_logging(config.server.log_level)
    if config.log.format == "json":
        from ds2a.logfmt import use_json_logs

        use_json_logs()
    main_coro = run(config, demo=args.demo, config_source=lambda: build_config(args))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        return asyncio.run(main_coro)
    return uvloop.run(main_coro)


if __name__ == "__main__":
    sys.exit(main())
