"""Issue 8, the dialect-neutral body loader as a pure unit: JSON object, valid Unicode."""

from __future__ import annotations

import pytest

from ds2a.api.body import load_json_object
from ds2a.api.errors import ApiError


def refusal(body: bytes, **kwargs: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        load_json_object(body, **kwargs)  # type: ignore[arg-type]
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    "body, param",
    [
        (b'{"messages": [{"content": "\\ud800"}]}', "messages[0].content"),
        (b'{"messages": [{"content": "ok"}, {"content": ["x", "a\\udfffb"]}]}', "messages[1].content[1]"),
        (b'{"a": "\xed\xa0\x80"}', "a"),  # raw CESU-8 bytes: json.loads decodes them to a surrogate
        (b'{"meta": {"\\ud800": 1}}', "meta"),  # a key: the object holding it is named
        (b'{"\\ud800": 1}', None),
        (b'{"first": "\\ud800", "second": "\\ud801"}', "first"),  # the first in the document
    ],
)
def test_lone_surrogates_are_refused_naming_the_path(body: bytes, param: str | None) -> None:
    error = refusal(body)
    assert error.param == param and error.code == "invalid_unicode"


def test_paths_can_be_spelt_with_dots() -> None:
    assert refusal(b'{"messages": [{"content": "\\ud800"}]}', indexes="dots").param == "messages.0.content"


def test_valid_text_passes_untouched() -> None:
    body = '{"t": "caf\\u00e9 \\ud83d\\ude00 \u4e2d\\u0000", "n": [1, 2.5, null, true]}'.encode()
    assert load_json_object(body) == {"t": "caf\u00e9 \U0001f600 \u4e2d\u0000", "n": [1, 2.5, None, True]}


@pytest.mark.parametrize(
    "body, code",
    [(b"", "invalid_json"), (b"{", "invalid_json"), (b"[]", "invalid_type"), (b'{"a": NaN}', "invalid_json"),
     (b"\xff\xfe{}", "invalid_json"), (b"[" * 100_000, "invalid_json")],
)
def test_the_json_errors_of_the_old_loader_are_kept(body: bytes, code: str) -> None:
    assert refusal(body).code == code
