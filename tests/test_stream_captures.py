"""StreamParser replaying every real (and synthetic) completion capture in ../shared/fixtures/sse.

The expected texts, lengths, counts and ids below were read off the capture
files by hand (or with a throwaway script independent of ds2a), never taken
from the parser's own output. Tests skip cleanly when ../shared is absent.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from conftest import capture, capture_names
from ds2a.deepseek.errors import ErrorKind
from ds2a.deepseek.events import (
    AnswerDelta,
    Citation,
    Event,
    Finish,
    Ready,
    ReasoningDelta,
    SearchResults,
    StreamError,
    Title,
    Usage,
)
from ds2a.deepseek.stream import StreamParser

STREAMS = [n for n in capture_names() if n.startswith(("new-", "synthetic-"))]
SMALL = 8192  # captures up to this size are also fed one byte at a time

PLAIN = "new-plain-chat-nonthinking-20251121.txt"
THINKING = "new-thinking-plain-answer-20260405.txt"
CITATIONS = "new-reasoner-search-citations-20260403.txt"
FILTER = "new-content-filter-20260405.txt"
INCOMPLETE = "new-completion-ends-incomplete-20260405.txt"
CONTINUE = "new-continue-resume-20260405.txt"
FLASH = "new-v4-flash-completion-20260429.txt"
G1 = "synthetic-old-format-reasoner-2025.txt"
HINT_RATE = "synthetic-hint-rate-limit.txt"
HINT_LONG = "synthetic-hint-input-too-long.txt"

PLAIN_ANSWER = (
    "你好！😊 看起来你可能是想测试一下我的反应，或者不小心发送了“hello6”这个信息？\n\n"
    "无论如何，我都很高兴和你打招呼！我是DeepSeek，一个热心的AI助手，随时准备帮助你解答问题、聊天或者协助你完成各种任务。\n\n"
    "有什么我可以帮你的吗？无论是学习、工作、生活上的问题，还是只是想聊聊天，我都很乐意与你交流！✨"
)
THINKING_REASONING = "我们只需要输出markdown格式的示例，展示四五个类型。比如标题、列表、代码块、表格、引用等。直接输出即可。"
THINKING_ANSWER = (
    "```markdown\n"
    "# 一级标题\n"
    "## 二级标题\n"
    "### 三级标题\n"
    "\n"
    "- 无序列表项 1\n"
    "- 无序列表项 2\n"
    "  - 嵌套列表项\n"
    "\n"
    "1. 有序列表项一\n"
    "2. 有序列表项二\n"
    "\n"
    "```python\n"
    "# 代码块示例\n"
    'print("Hello, Markdown!")\n'
    "```\n"
    "\n"
    "| 姓名 | 年龄 | 城市     |\n"
    "|------|------|----------|\n"
    "| 张三 | 25   | 北京     |\n"
    "| 李四 | 30   | 上海     |\n"
    "\n"
    "> 这是一段引用文字。\n"
    "> 可以跨多行。\n"
    "\n"
    "**粗体文本** 和 *斜体文本*\n"
    "```"
)
TEMPLATE = "你好，这个问题我暂时无法回答，让我们换个话题再聊聊吧。"


# --------------------------------------------------------------------------- feeding helpers


def replay(
    pieces: list[bytes], resume_from: StreamParser | None = None, *, keep_text: bool = False
) -> tuple[list[Event], StreamParser]:
    """Events of a capture fed in ``pieces``; ``keep_text`` keeps the fragment texts for
    ``fragment_texts`` (the default parser forgets relayed text)."""
    parser = StreamParser(resume_from=resume_from, keep_text=keep_text)
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.close(), parser


def parse(
    name: str, resume_from: StreamParser | None = None, *, keep_text: bool = False
) -> tuple[list[Event], StreamParser]:
    return replay([capture(name)], resume_from, keep_text=keep_text)


def random_pieces(body: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(body):
        size = rng.choice((1, 2, 3, 7, 64, 500, 4096, 16384))
        pieces.append(body[i : i + size])
        i += size
    return pieces


def cuts_inside_characters(body: bytes, seed: int) -> list[bytes]:
    """Cut only between the bytes of multi-byte UTF-8 characters."""
    inner = [i for i, b in enumerate(body) if 0x80 <= b <= 0xBF]
    if not inner:
        return [body]
    rng = random.Random(seed)
    cuts = sorted(set(rng.sample(inner, min(len(inner), 2000))))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:])]


def frame_pieces(body: bytes) -> list[bytes]:
    blocks = body.split(b"\n\n")
    return [b + b"\n\n" for b in blocks[:-1]] + ([blocks[-1]] if blocks[-1] else [])


def reasoning(events: list[Event]) -> str:
    return "".join(e.text for e in events if type(e) is ReasoningDelta)


def answer(events: list[Event]) -> str:
    return "".join(e.text for e in events if type(e) is AnswerDelta)


def fragment_texts(parser: StreamParser, kind: str) -> str:
    fragments = parser.snapshot()["response"]["fragments"]
    return "".join(f["content"] for f in fragments if f["type"] == kind)


def first_snapshot(name: str) -> dict[str, Any]:
    """The opening ``{"v":{"response":...}}`` frame, decoded with plain json."""
    for line in capture(name).decode().split("\n"):
        if line.startswith('data: {"v":{"response"'):
            return json.loads(line[6:])["v"]["response"]
    raise AssertionError("no snapshot frame")


def terminals(events: list[Event]) -> list[Event]:
    return [e for e in events if type(e) in (Finish, StreamError)]


# --------------------------------------------------------------------------- every capture


def test_captures_are_present() -> None:
    capture(PLAIN)  # skips without ../shared
    assert set(STREAMS) >= {PLAIN, THINKING, CITATIONS, FILTER, INCOMPLETE, CONTINUE, FLASH, G1, HINT_RATE, HINT_LONG}


@pytest.mark.parametrize("name", STREAMS)
def test_same_events_whatever_the_split(name: str) -> None:
    body = capture(name)
    whole, _ = replay([body])
    assert replay(frame_pieces(body))[0] == whole
    for seed in (1, 2, 3):
        assert replay(random_pieces(body, seed))[0] == whole, f"seed {seed}"
    assert replay(cuts_inside_characters(body, 4))[0] == whole
    if len(body) <= SMALL:
        assert replay([body[i : i + 1] for i in range(len(body))])[0] == whole


@pytest.mark.parametrize("name", STREAMS)
def test_exactly_one_terminal_and_no_text_after_it(name: str) -> None:
    events, parser = parse(name)
    (terminal,) = terminals(events)
    assert parser.finished and parser.terminal is terminal
    after = events[events.index(terminal) + 1 :]
    assert all(type(e) is Title for e in after)


@pytest.mark.parametrize("name", STREAMS)
def test_status_words_never_leak_into_text(name: str) -> None:
    events, _ = parse(name)
    text = reasoning(events) + answer(events)
    for word in ("FINISHED", "INCOMPLETE", "CONTENT_FILTER"):
        assert word not in text


@pytest.mark.parametrize("name", [n for n in STREAMS if n.startswith("new-") and n != FILTER])
def test_deltas_rebuild_the_final_fragments(name: str) -> None:
    events, parser = parse(name, keep_text=True)
    assert reasoning(events) == fragment_texts(parser, "THINK")
    assert answer(events) == fragment_texts(parser, "RESPONSE")


# --------------------------------------------------------------------------- small captures, literal text


def test_plain_chat() -> None:
    events, parser = parse(PLAIN)
    assert events[0] == Ready(1, 2, None)
    assert reasoning(events) == ""
    assert answer(events) == PLAIN_ANSWER
    assert events[-3:] == [Usage(115), Finish("stop"), Title("User Greets AI Assistant for Testing")]
    assert parser.token_usage == 115


def test_thinking_plain_answer() -> None:
    events, parser = parse(THINKING)
    assert events[0] == Ready(1, 2, "default")
    assert reasoning(events) == THINKING_REASONING
    assert answer(events) == THINKING_ANSWER
    assert [e for e in events if type(e) is ReasoningDelta][:2] == [ReasoningDelta("我们"), ReasoningDelta("只需要")]
    assert events[-3:] == [Usage(190), Finish("stop"), Title("Markdown格式示例输出")]
    # whitespace-only chunks survive as their own deltas
    assert sum(1 for e in events if type(e) is AnswerDelta and e.text == "    ") == 3
    assert sum(1 for e in events if type(e) is AnswerDelta and e.text == "  ") == 2


def test_old_format_g1() -> None:
    events, parser = parse(G1)
    assert reasoning(events) == "Okay, the user says hi."
    assert answer(events) == "Hello! How can I help?"
    assert events[0] == Ready(4, 5, None)
    assert events[-2:] == [Usage(14), Finish("stop")]


@pytest.mark.parametrize(
    ("name", "kind", "message", "reason"),
    [
        (HINT_RATE, ErrorKind.RATE_LIMITED, "Messages too frequent. Try again later.", "rate_limit_reached"),
        (HINT_LONG, ErrorKind.INPUT_TOO_LONG, "Content is too long. Please shorten it and try again.", "input_exceeds_limit"),
    ],
)
def test_hints(name: str, kind: ErrorKind, message: str, reason: str) -> None:
    events, _ = parse(name)
    assert events == [Ready(1, 2, "default"), StreamError(kind, message, reason, True)]


# --------------------------------------------------------------------------- big captures


def test_citations_capture() -> None:
    events, parser = parse(CITATIONS)
    text = answer(events)
    assert len(reasoning(events)) == 194
    assert reasoning(events).startswith("用户想知道广州的天气情况。今天是2026年4月3日。")
    assert reasoning(events).endswith("回答中会注明信息来源。")
    assert len(text) == 585
    assert text.startswith(
        "广州今天（4月3日）是雷阵雨转中雨的天气，气温在**20℃ 到 27℃**之间[reference:0][reference:1][reference:2]。"
        "风力为南风，3-4级，湿度较高[reference:3][reference:4]"
    )
    assert text.endswith("体弱怕凉的朋友可以适当加一件薄外套[reference:13]。")
    citations = [e for e in events if type(e) is Citation]
    assert citations[0] == Citation(
        "reference", 0, "https://www.weather.com.cn/weather/101280101.shtml", "广州天气预报,广州7天天气预报,广州15天天气预报,广州天气查询"
    )
    # marker 1 is the TOOL_SEARCH fragment id 7: its first result
    assert citations[1] == Citation("reference", 1, "https://www.nmc.cn/publish/forecast/AGD/guangzhou.html", "广州-天气预报")
    # six searches (six result lists) and sixteen opened pages
    assert sum(1 for e in events if type(e) is SearchResults) == 22
    # the capture stops after update_session: no close, still a normal end
    assert terminals(events) == [Finish("stop")]
    assert events[-2:] == [Usage(279), Finish("stop")]


@pytest.mark.parametrize(("name", "markers"), [(CITATIONS, 14), (FILTER, 29)])
def test_one_citation_per_reference_marker_right_after_it(name: str, markers: int) -> None:
    events, _ = parse(name)
    found = re.findall(r"\[reference:(\d+)\]", answer(events))
    assert len(found) == markers
    citations = [(i, e) for i, e in enumerate(events) if type(e) is Citation]
    assert len(citations) == markers
    assert [e.index for _, e in citations] == list(range(markers)) == [int(n) for n in found]
    for i, citation in citations:
        assert citation.marker == "reference"
        assert citation.url and citation.url.startswith("http") and citation.title
        assert events[i - 1] == AnswerDelta(f"[reference:{citation.index}]")


def test_content_filter_capture() -> None:
    events, parser = parse(FILTER)
    assert len(reasoning(events)) == 350
    assert reasoning(events).startswith("用户是一位历史老师，需要寻找文革期间")
    assert reasoning(events).endswith("回答将强调这些事例的细节性和复杂性，并避免单一评价立场。")
    assert len(answer(events)) == 2278
    assert answer(events).startswith("历史老师您好。要在历史教材的概括性叙述之外")
    assert answer(events).endswith("帮助学生理解那段历史的复杂肌理。")
    assert "本回答由 AI 生成" not in answer(events)  # the TIP fragment
    assert TEMPLATE not in answer(events)
    assert events[-2:] == [Usage(1269), Finish("content_filter", TEMPLATE)]
    assert parser.snapshot()["response"]["fragments"] == [{"id": 38, "type": "TEMPLATE_RESPONSE", "content": TEMPLATE}]
    first = next(e for e in events if type(e) is Citation)
    assert first == Citation("reference", 0, "http://jhwsw.com/zzdzb/ShowArticle.asp?ArticleID=838", "“文革”期间的“反复旧妖风”（唐张新）")


def test_v4_flash_capture() -> None:
    events, parser = parse(FLASH)
    assert events[0] == Ready(1, 2, "default")
    assert len(reasoning(events)) == 932
    assert reasoning(events).startswith("我们被要求写一篇1200字的中文说明，比较SSE与WebSocket")
    assert reasoning(events).endswith("\n\n我们写出完整文章。")
    assert len(answer(events)) == 3341
    assert answer(events).startswith("## 比较SSE与WebSocket在AI推理流式输出中的关键特性与分层架构建议\n\n")
    assert answer(events).endswith("可以构建高可靠的AI推理服务。")
    assert "本回答由 AI 生成" not in answer(events)
    assert events[-3:] == [Usage(2024), Finish("stop"), Title("SSE与WebSocket比较与架构建议")]


def test_incomplete_capture() -> None:
    events, parser = parse(INCOMPLETE)
    text = reasoning(events)
    assert len(text) == 50097
    assert text.startswith('我们被问到："在一个类似2022×2022的花园的每个方格中，最初都有一个高度为0的树')
    assert text.endswith("为4T，所以如果伐木工想要压制m个点，每个需要约9T/P次削减，总需 m*(9T")
    assert answer(events) == ""
    assert events[-3:] == [Usage(2413), Finish("incomplete"), Title("园丁伐木工游戏最大雄伟树数量")]
    assert parser.token_usage == 2413


def test_continue_capture_resumes_with_only_the_suffix() -> None:
    first_events, first = parse(INCOMPLETE, keep_text=True)
    events, parser = parse(CONTINUE, resume_from=first)
    before, after = reasoning(first_events), reasoning(events)
    snapshot_think = first_snapshot(CONTINUE)["fragments"][0]["content"]
    # the continuation re-sent two characters the first stream never delivered
    assert len(snapshot_think) == 50099 and snapshot_think.startswith(before)
    assert snapshot_think[len(before) :] == "/P"
    assert after.startswith("/P) = 4T => m=4P/9。")
    final_think = fragment_texts(parser, "THINK")
    assert before + after == final_think  # nothing duplicated, nothing lost
    assert len(final_think) == 50782
    assert final_think.endswith("因此，最终答案：\\boxed{2271380}。")
    assert len(answer(events)) == 242
    assert answer(events) == fragment_texts(parser, "RESPONSE")
    assert answer(events).startswith("园丁可以保证至少 $\\frac{5}{9}$ 的方格中的树成为雄伟树")
    assert answer(events).endswith("\n\n\\boxed{2271380}")
    assert events[0] == Ready(1, 2, "default")
    assert [e for e in events if type(e) is Usage] == [Usage(2551)]  # 2413 was already reported
    assert terminals(events) == [Finish("stop")]


def test_continue_capture_alone_emits_the_whole_snapshot() -> None:
    events, _ = parse(CONTINUE)
    assert len(reasoning(events)) == 50782
    assert [e for e in events if type(e) is Usage] == [Usage(2413), Usage(2551)]
