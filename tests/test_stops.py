"""Stop sequences across chunk boundaries."""

from __future__ import annotations

import itertools
import random

import pytest

from ds2a.relay.stops import StopMatcher


def run(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    hit = False
    for chunk in chunks:
        text, hit = matcher.feed(chunk)
        out.append(text)
    out.append(matcher.flush())
    return "".join(out), hit


def reference(stops: list[str], text: str) -> tuple[str, bool]:
    """What a whole-text search gives: everything before the earliest stop sequence."""
    found = [text.find(s) for s in stops if s and s in text]
    return (text[: min(found)], True) if found else (text, False)


def test_no_stops_is_a_pass_through() -> None:
    matcher = StopMatcher([])
    assert not matcher.active
    assert matcher.feed("any [text") == ("any [text", False)
    assert matcher.flush() == ""


def test_empty_stop_strings_are_ignored() -> None:
    assert not StopMatcher([""]).active


def test_stop_inside_one_chunk() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("Hello END world") == ("Hello ", True)
    assert matcher.hit
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_stop_at_the_very_start() -> None:
    assert run(["<|"], ["<|x"]) == ("", True)


@pytest.mark.parametrize("stops", [["STOP"], ["\n\n"], ["。", "STOP"], ["ST", "STOP"]])
def test_every_split_of_the_text(stops: list[str]) -> None:
    text = "abc ST STO。\n x\n\nSTOP def"
    expected = reference(stops, text)
    for cut1, cut2 in itertools.combinations(range(len(text) + 1), 2):
        assert run(stops, [text[:cut1], text[cut1:cut2], text[cut2:]]) == expected, (cut1, cut2)


def test_expected_cut_points() -> None:
    text = "abc ST STO。\n x\n\nSTOP def"
    assert run(["STOP"], [text]) == ("abc ST STO。\n x\n\n", True)
    assert run(["。", "STOP"], [text]) == ("abc ST STO", True)
    assert run(["\n\n"], list(text)) == ("abc ST STO。\n x", True)


def test_earliest_stop_wins_over_the_first_listed() -> None:
    assert run(["c", "b c"], ["a b c"]) == ("a ", True)


def test_partial_match_is_held_only_while_it_can_complete() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("hello E") == ("hello ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("x") == ("ENx", False)


def test_text_that_cannot_start_a_stop_is_not_held() -> None:
    assert StopMatcher(["END"]).feed("hello") == ("hello", False)


def test_hold_back_is_at_most_longest_minus_one() -> None:
    matcher = StopMatcher(["abcdef", "xy"])
    assert matcher.feed("zzabcde") == ("zz", False)  # 5 = len("abcdef") - 1 held
    assert matcher.feed("g") == ("abcdeg", False)


def test_overlapping_prefixes() -> None:
    assert run(["aab"], ["a", "a", "a", "b", "c"]) == ("a", True)
    assert run(["abab"], ["aba", "bab"]) == ("", True)


def test_held_text_comes_out_at_flush() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("the EN") == ("the ", False)
    assert matcher.flush() == "EN"
    assert matcher.flush() == ""


def test_unicode_stops() -> None:
    assert run(["结束"], ["你好结", "束了"]) == ("你好", True)


def test_random_texts_against_a_whole_text_search() -> None:
    rng = random.Random(1234)
    alphabet = "ab \n"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        chunks = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
        assert run(stops, chunks) == reference(stops, text), (text, stops, chunks)
