"""Text normalisation for the fastText classifiers and named token counters.

Training and scoring must see exactly the same normalisation, so both call ``normalise_many`` (``normalise``, the
Python reference, in native code: the same string for every text) and the model card records
``NORMALISER_VERSION``; the scorer refuses a model trained under another version.

Since v2, math markup is mapped to the form plain-text math has, so a classifier learns the vocabulary and structure
of mathematics rather than its typography (LaTeX sources vs markup-stripped encyclopedia text and word problems):
the delimiters ``$``, double quotes, braces, ``^``, ``_``, ``&`` and ``~`` become spaces; a LaTeX command becomes
its plain form (``\\frac{a}{b}`` -> ``a / b``, ``\\leq`` -> ``<=``, ``\\cdot`` -> ``*``), its name as a word
(``\\alpha`` -> ``alpha``, ``\\sin`` -> ``sin``), or nothing for layout (``\\begin``, ``\\left``, ``\\mathbb``,
``\\,``); Unicode math symbols take the same plain forms (``≤`` -> ``<=``, ``×`` -> ``*``, ``∈`` -> ``in``).
On the validation sets (docs/selection-validation.md), quotes and Unicode symbols on top of the LaTeX mapping moved
Wikipedia's math articles from ROC-AUC 0.29 to 0.85.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module imports only the standard library: datatrove's benchmark runs it elsewhere
    import pyarrow as pa

NORMALISER_VERSION = "v2"

# Punctuation becomes tokens of its own ("x=2." -> "x = 2 .") so the math signal survives. Chained str.replace (a C
# fast path) does this at ~34 MB/s; str.translate with multi-character targets or a regex measured 10-18 MB/s,
# slower than fastText's predict itself; gluing punctuation to words (52 MB/s) cut the domain classifier's
# held-out recall from 0.98 to 0.58.
_SPACED = tuple("=()[],.;:!?+-*/<>|%'\"")
# Markup with no plain-text counterpart, and double quotes (the 2015 Wikipedia dump quotes every math variable,
# '"G"', where LaTeX italicises it): a space.
_MARKUP = tuple('${}^_&~"')
# Unicode math symbols: the plain form LaTeX commands map to as well.
_SYMBOLS = {"−": "-", "×": "*", "∗": "*", "·": "*", "⋅": "*", "÷": "/", "→": "->", "≤": "<=", "≥": ">=", "≠": "!=",
            "∈": " in ", "∞": " infinity ", "≈": "~", "…": "...", "′": "'"}
# LaTeX commands: a plain-text form; layout and font commands carry no content ("").
_COMMANDS = {
    "frac": "/", "dfrac": "/", "tfrac": "/", "over": "/", "cdot": "*", "times": "*", "div": "/", "pm": "+-",
    "le": "<=", "leq": "<=", "leqslant": "<=", "ge": ">=", "geq": ">=", "geqslant": ">=", "ne": "!=", "neq": "!=",
    "lt": "<", "gt": ">", "approx": "~", "equiv": "=", "to": "->", "rightarrow": "->", "implies": "=>",
    "infty": "infinity", "%": "%", "ldots": "...", "cdots": "...", "dots": "...", "prime": "'",
    **dict.fromkeys(("begin", "end", "left", "right", "big", "bigg", "bigl", "bigr", "mathrm", "mathbf", "mathbb",
                     "mathcal", "mathit", "mathsf", "mathfrak", "boldsymbol", "text", "textbf", "textit", "textrm",
                     "emph", "operatorname", "displaystyle", "textstyle", "label", "ref", "eqref", "cite", "quad",
                     "qquad", "hspace", "vspace", "noindent", "item", "limits", "nonumber", "newline"), ""),
}
_COMMAND = re.compile(r"\\([a-z]+|.)", re.DOTALL)
_FRACTION = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")  # \frac{a}{b} -> a / b (no nested braces)


def _command(match: re.Match) -> str:
    name = match.group(1)
    return f" {_COMMANDS.get(name, name if name.isalpha() else '')} "


def normalise(text: str) -> str:
    """Lower-case, math markup to plain form (module doc), space out punctuation, collapse all white space (fastText
    refuses '\\n') to single spaces. The reference: ``normalise_many`` gives the same strings in native code."""
    text = text.lower()
    if "\\" in text:
        text = _COMMAND.sub(_command, _FRACTION.sub(r" \1 / \2 ", text))
    return " ".join(_plain(text).split())


def _plain(text: str) -> str:
    """Unicode symbols to their plain form, markup to spaces, punctuation spaced out: one character at a time."""
    for symbol, plain in _SYMBOLS.items():
        if symbol in text:
            text = text.replace(symbol, plain)
    for mark in _MARKUP:
        if mark in text:
            text = text.replace(mark, " ")
    for mark in _SPACED:
        if mark in text:
            text = text.replace(mark, f" {mark} ")
    return text


# ``normalise_many`` runs normalise's steps as whole-batch passes in native code: Arrow's lower-casing (utf8proc),
# then polars (Rust: the regex crate, one Aho-Corasick pass for all the characters ``_plain`` maps). A row is
# normalised by ``normalise`` instead when it holds
# - a sentinel, \x01 or \x02 (they mark command names between the regex and the Aho-Corasick pass),
# - a backslash before a non-ASCII character (a one-character command is kept when ``str.isalpha``),
# - a character that Arrow lower-cases unlike Python 3.11 (Unicode 14): "Σ" (final sigma), "İ" (two characters
#   in Python), and letters newer than Unicode 14; tests/test_text_native.py checks every code point.
_FALLBACK = (r"[\x01\x02Σİ\x{1c89}\x{a7cb}-\x{a7e2}\x{ab6c}\x{ab6d}\x{10d50}-\x{10d65}\x{16ea0}-\x{16eb8}"
             r"\x{1df40}-\x{1df7e}]|\\[^\x00-\x7f]")
# Python's white space (str.split and re's \s): the regex crate's \s lacks \x1c-\x1f.
_WHITE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
          "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_SPACE = "".join(f"\\x{{{ord(c):x}}}" for c in _WHITE)
_NATIVE_FRACTION = rf"\\[dt]?frac[{_SPACE}]*\{{([^{{}}]*)\}}[{_SPACE}]*\{{([^{{}}]*)\}}"  # _FRACTION
_NATIVE_COMMAND = r"\\(?:([a-z]+)|(%)|(?s:.))"  # _COMMAND: a name is marked, "%" kept, any other character dropped


@functools.cache
def _native_table() -> tuple[list[str], list[str]]:
    """Aho-Corasick patterns and replacements: each marked command name, each character ``_plain`` changes and each
    white space character, with what ``normalise`` makes of it (up to runs of spaces); the lone sentinels go last
    (leftmost: of the patterns matching at one place, the first listed wins)."""
    pairs = {f"\x01{name}\x02": _plain(f" {value} ") for name, value in _COMMANDS.items() if name.isalpha()}
    pairs |= {c: _plain(c) for c in [*_SYMBOLS, *_MARKUP, *_SPACED]}
    pairs |= {c: " " for c in _WHITE if c != " "}
    pairs |= {"\x01": "", "\x02": ""}
    return list(pairs), list(pairs.values())


def normalise_many(texts: pa.Array | pa.ChunkedArray) -> list[str]:
    """``normalise`` of each text of an Arrow string array without nulls: the same strings, ~2.4x as fast (one core,
    benchmark corpus)."""
    import polars as pl
    import pyarrow.compute as pc

    risky = pc.indices_nonzero(pc.match_substring_regex(texts, _FALLBACK)).to_pylist()
    patterns, replacements = _native_table()
    out = (pl.Series(pc.utf8_lower(texts)).str.replace_all(_NATIVE_FRACTION, " ${1} / ${2} ")
           .str.replace_all(_NATIVE_COMMAND, " \x01${1}\x02${2} ")
           .str.replace_many(patterns, replacements, leftmost=True)
           .str.replace_all("  +", " ").str.strip_chars(" ").to_list())
    for i in risky:
        out[i] = normalise(texts[i].as_py())
    return out


_WORDS = re.compile(r"\w+|[^\w\s]")


class TokenCounter:
    """Counts tokens with a named tokenizer: ``words`` (regex words and punctuation marks) or
    ``hf:<path to tokenizer.json>`` (a Hugging Face fast tokenizer, e.g. the one the trainer will use)."""

    def __init__(self, name: str):
        self.name = name
        self._hf = None
        if name.startswith("hf:"):
            from tokenizers import Tokenizer

            self._hf = Tokenizer.from_file(name[3:])
        elif name != "words":
            raise ValueError(f"unknown tokenizer {name!r}; use 'words' or 'hf:/path/to/tokenizer.json'")

    def count(self, texts: list[str]) -> list[int]:
        """Token count of each text (no special tokens)."""
        if self._hf is not None:
            return [len(e.ids) for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        return [len(_WORDS.findall(t)) for t in texts]
