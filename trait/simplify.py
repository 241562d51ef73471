"""The text simplification datatrove and FineWeb apply before MinHash near-deduplication (``normaliser: datatrove``).

The rules of datatrove 0.10.1's ``simplify_text`` with its default ``TextNormConfig`` (``datatrove/utils/text.py``),
in its order, each step on the previous one's output:

1. lower case (``str.lower``);
2. every number to ``0``: a run of decimal digits of any script (Unicode category Nd), optionally followed by one
   decimal separator (``.`` ``,`` ``،`` ``٫`` ``⎖`` ``⎗`` ``⎘``) and more digits, so ``3.14`` and ``1,000`` are ``0``
   and ``1,234,567`` is ``0,0`` (then ``0 0``, step 3);
3. punctuation to a space: ASCII punctuation, 34 other marks (dashes, curly quotes but not the opening single one,
   guillemets, the ellipsis, CJK and full-width brackets and stops, ...) and the C0/C1 control characters except
   tab and line feed;
4. white space runs to one space, ends stripped;
5. accents dropped: canonical decomposition (NFD), then every non-spacing mark (category Mn) removed, so ``é``
   becomes ``e``; the text stays decomposed (Hangul syllables become jamo, as in datatrove);
6. ends stripped again.

Weekday and month names are left alone (datatrove's default). Words are then the whitespace-separated parts of the
result; datatrove's English MinHash splits with spaCy instead, which also splits a few contractions and symbols
(``cannot`` -> ``can not``, ``°c`` -> ``° c``): docs/selection.md's dedup section measures what that changes.
Only the standard library: ``re``'s ``\\d`` is Unicode category Nd for ``str`` patterns, as ``regex``'s ``\\p{Nd}``.
"""

from __future__ import annotations

import functools
import re
import string
import sys
import unicodedata

_NUMBER = re.compile(r"\d+(?:[.,\u060c\u066b\u2396\u2397\u2398]\d+)?")
_CONTROLS = "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))  # all but \t (9) and \n (10)
_OTHER_PUNCTUATION = ("\u00ab\u00b4\u00bb\u2013\u2014\u2019\u201c\u201d\u201e\u2026\u2236\u2501\u25ba"
                      "\u3001\u3002\u3008\u3009\u300a\u300b\u300c\u300d\u3010\u3011"
                      "\uff01\uff05\uff08\uff09\uff0c\uff0e\uff11\uff1a\uff1b\uff1f\uff5e")
PUNCTUATION = string.punctuation + _OTHER_PUNCTUATION + _CONTROLS  # 32 + 34 + 63 = 129 characters
# Punctuation to spaces in two steps (together ~110-150 MB/s here, against 13 MB/s for one str.translate over mostly
# non-ASCII texts): the ASCII marks on the UTF-8 bytes (a 256-byte table), then each other mark the text holds.
_ASCII_TO_SPACE = bytes.maketrans(bytes(ord(c) for c in PUNCTUATION if c.isascii()),
                                  b" " * sum(c.isascii() for c in PUNCTUATION))
_OTHER_MARKS = tuple(c for c in PUNCTUATION if not c.isascii())


@functools.cache
def _marks() -> frozenset[str]:
    """Every non-spacing mark (Unicode category Mn): ~2,000 characters, found once per process (~0.3 s)."""
    return frozenset(c for c in map(chr, range(sys.maxunicode + 1)) if unicodedata.category(c) == "Mn")


def simplify_text(text: str) -> str:
    """datatrove's ``simplify_text`` (default config): lower case, numbers to 0, punctuation to spaces, white space
    collapsed, accents dropped (the module doc's six steps). ASCII text skips the decomposition, which cannot
    change it; a decomposed text loses the marks it holds by ``str.replace`` (a set intersection finds them)."""
    text = _NUMBER.sub("0", text.lower())
    text = text.encode("utf-8", "surrogatepass").translate(_ASCII_TO_SPACE).decode("utf-8", "surrogatepass")
    for mark in _OTHER_MARKS:
        if mark in text:
            text = text.replace(mark, " ")
    text = " ".join(text.split())
    if not text.isascii():
        text = unicodedata.normalize("NFD", text)
        for mark in _marks().intersection(text):
            text = text.replace(mark, "")
    return text.strip()
