"""Streaming one message: the opening events, the pre-encoded steps, and the end.

One `Generation` per running completion or continuation. It owns its account's
generation slot while it runs and gives it back the moment it ends, however it ends
(finished, stopped, cut by a fault, dropped, or the client went away).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ds2a.sim import bodies
from ds2a.sim.frames import (
    COMMENT, ELAPSED, ELAPSED_PATH, KEEPALIVE, TEXT, Sticky, Step, batch, data, event, fragments_at, template_fragment,
    tip_fragment,
)

if TYPE_CHECKING:
    from ds2a.sim.accounts import Account, Message
    from ds2a.sim.app import Simulator

FINISHED, INCOMPLETE, CONTENT_FILTER = "FINISHED", "INCOMPLETE", "CONTENT_FILTER"
# Drift of 2026-08..10 (§16.4): error statuses, a user's stop (TIP + INCOMPLETE), an error toast.
CONTEXT_LENGTH_EXCEEDED, TIMEOUT = "CONTEXT_LENGTH_EXCEEDED", "TIMEOUT"
ERROR_STATUSES = (CONTEXT_LENGTH_EXCEEDED, TIMEOUT)
STOPPED, TOAST = "STOPPED", "TOAST"  # how the stream ends; the message's status is INCOMPLETE / unchanged
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
HEARTBEAT_HEADER = "x-ds-sse-heartbeat-timeout-secs"


@dataclass(slots=True)
class Behaviour:
    """How this request's stream goes: settings plus any faults or directives that apply."""

    delay: float
    first_delay: float
    chunk: int
    content_filter: bool = False
    incomplete_after: int | None = None  # tokens generated in this stream before it is cut
    drop_after: int | None = None  # SSE blocks written before the connection is aborted
    end_status: str | None = None  # CONTEXT_LENGTH_EXCEEDED / TIMEOUT after end_after tokens
    end_after: int = 0  # 0: before any text (the snapshot has no fragment)
    toast_after: int | None = None  # tokens before an error toast (0: instead of the answer)
    user_stop_after: int | None = None  # tokens before a user's stop ends it (TIP + INCOMPLETE)
    stall_after: int | None = None  # SSE blocks before the stream goes silent for good (no heartbeat)
    pause: float = 0.0  # a quiet pause after the opening snapshot (heartbeats keep flowing)
    heartbeat: float = 0.0  # > 0: promise a frame this often (header) and keep the promise
    endless_after: int | None = None  # SSE blocks before a block that never ends (issue 8)


class _Dropped(Exception):
    """The drop or endless_block fault fired: unwind without counting a client disconnect."""


