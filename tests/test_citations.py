"""Citation markers: rewriting, hold-back across chunks, late sources, annotations."""

from __future__ import annotations

import itertools

import pytest
from openai_schema import validate as schema_validate

from ds2a.relay.citations import MAX_MARKER, CitationRewriter

A = ("https://a.example/x", "Page A")
B = ("https://b.example/y", "Page B")

# G3 answer: each marker's source arrives right after the marker's text.
TEXT = "Paris[reference:0] is big[reference:1]. Again[reference:2], code a[1] [x] [ref].[reference:3]"
SOURCES = {0: A, 1: B, 2: A}  # marker 3 never gets a source

EXPECTED = {
    "links": (
        "Paris[1](https://a.example/x) is big[2](https://b.example/y). "
        "Again[1](https://a.example/x), code a[1] [x] [ref].[3]"
    ),
    "numbers": "Paris[1] is big[2]. Again[1], code a[1] [x] [ref].[3]",
    "remove": "Paris is big. Again, code a[1] [x] [ref].",
}


def marker_ends(text: str) -> dict[int, int]:
    """Marker index -> position just after its closing bracket (test-side, by plain search)."""
    ends = {}
    for n in range(4):
        marker = f"[reference:{n}]"
        ends[n] = text.index(marker) + len(marker)
    return ends


def run(
    mode: str, chunks: list[str], text: str = TEXT, sources: dict[int, tuple[str, str]] = SOURCES
) -> tuple[str, CitationRewriter]:
    """Feed chunks, delivering each source right after the chunk that completes its marker."""
    rewriter = CitationRewriter(mode)
    ends = marker_ends(text)
    out = []
    consumed = 0
    delivered: set[int] = set()
    for chunk in chunks:
        out.append(rewriter.feed(chunk))
        consumed += len(chunk)
        for n, end in ends.items():
            if end <= consumed and n not in delivered and n in sources:
                delivered.add(n)
                rewriter.cite("reference", n, *sources[n])
    out.append(rewriter.flush())
    return "".join(out), rewriter


def splits(text: str, parts: int) -> list[list[str]]:
    result = []
    for cuts in itertools.combinations(range(1, len(text)), parts - 1):
        bounds = (0, *cuts, len(text))
        result.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return result


@pytest.mark.parametrize("mode", ["links", "numbers", "remove"])
def test_whole_text(mode: str) -> None:
    assert run(mode, [TEXT])[0] == EXPECTED[mode]


@pytest.mark.parametrize("mode", ["links", "numbers", "remove"])
def test_every_single_split_gives_the_same_output(mode: str) -> None:
    for chunks in splits(TEXT, 2):
        assert run(mode, chunks)[0] == EXPECTED[mode], chunks


@pytest.mark.parametrize("mode", ["links", "numbers"])
def test_every_double_split_gives_the_same_output(mode: str) -> None:
    for chunks in splits(TEXT, 3):
        assert run(mode, chunks)[0] == EXPECTED[mode], chunks


@pytest.mark.parametrize("mode", ["links", "numbers", "remove"])
def test_character_by_character(mode: str) -> None:
    assert run(mode, list(TEXT))[0] == EXPECTED[mode]


def test_annotations_point_into_the_rewritten_content() -> None:
    for chunks in ([TEXT], list(TEXT), [TEXT[:11], TEXT[11:37], TEXT[37:64], TEXT[64:]]):
        content, rewriter = run("links", chunks)
        spans = [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in rewriter.annotations]
        assert spans == [(5, 29), (36, 60), (67, 91)]  # 24 characters per link
        assert [content[s:e] for s, e in spans] == [
            "[1](https://a.example/x)",
            "[2](https://b.example/y)",
            "[1](https://a.example/x)",
        ]
        assert [(a["url_citation"]["url"], a["url_citation"]["title"]) for a in rewriter.annotations] == [A, B, A]


def test_annotations_in_numbers_and_remove_modes() -> None:
    _, numbers = run("numbers", [TEXT])
    assert [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in numbers.annotations] == [
        (5, 8),
        (15, 18),
        (25, 28),
    ]
    _, removed = run("remove", [TEXT])
    assert [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in removed.annotations] == [
        (5, 5),
        (12, 12),
        (19, 19),
    ]


def test_annotations_match_openai_message_schema() -> None:
    content, rewriter = run("links", [TEXT])
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": rewriter.annotations}
    schema_validate(message, "ChatCompletionResponseMessage")


def test_source_known_before_the_marker_is_used_at_once() -> None:
    rewriter = CitationRewriter("links")
    rewriter.cite("citation", 1, *A)
    assert rewriter.feed("See [citation:1] and more") == "See [1](https://a.example/x) and more"
    assert rewriter.flush() == ""


def test_marker_waits_for_its_source_until_the_next_feed() -> None:
    rewriter = CitationRewriter("links")
    assert rewriter.feed("Fact[reference:0]") == "Fact"
    rewriter.cite("reference", 0, *A)
    assert rewriter.feed(" next") == "[1](https://a.example/x) next"


def test_text_after_an_unresolved_marker_waits_with_it() -> None:
    rewriter = CitationRewriter("numbers")
    assert rewriter.feed("a[reference:0] b") == "a"
    assert rewriter.feed(" c") == "[1] b c"


