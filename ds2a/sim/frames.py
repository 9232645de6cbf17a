"""G3 stream frames (protocol doc §7): SSE encoding, sticky p/o, and a plan cut into steps.

A `Plan` compiles once (per chunk size) into `Step`s whose bytes are encoded ahead of
time, each relative to the sticky `p`/`o` state the previous step leaves, exactly as
the 2026 captures omit them. Only what depends on time or on the request (message
ids, timestamps, `elapsed_secs`, the end) is rendered per stream.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

from ds2a.sim.bodies import TEMPLATE_TEXT, TIP_TEXT, dumps
from ds2a.sim.text import Marker, Plan

CONTENT = "response/fragments/-1/content"
ELAPSED_PATH = "response/fragments/-1/elapsed_secs"
KEEPALIVE = b": \n\n"

# Step kinds. TEXT is the hot path; the rest are rare.
TEXT, PATCH, ELAPSED, COMMENT = range(4)


def event(name: str, payload: Any) -> bytes:
    return f"event: {name}\ndata: {dumps(payload)}\n\n".encode()


def data(obj: Any) -> bytes:
    return b"data: " + dumps(obj).encode() + b"\n\n"


class Sticky:
    """The sticky `p`/`o` of one frame sequence (§7.4 rule 1): omit what repeats."""

    __slots__ = ("p", "o")

    def __init__(self, p: str = "", o: str = "SET") -> None:
        self.p = p
        self.o = o

    def obj(self, p: str, o: str, v: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if p != self.p:
            out["p"] = self.p = p
        if o != self.o:
            out["o"] = self.o = o
        out["v"] = v
        return out


def batch(items: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    """A BATCH value: sub-frames with their own sticky state, starting again from SET."""
    sticky = Sticky()
    return [sticky.obj(p, o, v) for p, o, v in items]


class Step(NamedTuple):
    # A tuple, not a dataclass: a plan has up to 1e5 steps kept in a cache, and the
    # garbage collector stops scanning tuples that hold only atoms (most steps here).
    kind: int
    frame: bytes  # encoded relative to the previous step; empty for ELAPSED (rendered live)
    tokens_after: int  # tokens generated once this step is out (for accumulated_token_usage)
    effects: tuple[tuple[Any, ...], ...]  # how a non-TEXT step changes the response (for snapshots)
    p: str  # sticky state after this step
    o: str
    v: Any  # the semantic value, to re-encode the step in full (after a snapshot)
    think: int  # THINK block open after this step, -1 if none


@dataclass(frozen=True, slots=True)
class Compiled:
    plan: Plan
    initial: tuple[dict[str, Any], ...]  # fragments of the opening snapshot
    initial_tokens: int
    initial_pending: bool
    initial_think: int
    steps: tuple[Step, ...]
    has_tip: bool


@functools.lru_cache(maxsize=256)
def compile_plan(plan: Plan, chunk: int, keepalive_every: int, tip: bool, new_fragments: bool = False) -> Compiled:
    """``new_fragments``: the tool fragments of the 2026-09 bundle (§16.4) instead of
    TOOL_SEARCH/TOOL_OPEN: searches alternate SEARCH (with readable text, appended to
    as it goes) and TOOL_FIND, opened pages are READ_LINK, and a FILE fragment with text
    comes first. Their shapes are unpublished: these reuse the captured search and page
    shapes, so the answer and its citations are the same as without them."""
    return _Builder(plan, chunk, keepalive_every, new_fragments).build(tip)


def think_fragment(fid: int, content: str, stage: int) -> dict[str, Any]:
    return {"id": fid, "type": "THINK", "content": content, "elapsed_secs": None, "references": [], "stage_id": stage}


def response_fragment(fid: int, content: str, stage: int) -> dict[str, Any]:
    return {"id": fid, "type": "RESPONSE", "content": content, "references": [], "stage_id": stage}


def tip_fragment(fid: int) -> dict[str, Any]:
    return {"id": fid, "type": "TIP", "content": TIP_TEXT, "style": "WARNING", "hide_on_wip": True}


def template_fragment(fid: int) -> dict[str, Any]:
    return {"id": fid, "type": "TEMPLATE_RESPONSE", "content": TEMPLATE_TEXT}


@functools.lru_cache(maxsize=65536)
def _bare_text_frame(text: str) -> bytes:
    # With one token per frame the vocabulary is small: most frames are encoded once per process.
    return b'data: {"v":' + dumps(text).encode() + b"}\n\n"


def _chunks(items: tuple[str | Marker, ...], size: int) -> list[tuple[str, int] | Marker]:
    """Group tokens `size` to a frame; a marker always stands alone."""
    out: list[tuple[str, int] | Marker] = []
    run: list[str] = []
    for item in items:
        if isinstance(item, Marker):
            if run:
                out.append(("".join(run), len(run)))
                run = []
            out.append(item)
            continue
        run.append(item)
        if len(run) == size:
            out.append(("".join(run), size))
            run = []
    if run:
        out.append(("".join(run), len(run)))
    return out


class _Builder:
    def __init__(self, plan: Plan, chunk: int, keepalive_every: int, new_fragments: bool = False) -> None:
        self.plan = plan
        self.new_fragments = new_fragments
        self.ref_types: dict[int, str] = {}  # fragment id -> the type its references name
        self.chunk = chunk
        self.keepalive_every = keepalive_every
        self.sticky = Sticky()
        self.steps: list[Step] = []
        self.tokens = 0
        self.think = -1
        self.since_keepalive = 0
        self.markers = 0

    def build(self, tip: bool) -> Compiled:
        plan = self.plan
        initial: list[dict[str, Any]] = []
        pending = False
        if plan.thinking:
            first, rest = self._open_chunks(plan.think[0])
            initial.append(think_fragment(plan.think_ids[0], first[0], 1))
            self.tokens = first[1]
            self.think = 0
            initial_tokens, initial_think = self.tokens, 0
            self._texts(rest)
            self._elapsed()
            if plan.search:
                self._searches(stage=1)
                self._think_after_tools(1, stage=2)
                if plan.opens:
                    self._opens(stage=2)
                self._think_after_tools(2, stage=3)
            self._response(stage=3 if plan.search else 1, after_tools=False)
        elif plan.search:
            pending, initial_tokens, initial_think = True, 0, -1
            self._searches(stage=1, pending_first=False)
            self._response(stage=1, after_tools=True)
        else:
            first, rest = self._open_chunks(plan.answer)
            initial.append(response_fragment(plan.response_id, first[0], 1))
            self.tokens = first[1]
            initial_tokens, initial_think = self.tokens, -1
            self._texts(rest)
        if tip:
            fragment = tip_fragment(plan.next_fragment_id)
            self._patch("response/fragments", "APPEND", [fragment], (("frags", fragment),))
        return Compiled(plan, tuple(initial), initial_tokens, pending, initial_think, tuple(self.steps), tip)

    # --- step emitters ---------------------------------------------------------

    def _patch(self, p: str, o: str, v: Any, effects: tuple[tuple[Any, ...], ...], kind: int = PATCH,
               tokens: int = 0) -> None:
        frame = data(self.sticky.obj(p, o, v)) if kind != ELAPSED else b""
        if kind == ELAPSED:
            self.sticky.p, self.sticky.o = p, o
        self.tokens += tokens
        self.steps.append(Step(kind, frame, self.tokens, effects, p, o, v, self.think))

    def _comment(self) -> None:
        self.steps.append(Step(COMMENT, KEEPALIVE, self.tokens, (), self.sticky.p, self.sticky.o, None, self.think))
        self.since_keepalive = 0

    def _texts(self, chunks: list[tuple[str, int] | Marker]) -> None:
        # The one loop that runs per token of a plan: locals only.
        steps, sticky, every, think = self.steps, self.sticky, self.keepalive_every, self.think
        tokens, since = self.tokens, self.since_keepalive
        append, bare = steps.append, _bare_text_frame
        for item in chunks:
            if type(item) is Marker:
                self.tokens, self.since_keepalive = tokens, since
                self._marker(item)
                tokens = self.tokens
                continue
            text, n = item  # type: ignore[misc]
            if sticky.p == CONTENT and sticky.o == "APPEND":
                frame = bare(text)  # the common case: `{"v":"..."}`
            else:
                frame = data(sticky.obj(CONTENT, "APPEND", text))
            tokens += n
            append(Step(TEXT, frame, tokens, (), CONTENT, "APPEND", text, think))
            since += 1
            if every and since >= every:
                append(Step(COMMENT, KEEPALIVE, tokens, (), CONTENT, "APPEND", None, think))
                since = 0
        self.tokens, self.since_keepalive = tokens, since

    def _marker(self, marker: Marker) -> None:
        ref = {"id": marker.ref_id, "type": self.ref_types.get(marker.ref_id, marker.ref_type)}
        # The first reference replaces the empty list (explicit SET); later ones APPEND
        # through the sticky op — the exact shapes of the 2026-04-03 capture.
        op = "SET" if self.markers == 0 else "APPEND"
        self.markers += 1
        value = batch([("content", "APPEND", marker.text), ("references", op, [ref])])
        self._patch("response/fragments/-1", "BATCH", value, (("cite", marker.text, ref),), tokens=1)

    def _elapsed(self) -> None:
        block = self.think
        self.think = -1
        self._patch(ELAPSED_PATH, "SET", None, (("elapsed", block),), ELAPSED)

    def _pending(self) -> None:
        self._patch("response/has_pending_fragment", "SET", True, (("pending", True),))

    def _new_fragment_batch(self, fragment: dict[str, Any], tokens: int) -> None:
        value = batch([("fragments", "APPEND", [fragment]), ("has_pending_fragment", "SET", False)])
        self._patch("response", "BATCH", value, (("frags", fragment), ("pending", False)), tokens=tokens)

    def _searches(self, stage: int, pending_first: bool = True) -> None:
        plan = self.plan
        if pending_first:
            self._pending()
        self._comment()
        fragments = [
            {"id": f.id, "type": "TOOL_SEARCH", "status": "WIP", "content": None, "queries": [{"query": f.query}],
             "results": [], "stage_id": stage}
            for f in plan.searches
        ]
        if self.new_fragments:
            self._new_search_types(fragments, stage)
        value = batch([("fragments", "APPEND", fragments), ("has_pending_fragment", "SET", False)])
        self._patch("response", "BATCH", value, (("frags", *fragments), ("pending", False)))
        count = len(fragments)
        first = count - len(plan.searches)  # a FILE fragment may come before the searches
        for k in plan.search_order:
            at = first + k - count  # counted from the end, as the captures address them
            where = f"response/fragments/{at}"
            results = [r.as_json() for r in plan.searches[k].results]
            self._patch(f"{where}/results", "SET", results, (("set", at, "results", results),))
            if fragments[first + k]["type"] == "SEARCH":
                # Readable search text grows like an answer would: it must never become one.
                more = f" — {len(results)} pages found"
                whole = str(fragments[first + k]["content"]) + more
                self._patch(f"{where}/content", "APPEND", more, (("set", at, "content", whole),))
            self._patch(f"{where}/status", "SET", "FINISHED", (("set", at, "status", "FINISHED"),))

    def _new_search_types(self, fragments: list[dict[str, Any]], stage: int) -> None:
        for k, fragment in enumerate(fragments):
            if k % 2 == 0:
                fragment["type"] = "SEARCH"
                fragment["content"] = f"Searching the web for {fragment['queries'][0]['query']}"
            else:
                fragment["type"] = "TOOL_FIND"
            self.ref_types[fragment["id"]] = fragment["type"]
        # A file the search read, with text of its own (ids above every id the plan uses).
        fragments.insert(0, {"id": self.plan.next_fragment_id + 10, "type": "FILE", "status": "FINISHED",
                             "content": "notes.txt: (file text)", "file": {"name": "notes.txt"}, "stage_id": stage})

    def _opens(self, stage: int) -> None:
        plan = self.plan
        self._pending()
        self._comment()
        kind = "READ_LINK" if self.new_fragments else "TOOL_OPEN"
        fragments = [
            {"id": f.id, "type": kind, "status": "WIP", "result": f.result.as_json(),
             "reference": {"id": f.search_id, "type": self.ref_types.get(f.search_id, "TOOL_SEARCH")},
             "stage_id": stage}
            for f in plan.opens
        ]
        for fragment in fragments:
            self.ref_types[fragment["id"]] = kind
        value = batch([("fragments", "APPEND", fragments), ("has_pending_fragment", "SET", False)])
        self._patch("response", "BATCH", value, (("frags", *fragments), ("pending", False)))
        count = len(fragments)
        for k in plan.open_order:
            self._patch(f"response/fragments/{k - count}/status", "SET", "FINISHED",
                        (("set", k - count, "status", "FINISHED"),))

    def _think_after_tools(self, block: int, stage: int) -> None:
        first, rest = self._open_chunks(self.plan.think[block])
        self._pending()
        self.think = block
        self._new_fragment_batch(think_fragment(self.plan.think_ids[block], first[0], stage), first[1])
        self._texts(rest)
        self._elapsed()

    def _response(self, stage: int, after_tools: bool) -> None:
        first, rest = self._open_chunks(self.plan.answer)
        fragment = response_fragment(self.plan.response_id, first[0], stage)
        if after_tools:
            self._pending()
            self._new_fragment_batch(fragment, first[1])
        else:
            self._patch("response/fragments", "APPEND", [fragment], (("frags", fragment),), tokens=first[1])
        self._texts(rest)

    def _open_chunks(self, items: tuple[str | Marker, ...]) -> tuple[tuple[str, int], list[tuple[str, int] | Marker]]:
        chunks = _chunks(items, self.chunk)
        first = chunks[0]
        assert not isinstance(first, Marker)  # plans never start a block with a marker
        return first, chunks[1:]


# --- snapshots (continuation) ---------------------------------------------------


def fragments_at(compiled: Compiled, pos: int, elapsed: dict[int, float]) -> tuple[list[dict[str, Any]], bool]:
    """The fragment list and has_pending_fragment after steps[:pos], for a continuation snapshot."""
    fragments = copy.deepcopy(list(compiled.initial))
    pending = compiled.initial_pending
    for step in compiled.steps[:pos]:
        if step.kind == TEXT:
            fragments[-1]["content"] += step.v
            continue
        for effect in step.effects:
            pending = _apply(fragments, effect, pending)
    by_id = {f["id"]: f for f in fragments}
    for block, secs in elapsed.items():
        fragment = by_id.get(compiled.plan.think_ids[block])
        if fragment is not None:
            fragment["elapsed_secs"] = secs
    return fragments, pending


def _apply(fragments: list[dict[str, Any]], effect: tuple[Any, ...], pending: bool) -> bool:
    kind = effect[0]
    if kind == "cite":
        fragments[-1]["content"] += effect[1]
        fragments[-1]["references"].append(dict(effect[2]))
    elif kind == "frags":
        fragments.extend(copy.deepcopy(list(effect[1:])))
    elif kind == "set":
        fragments[effect[1]][effect[2]] = copy.deepcopy(effect[3])
    elif kind == "pending":
        pending = effect[1]
    return pending  # "elapsed" values are applied afterwards from the recorded times
