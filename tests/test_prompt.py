"""Prompt flattening (protocol doc §11.1): the doc's example byte for byte, merging, tools, images.

The templates live in ``ds2a.relay.prompt``.
"""

from __future__ import annotations

import re

import pytest
from conftest import shared_path

from ds2a.relay.prompt import build_prompt, render_tool_calls, render_tool_result

DOC_MESSAGES = [("system", "Be brief"), ("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?")]
DOC_PROMPT = "Be brief<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜><｜User｜>2+2?"


def test_literal_uses_the_fullwidth_bar_and_the_eighth_block() -> None:
    # Guards the expectation itself against an editor "fixing" the look-alike characters.
    assert DOC_PROMPT.count("\uff5c") == 8
    assert DOC_PROMPT.count("\u2581") == 2
    assert "|" not in DOC_PROMPT and "_" not in DOC_PROMPT


def test_doc_example_byte_exact() -> None:
    assert build_prompt(DOC_MESSAGES, "deepseek").encode() == DOC_PROMPT.encode()


def test_doc_example_matches_the_protocol_doc_text() -> None:
    doc = shared_path("docs", "deepseek-web-protocol.md").read_text(encoding="utf-8")
    section = doc[doc.index("### 11.1") : doc.index("### 11.2")]
    example = re.search(r"\"2\+2\?\" →\s*`([^`]+)`", section)
    assert example is not None
    assert build_prompt(DOC_MESSAGES, "deepseek") == example.group(1)


def test_default_template_is_deepseek() -> None:
    assert build_prompt(DOC_MESSAGES) == DOC_PROMPT


def test_consecutive_same_role_messages_merge_with_a_blank_line() -> None:
    messages = [("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d"), ("user", "e")]
    assert build_prompt(messages) == "a\n\nb<｜Assistant｜>c\n\nd<｜end▁of▁sentence｜><｜User｜>e"


def test_system_and_user_are_not_merged() -> None:
    assert build_prompt([("system", "s"), ("user", "u")]) == "s<｜User｜>u"


def test_system_in_the_middle_gets_the_user_marker() -> None:
    messages = [("user", "q"), ("assistant", "a"), ("system", "now in French"), ("user", "q2")]
    assert build_prompt(messages) == "q<｜Assistant｜>a<｜end▁of▁sentence｜><｜User｜>now in French<｜User｜>q2"


def test_developer_renders_like_system() -> None:
    assert build_prompt([("developer", "rules"), ("user", "hi")]) == "rules<｜User｜>hi"


def test_single_user_message_is_bare() -> None:
    assert build_prompt([("user", "只说中文")]) == "只说中文"


def test_assistant_first_keeps_its_markers() -> None:
    assert build_prompt([("assistant", "Hi!"), ("user", "yo")]) == "<｜Assistant｜>Hi!<｜end▁of▁sentence｜><｜User｜>yo"


def test_tool_result_is_a_user_block() -> None:
    messages = [
        ("user", "weather?"),
        ("assistant", 'Tool call (get_weather, call_1): {"city":"Paris"}'),
        ("tool", "Tool result (get_weather, call_1):\n18C"),
    ]
    assert build_prompt(messages) == (
        "weather?<｜Assistant｜>Tool call (get_weather, call_1): "
        '{"city":"Paris"}<｜end▁of▁sentence｜><｜User｜>Tool result (get_weather, call_1):\n18C'
    )


def test_markdown_images_become_links() -> None:
    messages = [("user", "see ![a cat](http://x/c.png) and ![](http://y/d.png)!")]
    assert build_prompt(messages) == "see [a cat](http://x/c.png) and [](http://y/d.png)!"


def test_image_rewrite_leaves_other_exclamation_marks_alone() -> None:
    text = "wow! ![no link] and !not [an image](u)"
    assert build_prompt([("user", text)]) == text


def test_whitespace_and_empty_texts_are_kept() -> None:
    assert build_prompt([("user", "  x  "), ("user", ""), ("assistant", "\n")]) == (
        "  x  \n\n<｜Assistant｜>\n<｜end▁of▁sentence｜>"
    )


def test_plain_template() -> None:
    assert build_prompt(DOC_MESSAGES, "plain") == "System: Be brief\n\nUser: Hi\n\nAssistant: Hello\n\nUser: 2+2?"


def test_plain_template_roles() -> None:
    messages = [("developer", "d"), ("tool", "Tool result (f, 1):\nok"), ("user", "u"), ("user", "v")]
    assert build_prompt(messages, "plain") == "System: d\n\nTool: Tool result (f, 1):\nok\n\nUser: u\n\nUser: v"


def test_plain_template_keeps_images() -> None:
    assert build_prompt([("user", "![x](u)")], "plain") == "User: ![x](u)"


def test_unknown_template() -> None:
    with pytest.raises(ValueError, match="chatml"):
        build_prompt(DOC_MESSAGES, "chatml")


def test_render_tool_calls() -> None:
    calls = [("call_1", "get_weather", '{"city":"Paris"}'), ("call_2", "get_time", "{}"), ("", "legacy", "{}")]
    assert render_tool_calls(calls) == (
        'Tool call (get_weather, call_1): {"city":"Paris"}\nTool call (get_time, call_2): {}\nTool call (legacy): {}'
    )


@pytest.mark.parametrize(
    ("name", "call_id", "expected"),
    [
        ("get_weather", "call_1", "Tool result (get_weather, call_1):\n18C"),
        (None, "call_1", "Tool result (call_1):\n18C"),
        ("get_weather", None, "Tool result (get_weather):\n18C"),
        (None, None, "Tool result:\n18C"),
    ],
)
def test_render_tool_result(name: str | None, call_id: str | None, expected: str) -> None:
    assert render_tool_result(name, call_id, "18C") == expected