def test_source_that_never_arrives_becomes_a_plain_number() -> None:
    rewriter = CitationRewriter("links")
    assert rewriter.feed("x[reference:5]") == "x"
    assert rewriter.feed("y") == "[1]y"
    rewriter.cite("reference", 5, *A)  # too late for that marker
    assert rewriter.flush() == ""
    assert rewriter.annotations == []


def test_unresolved_marker_at_the_end_is_flushed_as_a_number() -> None:
    rewriter = CitationRewriter("links")
    assert rewriter.feed("end[citation:2]") == "end"
    assert rewriter.flush() == "[1]"


def test_remove_mode_removes_unresolved_markers_too() -> None:
    rewriter = CitationRewriter("remove")
    assert rewriter.feed("a[reference:0]b") == "a"
    assert rewriter.flush() == "b"


def test_same_url_same_number_across_marker_kinds_and_indexes() -> None:
    rewriter = CitationRewriter("numbers")
    rewriter.cite("reference", 4, *B)
    rewriter.cite("reference", 9, *A)
    rewriter.cite("citation", 2, *B)
    assert rewriter.feed("[reference:9][reference:4][citation:2][reference:9]") == "[1][2][2][1]"


def test_numbers_follow_first_appearance_not_upstream_index() -> None:
    rewriter = CitationRewriter("numbers")
    for n, url in ((0, "https://z/0"), (7, "https://z/7"), (3, "https://z/3")):
        rewriter.cite("reference", n, url, "")
    assert rewriter.feed("a[reference:7] b[reference:3] c[reference:0]") == "a[1] b[2] c[3]"


def test_source_without_url_is_a_plain_number() -> None:
    rewriter = CitationRewriter("links")
    rewriter.cite("reference", 0, None, "search results")
    rewriter.cite("reference", 1, "", None)
    assert rewriter.feed("a[reference:0]b[reference:1]") == "a[1]b[2]"
    assert rewriter.annotations == []


def test_source_without_url_releases_a_held_marker_at_once() -> None:
    rewriter = CitationRewriter("links")
    assert rewriter.feed("a[reference:0]") == "a"
    rewriter.cite("reference", 0, None, None)
    assert rewriter.feed("") == "[1]"


def test_missing_title_becomes_empty_string() -> None:
    rewriter = CitationRewriter("links")
    rewriter.cite("reference", 0, "https://t/", None)
    rewriter.feed("[reference:0]")
    assert rewriter.annotations[0]["url_citation"]["title"] == ""


def test_url_is_made_safe_for_markdown() -> None:
    rewriter = CitationRewriter("links")
    rewriter.cite("reference", 0, "https://w.example/wiki/Foo_(bar) baz", "")
    assert rewriter.feed("x[reference:0]") == "x[1](https://w.example/wiki/Foo_%28bar%29%20baz)"
    assert rewriter.annotations[0]["url_citation"]["url"] == "https://w.example/wiki/Foo_(bar) baz"


@pytest.mark.parametrize(
    "prefix",
    ["[", "[r", "[reference", "[reference:", "[reference:12", "[reference:123456", "[c", "[citation:", "[citation:9"],
)
def test_incomplete_marker_is_held(prefix: str) -> None:
    rewriter = CitationRewriter("numbers")
    assert rewriter.feed("ok " + prefix) == "ok "
    assert rewriter.flush() == prefix


@pytest.mark.parametrize(
    "text",
    [
        "[x",
        "[referenc3",
        "[reference:1a",
        "[reference:-1",
        "[reference:1234567",
        "[citation: 1",
        "[REFERENCE:1",
        "[reference:١",
    ],
)
def test_text_that_cannot_become_a_marker_is_not_held(text: str) -> None:
    rewriter = CitationRewriter("numbers")
    assert rewriter.feed(text) == text
    assert rewriter.flush() == ""


def test_seven_digit_marker_is_left_alone() -> None:
    rewriter = CitationRewriter("numbers")
    assert rewriter.feed("[reference:1234567]") == "[reference:1234567]"


def test_hold_back_never_exceeds_a_marker() -> None:
    rewriter = CitationRewriter("numbers")
    fed = emitted = ""
    for ch in "[reference:123456":
        fed += ch
        emitted += rewriter.feed(ch)
        assert emitted == "" and len(fed) <= 17
    # One more character and it can no longer be a marker: all of it goes out at once.
    assert rewriter.feed("x") == "[reference:123456x"
    assert MAX_MARKER == 18


def test_held_text_is_bounded_while_streaming_brackets() -> None:
    rewriter = CitationRewriter("numbers")
    fed = ""
    emitted = ""
    for ch in "[[[[reference:[reference:00[citation:[[":
        fed += ch
        emitted += rewriter.feed(ch)
        assert len(fed) - len(emitted) < MAX_MARKER
    assert emitted + rewriter.flush() == fed


def test_plain_text_passes_through_untouched() -> None:
    rewriter = CitationRewriter("links")
    text = "no markers here, 中文也可以。\n"
    assert rewriter.feed(text) == text
    assert rewriter.flush() == ""


def test_unknown_mode() -> None:
    with pytest.raises(ValueError):
        CitationRewriter("footnotes")
