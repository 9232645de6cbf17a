"""``python -m ds2a.sim``: run the simulator until SIGTERM/SIGINT, printing its base URL."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ds2a.sim.app import Simulator
from ds2a.sim.config import SimConfig


DEFAULTS = SimConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ds2a.sim", description="DeepSeek web upstream simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--difficulty", type=int, default=DEFAULTS.difficulty)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between frames")
    parser.add_argument("--first-delay", type=float, default=0.0, help="seconds before a response starts")
    parser.add_argument("--thinking-tokens", type=int, default=DEFAULTS.thinking_tokens)
    parser.add_argument("--answer-tokens", type=int, default=DEFAULTS.answer_tokens)
    parser.add_argument("--chunk", type=int, default=1, help="tokens per frame")
    parser.add_argument("--coalesce", type=int, default=1, help="frames per write at delay 0")
    parser.add_argument("--password", default=DEFAULTS.password)
    parser.add_argument("--token", action="append", default=[], help="a pre-seeded Bearer token (repeatable)")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        password=args.password, tokens=tuple(args.token), difficulty=args.difficulty, delay=args.delay,
        first_delay=args.first_delay, thinking_tokens=args.thinking_tokens, answer_tokens=args.answer_tokens,
        chunk=args.chunk, coalesce=args.coalesce,
    )


async def serve(config: SimConfig, host: str, port: int) -> None:
    sim = Simulator(config)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    base_url = await sim.start(host=host, port=port)
    print(base_url, flush=True)
    try:
        await done.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"ds2a.sim: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop  # the benchmark measures the upstream at its fastest
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency off Windows
        asyncio.run(serve(config, args.host, args.port))
    else:
        uvloop.run(serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