class Generation:
    def __init__(self, sim: Simulator, account: Account, message: Message, behaviour: Behaviour,
                 request: web.Request) -> None:
        self.sim = sim
        self.account = account
        self.message = message
        self.behaviour = behaviour
        self.request = request
        headers = {**SSE_HEADERS, "x-ds-trace-id": sim.trace_id()}
        if behaviour.heartbeat > 0:
            headers[HEARTBEAT_HEADER] = f"{behaviour.heartbeat:g}"
        self.resp = web.StreamResponse(headers=headers)
        self.stop_requested = False
        self.stalled = False  # the stall fault fired: nothing more is written, heartbeats included
        self._heartbeat = behaviour.heartbeat > 0
        self._last_write = 0.0  # loop time of the last write, for heartbeats
        self.frames = 0
        self.i = 0  # next step index
        self._wake: asyncio.Future[None] | None = None
        self._buffer: list[bytes] = []
        self._coalesce = sim.config.coalesce if behaviour.delay == 0 else 1
        self._started: dict[int, float] = {}  # THINK block -> monotonic start
        self._dropping = False
        self._resume = False
        account.generation = self
        message.generation = self
        sim.generations.add(self)

    # --- control ------------------------------------------------------------------

    def stop(self) -> None:
        """chat/stop_stream: end at the next step with status INCOMPLETE."""
        self.stop_requested = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def sleep(self, seconds: float) -> None:
        # Like asyncio.sleep, but stop() cuts it short so a stop lands at once.
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        handle = loop.call_later(seconds, _wake_up, self._wake)
        try:
            await self._wake
        finally:
            handle.cancel()
            self._wake = None

    # --- the stream ---------------------------------------------------------------

    async def run(self, resume: bool) -> web.StreamResponse:
        sim, msg, behaviour = self.sim, self.message, self.behaviour
        sim.counters.stream_opened()
        self._resume = resume
        start = msg.pos
        ended = False
        heartbeats: asyncio.Task[None] | None = None
        before_text = behaviour.end_status is not None and behaviour.end_after == 0 and not resume
        try:
            if behaviour.first_delay:
                await self.sleep(behaviour.first_delay)
            await self.resp.prepare(self.request)
            if behaviour.heartbeat > 0:
                heartbeats = asyncio.ensure_future(self._heartbeats(behaviour.heartbeat))
            for frame in self._head(resume, empty=before_text):
                await self.emit(frame)
            if behaviour.pause:
                await self.flush()
                await self.sleep(behaviour.pause)
            ending = behaviour.end_status if before_text else await self._body(start, resume)
            ended = True
            await self._tail(ending, start)  # type: ignore[arg-type]
            await self.flush()
            await self.resp.write_eof()
        except _Dropped:
            pass
        except (ConnectionError, asyncio.CancelledError) as exc:
            if not self._dropping:
                sim.counters.disconnects += 1
                if not ended:
                    self._cut(self.i)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if heartbeats is not None:
                heartbeats.cancel()
            self._release()
        return self.resp

    async def _heartbeats(self, every: float) -> None:
        """Keep the header's promise (§16.2): a ": " comment whenever nothing was written for
        half the promised period, through pauses and long thinking alike."""
        loop = asyncio.get_running_loop()
        half = every / 2
        while True:
            await asyncio.sleep(half)
            if self.stalled or loop.time() - self._last_write < half:
                continue
            self._last_write = loop.time()
            self.sim.counters.heartbeats += 1
            await self.resp.write(KEEPALIVE)

    def _head(self, resume: bool, empty: bool = False) -> list[bytes]:
        msg = self.message
        frames = [event("ready", self.sim.ready_payload(msg))]
        if resume:
            frames.append(KEEPALIVE)  # where the continue capture has one
        frames.append(event("update_session", {"updated_at": time.time()}))
        compiled = msg.compiled
        if empty:
            # Refused before generating (e.g. the context is too long): no fragment at all.
            frames.append(self._snapshot([], 0, False, msg.inserted_at))
        elif resume:
            fragments, pending = fragments_at(compiled, msg.pos, msg.elapsed)
            # The stored message comes back with millisecond precision (continue capture).
            frames.append(self._snapshot(fragments, msg.tokens, pending, round(msg.inserted_at, 3)))
            open_block = self._open_think(msg.pos)
            if open_block >= 0:
                self._started[open_block] = time.monotonic() - msg.elapsed.get(open_block, 0.0)
        else:
            # A fresh snapshot says 0 tokens although its first fragment has text (captures).
            frames.append(self._snapshot(list(compiled.initial), 0, compiled.initial_pending, msg.inserted_at))
            msg.tokens = compiled.initial_tokens
            if compiled.initial_think >= 0:
                self._started[compiled.initial_think] = time.monotonic()
        return frames

    def _snapshot(self, fragments: list[dict[str, Any]], tokens: int, pending: bool, inserted_at: float) -> bytes:
        msg = self.message
        response = {
            "message_id": msg.response_id,
            "parent_id": msg.request_id,
            "model": "",
            "role": "ASSISTANT",
            "thinking_enabled": msg.thinking,
            "ban_edit": False,
            "ban_regenerate": False,
            "status": "WIP",
            "incomplete_message": None,
            "accumulated_token_usage": tokens,
            "files": [],
            "feedback": None,
            "inserted_at": inserted_at,
            "search_enabled": msg.search,
            "fragments": fragments,
            "conversation_mode": "DEEP_SEARCH" if msg.search else "DEFAULT",
            "has_pending_fragment": pending,
            "auto_continue": False,
            "search_triggered": msg.search,
        }
        return data({"v": {"response": response}})

    def _first_cut(self, resume: bool) -> tuple[int | None, str]:
        """Tokens this stream may generate before it is cut, and how it then ends."""
        behaviour = self.behaviour
        cuts: list[tuple[int, str]] = []
        if behaviour.incomplete_after is not None:
            cuts.append((behaviour.incomplete_after, INCOMPLETE))
        if behaviour.end_status is not None and not resume:
            cuts.append((behaviour.end_after, behaviour.end_status))
        if behaviour.toast_after:
            cuts.append((behaviour.toast_after, TOAST))
        if behaviour.user_stop_after is not None:
            cuts.append((behaviour.user_stop_after, STOPPED))
        if not cuts:
            return None, INCOMPLETE
        after, ending = min(cuts, key=lambda c: c[0])
        return self.message.tokens + after, ending

    async def _body(self, start: int, resume: bool) -> str:
        steps = self.message.compiled.steps
        count = len(steps)
        budget, cut_ending = self._first_cut(resume)
        initial_tokens = self.message.compiled.initial_tokens
        fresh = start if resume else -1  # a continuation re-states p/o after its snapshot
        i = start
        while i < count:
            self.i = i
            if self.stop_requested:
                self._cut(i)
                return STOPPED  # stop_stream: a user's stop (§16.4)
            step = steps[i]
            if budget is not None and step.kind == TEXT and (
                steps[i - 1].tokens_after if i else initial_tokens) >= budget:
                self._cut(i)
                return cut_ending
            if i == fresh:
                if step.kind == COMMENT:
                    fresh += 1
                    frame = step.frame
                else:
                    frame = self._render(step, Sticky())
            elif step.kind == TEXT or step.kind == COMMENT:
                frame = step.frame
            elif step.kind == ELAPSED:
                frame = self._render(step, self._state_before(i, start))
            else:
                frame = step.frame
                self._note_think(step)
            await self.emit(frame)
            i += 1
        self.i = i
        self.message.pos = count
        self.message.tokens = steps[-1].tokens_after if steps else self.message.tokens
        return CONTENT_FILTER if self.behaviour.content_filter else FINISHED

    def _render(self, step: Step, sticky: Sticky) -> bytes:
        """A step encoded live: `elapsed_secs`, or any step re-stated in full after a snapshot."""
        value = step.v
        if step.kind == ELAPSED:
            value = self._elapsed(step.effects[0][1])
        else:
            self._note_think(step)
        return data(sticky.obj(step.p, step.o, value))

    def _note_think(self, step: Step) -> None:
        # A step that opens a THINK block starts its elapsed_secs clock.
        if step.think >= 0 and step.think not in self._started:
            self._started[step.think] = time.monotonic()

    def _elapsed(self, block: int) -> float:
        started = self._started.get(block, time.monotonic())
        # Floored at 1 ms: a sub-millisecond think would serialise in exponent form
        # (9.9e-05), a float shape no capture has.
        secs = max(round(time.monotonic() - started, 9), 0.001)
        self.message.elapsed[block] = secs
        return secs

    def _state_before(self, i: int, start: int) -> Sticky:
        if i > start:
            prev = self.message.compiled.steps[i - 1]
            return Sticky(prev.p, prev.o)
        return Sticky()

    def _open_think(self, pos: int) -> int:
        compiled = self.message.compiled
        return compiled.steps[pos - 1].think if pos > 0 else compiled.initial_think

    def _cut(self, i: int) -> str:
        """Record how far the message got; the step about to go out counts as generated."""
        msg = self.message
        steps = msg.compiled.steps
        pos = i + 1 if i < len(steps) and steps[i].kind == TEXT else i
        if pos > msg.pos:
            msg.pos = pos
            msg.tokens = steps[pos - 1].tokens_after
        msg.status = INCOMPLETE
        return INCOMPLETE

    async def _tail(self, ending: str, start: int) -> None:
        sim, msg = self.sim, self.message
        if ending == TOAST:
            await self._toast_end()
            return
        sticky = self._state_before(self.i, start)
        frames: list[bytes] = []
        if ending == CONTENT_FILTER:
            frames += self._content_filter_end(sticky)
        else:
            status = INCOMPLETE if ending == STOPPED else ending
            if ending == STOPPED:
                # How the web client's stop ends an answer (08-03 capture): a TIP first.
                tip = tip_fragment(msg.compiled.plan.next_fragment_id)
                frames.append(data(sticky.obj("response/fragments", "APPEND", [tip])))
            frames.append(data(sticky.obj("response", "BATCH", batch(
                [("accumulated_token_usage", "SET", msg.tokens), ("quasi_status", "SET", status)]))))
            block = self._open_think(msg.pos)
            if status == INCOMPLETE and block >= 0:
                frames.append(data(sticky.obj(ELAPSED_PATH, "SET", self._elapsed(block))))
            frames.append(data(sticky.obj("response/status", "SET", status)))
        msg.status = INCOMPLETE if ending == STOPPED else ending
        if sim.config.finish_event:
            frames.append(event("finish", {}))
        frames.append(event("update_session", {"updated_at": time.time()}))
        if msg.first_turn and ending not in (CONTENT_FILTER, *ERROR_STATUSES) and not self._resume:
            frames.append(event("title", {"content": msg.compiled.plan.title}))
        frames.append(event("close", bodies.CLOSE_NONE))
        for frame in frames:
            await self.emit(frame)
        counters = sim.counters
        if ending == FINISHED:
            counters.finished += 1
        elif ending in (INCOMPLETE, STOPPED):
            counters.incomplete += 1
            counters.user_stops += ending == STOPPED
        elif ending in ERROR_STATUSES:
            counters.error_status(ending)
        else:
            counters.content_filtered += 1

    async def _toast_end(self) -> None:
        """An error toast mid-answer (§16.4): the generation is over, yet the stream stays
        open for toast_hold before its close, as an upstream that lingers would."""
        self.message.status = TOAST
        await self.emit(event("toast", bodies.TOAST_ERROR))
        await self.flush()
        self.sim.counters.toasts += 1
        self._release()
        await asyncio.sleep(self.sim.config.toast_hold)
        await self.resp.write(event("close", bodies.CLOSE_NONE))

    def _content_filter_end(self, sticky: Sticky) -> list[bytes]:
        """The end of new-content-filter-20260405.txt: the answer is withdrawn."""
        msg = self.message
        plan = msg.compiled.plan
        frames = []
        if not msg.compiled.has_tip:
            frames.append(data(sticky.obj("response/fragments", "APPEND", [tip_fragment(plan.next_fragment_id)])))
        frames.append(data(sticky.obj("response", "BATCH", batch(
            [("accumulated_token_usage", "SET", msg.tokens), ("quasi_status", "SET", "FINISHED")]))))
        frames.append(KEEPALIVE)
        frames.append(data(sticky.obj("response", "BATCH", batch([
            ("ban_regenerate", "SET", True),
            ("status", "SET", CONTENT_FILTER),
            ("fragments", "SET", [template_fragment(plan.next_fragment_id + 1)]),
            ("quasi_status", "SET", CONTENT_FILTER),
        ]))))
        return frames

    # --- writing ------------------------------------------------------------------

    async def emit(self, frame: bytes) -> None:
        self.frames += 1
        if self._heartbeat:
            self._last_write = asyncio.get_running_loop().time()
        if self._coalesce > 1:
            self._buffer.append(frame)
            if len(self._buffer) >= self._coalesce:
                await self.flush()
                await asyncio.sleep(0)  # one write per batch, then let other streams run
        else:
            await self.resp.write(frame)
            if self.behaviour.delay:
                await self.sleep(self.behaviour.delay)
            elif not self.frames & 63:
                # aiohttp only yields when the socket pushes back: without this a long
                # stream to a fast reader would hold the loop (and stop_stream) until done.
                await asyncio.sleep(0)
        if self.frames == self.behaviour.drop_after:
            await self._drop()
        if self.frames == self.behaviour.stall_after:
            await self._stall()
        if self.frames == self.behaviour.endless_after:
            await self._endless()

    async def _endless(self) -> None:
        """A block that never ends: one data line growing forever, until the client gives
        up or stop_stream (a broken upstream; what a gateway must survive, issue 8)."""
        await self.flush()
        self.sim.counters.endless_blocks += 1
        await self.resp.write(b'data: {"v":"')
        filler = b"x" * 65536
        while not self.stop_requested:
            await self.resp.write(filler)
            await asyncio.sleep(0)
        self._cut(self.i)
        raise _Dropped

    async def _stall(self) -> None:
        """A dead stream: the connection stays up and nothing more arrives, not even the
        promised heartbeat, until the client gives up (or stop_stream)."""
        await self.flush()
        self.stalled = True
        self.sim.counters.stalls += 1
        await self.sleep(3600.0)

    async def flush(self) -> None:
        if self._buffer:
            chunk = b"".join(self._buffer)
            self._buffer.clear()
            await self.resp.write(chunk)

    async def _drop(self) -> None:
        """Abort the TCP connection (RST) once what was written has left our buffer."""
        await self.flush()
        self._dropping = True
        self.sim.counters.drops += 1
        self._cut(self.i)
        self._release()
        transport = self.request.transport
        if transport is not None:
            for _ in range(200):
                if transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.005)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise _Dropped

    def _release(self) -> None:
        if self.account.generation is self:
            self.account.generation = None
        if self.message.generation is self:
            self.message.generation = None
            self.sim.counters.frames_sent += self.frames
            self.sim.counters.stream_closed()
            self.sim.generations.discard(self)


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def error_frame_stream(sim: Simulator, request: web.Request, obj: dict[str, Any]) -> web.StreamResponse:
    """An error object as the only frame of the stream (the in-stream 40301, §16.4; the
    framing around it is unpublished: the simulator sends nothing else)."""
    resp = web.StreamResponse(headers={**SSE_HEADERS, "x-ds-trace-id": sim.trace_id()})
    await resp.prepare(request)
    await resp.write(data(obj))
    await resp.write_eof()
    sim.counters.frames_sent += 1
    return resp


