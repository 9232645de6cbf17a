"""Streamed chunks per second through HTTPServer on loopback (client side: stdlib only).

    .venv/bin/python bench/server_bench.py [--chunks N] [--streams K] [--loop uvloop|asyncio]

The server runs in this process with a handler shaped like the chat handler's hot
path: one ``write`` of a prebuilt OpenAI-sized SSE chunk, then ``await drain()``, per
event. The clients run in child processes (plain blocking sockets), so the figure is
the server's cost, not a client sharing its loop. It reports chunks/s over all streams
and the server process's CPU time per chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ds2a.config import ServerConfig
from ds2a.server import HTTPServer, Request, Responder

# About the size of one streamed chat.completion.chunk carrying a token or two.
CHUNK = (
    b'data: {"id":"chatcmpl-5f0c1d2e3a4b","object":"chat.completion.chunk","created":1767225600,'
    b'"model":"deepseek-chat","choices":[{"index":0,"delta":{"content":" token"},'
    b'"finish_reason":null}]}\n\n'
)
TERMINAL = b"0\r\n\r\n"


def run_client(port: int, chunks: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Request one stream and read it to its terminal chunk; report bytes and seconds."""
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.perf_counter()
    sock.sendall(f"GET /stream?n={chunks} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    received = 0
    tail = b""
    while True:
        data = sock.recv(1 << 18)
        if not data:
            break
        received += len(data)
        tail = (tail + data)[-len(TERMINAL) :]
        if tail == TERMINAL:
            break
    results.put((received, time.perf_counter() - started))
    sock.close()


async def stream_handler(request: Request, responder: Responder) -> None:
    count = int(request.query.partition("=")[2])
    responder.start_stream()
    write = responder.write
    drain = responder.drain
    for _ in range(count):
        write(CHUNK)
        await drain()
    write(b"data: [DONE]\n\n")
    responder.end_stream()


async def measure(chunks: int, streams: int) -> tuple[float, float, float]:
    server = HTTPServer(stream_handler, ServerConfig(host="127.0.0.1", port=0, access_log=False))
    _, port = await server.start()
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    clients = [ctx.Process(target=run_client, args=(port, chunks, results)) for _ in range(streams)]
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    for client in clients:
        client.start()
    loop = asyncio.get_running_loop()
    outcomes = [await loop.run_in_executor(None, results.get) for _ in clients]
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - cpu_before
    for client in clients:
        await loop.run_in_executor(None, client.join)
    await server.shutdown(grace=1)
    slowest = max(seconds for _, seconds in outcomes)
    return slowest, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=200_000, help="chunks per stream")
    parser.add_argument("--streams", type=int, default=1, help="concurrent streams")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        slowest, wall, cpu = runner.run(measure(args.chunks, args.streams))
    total = args.chunks * args.streams
    print(
        f"{args.loop}: {args.streams} stream(s) x {args.chunks} chunks of {len(CHUNK)} B: "
        f"{total / slowest:,.0f} chunks/s, {len(CHUNK) * total / slowest / 1e6:.1f} MB/s payload, "
        f"server CPU {cpu / total * 1e6:.2f} us/chunk (wall {wall:.2f} s incl. client start)"
    )


if __name__ == "__main__":
    main()
