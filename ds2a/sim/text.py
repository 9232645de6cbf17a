"""Deterministic generated answers: a pure function of (prompt, flags, config).

A benchmark or test calls ``expected(prompt, thinking, search, config)`` and gets the
exact reasoning text, answer text (with its ``[reference:N]`` markers) and citations
the simulator streams for that request, so it can check that every byte arrived, in
order. The vocabulary mixes ASCII, CJK, 4-byte emoji (one with a skin-tone modifier,
one ZWJ family), JSON-escaped characters and whitespace-only tokens on purpose:
those are what a relay typically breaks.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from typing import Protocol

from ds2a.sim import directives, tools

VOCAB: tuple[str, ...] = (
    " the", " stream", " of", " tokens", " gateway", " upstream", " frame", " and", " is",
    ",", ".", ":", " 42", " 3.14",
    "你好", "世界", "数据", "流式", "输出", "。", "，", "模型", "测试", "、",
    "🙂", "🚀", "👍🏽", "👨\u200d👩\u200d👧", "∑", "é", "ß", "Ω",
    " ", "\n", "\n\n", "  ", "\t", "\r\n",
    '"', "\\", "'", "<", ">", "&", "**", "`", "```", " |", "-", "{", "}", "/", "\u00a0",
)
RESULTS_PER_SEARCH = 3


class GenSettings(Protocol):
    """The config fields that shape the text (SimConfig has them all)."""

    thinking_tokens: int
    answer_tokens: int
    search_fragments: int
    open_fragments: int
    cite_every: int


@dataclass(frozen=True, slots=True)
class SearchResult:
    url: str
    title: str
    snippet: str
    site_name: str
    site_icon: str
    published_at: float

    def as_json(self) -> dict[str, object]:
        # Key order of the 2026-04-03 capture.
        return {
            "url": self.url,
            "title": self.title,
            "snippet": self.snippet,
            "cite_index": None,
            "published_at": self.published_at,
            "site_icon": self.site_icon,
            "site_name": self.site_name,
            "query_indexes": [0],
        }


@dataclass(frozen=True, slots=True)
class SearchFragment:
    id: int
    query: str
    results: tuple[SearchResult, ...]


@dataclass(frozen=True, slots=True)
class OpenFragment:
    id: int
    result: SearchResult
    search_id: int


@dataclass(frozen=True, slots=True)
class Marker:
    """One `[reference:N]` in the answer; `ref_id` names a TOOL_OPEN or TOOL_SEARCH fragment."""

    index: int
    ref_id: int
    ref_type: str

    @property
    def text(self) -> str:
        return f"[reference:{self.index}]"


@dataclass(frozen=True, slots=True)
class Citation:
    index: int  # N of the marker
    fragment_id: int
    fragment_type: str  # TOOL_OPEN or TOOL_SEARCH
    url: str  # the opened page, or the search's first result
    title: str
    results: tuple[SearchResult, ...]  # every result the fragment carries


@dataclass(frozen=True, slots=True)
class Expected:
    reasoning: str  # all THINK fragments, concatenated
    answer: str  # the RESPONSE fragment, markers included
    citations: tuple[Citation, ...]
    usage: int  # accumulated_token_usage at the normal end


@dataclass(frozen=True, slots=True)
class Sizes:
    thinking_tokens: int
    answer_tokens: int
    search_fragments: int
    open_fragments: int
    cite_every: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one answer consists of, before it is cut into frames."""

    thinking: bool
    search: bool
    think: tuple[tuple[str, ...], ...]  # THINK blocks (3 when searching, else 1; none without thinking)
    think_ids: tuple[int, ...]
    searches: tuple[SearchFragment, ...]
    search_order: tuple[int, ...]  # order in which search results arrive
    opens: tuple[OpenFragment, ...]
    open_order: tuple[int, ...]
    answer: tuple[str | Marker, ...]
    response_id: int
    next_fragment_id: int  # for TIP / TEMPLATE_RESPONSE
    title: str

    @property
    def usage(self) -> int:
        return sum(len(block) for block in self.think) + len(self.answer)

    def expected(self) -> Expected:
        reasoning = "".join("".join(block) for block in self.think)
        answer = "".join(item.text if isinstance(item, Marker) else item for item in self.answer)
        return Expected(reasoning, answer, self.citations(), self.usage)

    def citations(self) -> tuple[Citation, ...]:
        opens = {f.id: f for f in self.opens}
        searches = {f.id: f for f in self.searches}
        found: list[Citation] = []
        for item in self.answer:
            if not isinstance(item, Marker):
                continue
            if item.ref_type == "TOOL_OPEN":
                result = opens[item.ref_id].result
                found.append(Citation(item.index, item.ref_id, item.ref_type, result.url, result.title, (result,)))
            else:
                results = searches[item.ref_id].results
                found.append(
                    Citation(item.index, item.ref_id, item.ref_type, results[0].url, results[0].title, results)
                )
        return tuple(found)


def sizes_for(prompt: str, config: GenSettings) -> Sizes:
    """Config sizes, overridden by `[[sim:tokens=N]]` / `[[sim:thinking_tokens=N]]`."""
    found = directives.parse(prompt)
    return Sizes(
        thinking_tokens=found.integer("thinking_tokens", config.thinking_tokens),
        answer_tokens=found.integer("tokens", config.answer_tokens),
        search_fragments=config.search_fragments,
        open_fragments=config.open_fragments,
        cite_every=config.cite_every,
    )


def expected(prompt: str, thinking: bool, search: bool, config: GenSettings) -> Expected:
    """What the simulator streams for this request (before any fault cuts it)."""
    return plan_for(prompt, thinking, search, sizes_for(prompt, config)).expected()