async def toast_stream(sim: Simulator, request: web.Request, payload: dict[str, Any],
                       heartbeat: float) -> web.StreamResponse:
    """An error toast instead of the answer (§16.4): ready, update_session, toast; then the
    stream stays open for toast_hold before its close."""
    headers = {**SSE_HEADERS, "x-ds-trace-id": sim.trace_id()}
    if heartbeat > 0:
        headers[HEARTBEAT_HEADER] = f"{heartbeat:g}"
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    await resp.write(event("ready", payload) + event("update_session", {"updated_at": time.time()})
                     + event("toast", bodies.TOAST_ERROR))
    sim.counters.toasts += 1
    sim.counters.frames_sent += 3
    await asyncio.sleep(sim.config.toast_hold)
    await resp.write(event("close", bodies.CLOSE_NONE))
    await resp.write_eof()
    return resp


async def hint_stream(sim: Simulator, request: web.Request, payload: dict[str, Any], hint: dict[str, Any],
                      close: dict[str, Any]) -> web.StreamResponse:
    """A refusal inside the stream: ready, hint, close and nothing else (§7.9)."""
    resp = web.StreamResponse(headers={**SSE_HEADERS, "x-ds-trace-id": sim.trace_id()})
    await resp.prepare(request)
    await resp.write(event("ready", payload) + event("hint", hint) + event("close", close))
    await resp.write_eof()
    sim.counters.hints += 1
    sim.counters.frames_sent += 3
    return resp