def digest(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def answer_prefix(prompt: str) -> str:
    """First answer token: tells prompts apart at a glance (digest and length in characters)."""
    return f"[{digest(prompt)[:8]}:{len(prompt)}] "


@functools.lru_cache(maxsize=256)
def plan_for(prompt: str, thinking: bool, search: bool, sizes: Sizes) -> Plan:
    # One benchmark sends the same prompt thousands of times: build each plan once.
    seed = hashlib.sha256(f"{digest(prompt)}|{int(thinking)}|{int(search)}".encode()).digest()
    rng = random.Random(int.from_bytes(seed[:16], "big"))
    topic = _topic(prompt)
    next_id = 2
    think_blocks: list[tuple[str, ...]] = []
    think_ids: list[int] = []
    searches: list[SearchFragment] = []
    opens: list[OpenFragment] = []

    n_blocks = (3 if search else 1) if thinking else 0
    for block, count in enumerate(_split(sizes.thinking_tokens, n_blocks)):
        think_ids.append(next_id)
        next_id += 1
        think_blocks.append(_tokens(rng, count))
        if search and block == 0:
            searches, next_id = _searches(rng, topic, next_id, max(1, sizes.search_fragments))
        if search and block == 1 and sizes.open_fragments:
            opens, next_id = _opens(rng, searches, next_id, sizes.open_fragments)
    if search and not thinking:
        searches, next_id = _searches(rng, topic, next_id, max(1, sizes.search_fragments))

    response_id = next_id
    answer = _answer(rng, prompt, sizes, searches, opens) if search else (
        answer_prefix(prompt), *_tokens(rng, max(1, sizes.answer_tokens) - 1)
    )
    script = tools.script_for(prompt, thinking)  # a prompt in ds2a's tool/JSON convention
    if script is not None:
        answer = script.answer_tokens()
        if think_blocks and script.reasoning:
            think_blocks[0] += script.reasoning_tokens()
    return Plan(
        thinking=thinking,
        search=search,
        think=tuple(think_blocks),
        think_ids=tuple(think_ids),
        searches=tuple(searches),
        search_order=_shuffled(rng, len(searches)),
        opens=tuple(opens),
        open_order=_shuffled(rng, len(opens)),
        answer=answer,
        response_id=response_id,
        next_fragment_id=response_id + 1,
        title=f"Sim {topic[:24]}".rstrip(),
    )


def _topic(prompt: str) -> str:
    # Readable text derived from the prompt for queries and titles; lone surrogates from
    # a JSON body cannot be encoded, so they are replaced here.
    clean = directives.strip(prompt).encode("utf-8", "replace").decode("utf-8")
    words = " ".join(clean.split())
    return words[:32] or digest(prompt)[:8]


def _split(total: int, parts: int) -> list[int]:
    """Share `total` tokens over `parts` THINK blocks, at least one each (a block opens with text)."""
    if parts == 0:
        return []
    base, extra = divmod(max(total, parts), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _tokens(rng: random.Random, count: int) -> tuple[str, ...]:
    return tuple(rng.choices(VOCAB, k=count))


def _shuffled(rng: random.Random, n: int) -> tuple[int, ...]:
    order = list(range(n))
    rng.shuffle(order)
    return tuple(order)


def _result(rng: random.Random, topic: str, key: str, i: int) -> SearchResult:
    site = rng.choice((("Sim News", "news.example.com"), ("模拟网", "sim.example.cn"), ("Example Wiki", "wiki.example.org")))
    return SearchResult(
        url=f"https://{site[1]}/{key}/{i}?q=a&lang=zh",
        title=f"{topic} — 结果 {i}",
        snippet=f"Snippet {i} about “{topic}”: 数据流 🚀 \"quoted\".",
        site_name=site[0],
        site_icon=f"https://cdn.example.com/site-icons/{site[1]}",
        published_at=float(1_775_000_000 + 86_400 * (i % 7)),
    )


def _searches(rng: random.Random, topic: str, next_id: int, count: int) -> tuple[list[SearchFragment], int]:
    found = []
    for i in range(count):
        results = tuple(_result(rng, topic, f"s{next_id}", j) for j in range(RESULTS_PER_SEARCH))
        found.append(SearchFragment(next_id, f"{topic} {i + 1}", results))
        next_id += 1
    return found, next_id


def _opens(
    rng: random.Random, searches: list[SearchFragment], next_id: int, count: int
) -> tuple[list[OpenFragment], int]:
    found = []
    for i in range(count):
        source = searches[i % len(searches)]
        found.append(OpenFragment(next_id, source.results[i % RESULTS_PER_SEARCH], source.id))
        next_id += 1
    return found, next_id


def _answer(
    rng: random.Random, prompt: str, sizes: Sizes, searches: list[SearchFragment], opens: list[OpenFragment]
) -> tuple[str | Marker, ...]:
    """Answer tokens with one or two markers after every `cite_every` tokens (never first)."""
    sources = [(f.id, "TOOL_OPEN") for f in opens] + [(f.id, "TOOL_SEARCH") for f in searches]
    items: list[str | Marker] = [answer_prefix(prompt)]
    markers = 0
    total = max(1, sizes.answer_tokens)
    for n, token in enumerate(_tokens(rng, total - 1), start=2):
        items.append(token)
        # Never after the last token: every capture has text between a marker and the end.
        if sizes.cite_every and n % sizes.cite_every == 0 and n < total:
            for _ in range(rng.choice((1, 1, 2))):
                ref_id, ref_type = rng.choice(sources)
                items.append(Marker(markers, ref_id, ref_type))
                markers += 1
    return tuple(items)
