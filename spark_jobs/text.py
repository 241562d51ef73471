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
    import numpy as np
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


# ``normalise_many`` runs normalise's steps over a whole Arrow batch in one compiled pass (numba, trait/native.py:
# ``translate_collapse``) over its UTF-8 bytes: each character becomes ``_plain`` of its lower case, white space is
# collapsed as ``" ".join(s.split())`` does. Character by character is exact because ``_plain`` maps characters one
# at a time and Python lower-cases them one at a time, with one exception: "Σ" (final sigma depends on the next
# character). The pass marks two kinds of rows, which Python finishes:
# - RISKY: a "Σ"; the row is normalised by ``normalise``;
# - COMMAND: a backslash; the row is lower-cased and goes through normalise's own command regexes, then the same pass.
RISKY, COMMAND = 1, 2


@functools.cache
def _native_tables():
    """``translate_collapse``'s tables: per code point up to the last one changed, -1 or the row of what it becomes
    (``_plain`` of its lower case; white space, as ``str.split`` has it, one space); those replacements' UTF-8 bytes
    back to back; their offsets; and per code point, the RISKY and COMMAND marks. Built once per process (~0.3 s)."""
    import numpy as np

    # Only these can change: a character whose lower case differs, white space, and what _plain maps.
    candidates = {*(c for c in map(chr, range(0x110000)) if c.lower() != c or c.isspace()), *_SYMBOLS, *_MARKUP,
                  *_SPACED}
    plain = {c: " " if c.isspace() else _plain(c.lower()) for c in candidates}
    changed = sorted(c for c in candidates if plain[c] != c or c.isspace())  # " " too: it may collapse
    rows = np.full(ord(changed[-1]) + 1, -1, dtype=np.int32)
    rows[[ord(c) for c in changed]] = np.arange(len(changed))
    replacements = [plain[c].encode() for c in changed]
    starts = np.zeros(len(replacements) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in replacements], out=starts[1:])
    marks = np.zeros(0x110000, dtype=np.uint8)
    marks[ord("Σ")] |= RISKY
    marks[ord("\\")] |= COMMAND
    return rows, np.frombuffer(b"".join(replacements), dtype=np.uint8), starts, marks


def decoded(out, bounds) -> list[str]:
    """The texts of UTF-8 bytes ``out`` cut at ``bounds`` (``trait.native.utf8``'s layout)."""
    raw, bounds = out.tobytes(), bounds.tolist()
    return [raw[bounds[i]:bounds[i + 1]].decode() for i in range(len(bounds) - 1)]


def normalise_utf8(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``normalise`` of each text of an Arrow string array without nulls, in native code, as UTF-8: the bytes back to
    back and the offsets where each text starts, with the end as a last entry (``trait.native.utf8``'s layout)."""
    import numpy as np
    import pyarrow as pa

    from trait.native import translate_collapse, utf8

    if isinstance(texts, pa.ChunkedArray):  # a batch sliced from one row group is one chunk: no copy then
        texts = texts.chunk(0) if texts.num_chunks == 1 else texts.combine_chunks()
    if texts.type not in (pa.string(), pa.large_string()):
        texts = texts.cast(pa.large_string())
    width = np.int32 if texts.type == pa.string() else np.int64
    offsets = np.frombuffer(texts.buffers()[1], dtype=width)[texts.offset:texts.offset + len(texts) + 1]
    # A slice's buffer is its parent's: only its own bytes go to the pass. Read-only always (numba types an empty
    # buffer as writable), so the kernel has one signature and a first empty call loads what every later call runs.
    data = texts.buffers()[2]
    buf = np.frombuffer(data if data is not None else b"", dtype=np.uint8)[offsets[0]:offsets[-1]]
    buf.flags.writeable = False
    offsets = offsets.astype(np.int64) - offsets[0]
    tables = _native_tables()
    out, bounds, flags = translate_collapse(buf, offsets, *tables)
    patched = {}
    commands = np.flatnonzero(flags == COMMAND).tolist()  # a backslash, and no "Σ"
    if commands:
        subbed = [_COMMAND.sub(_command, _FRACTION.sub(r" \1 / \2 ", texts[i].as_py().lower())) for i in commands]
        again, cuts = translate_collapse(*utf8(subbed), *tables)[:2]
        patched.update((i, again[cuts[k]:cuts[k + 1]].tobytes()) for k, i in enumerate(commands))
    patched.update((i, normalise(texts[i].as_py()).encode()) for i in np.flatnonzero(flags & RISKY).tolist())
    if not patched:
        return out, bounds
    # one copy: the runs of untouched texts between the patched ones, as views, and the patched texts
    pieces, lengths, start = [], np.diff(bounds), 0
    for i in sorted(patched):
        pieces += [out[bounds[start]:bounds[i]], np.frombuffer(patched[i], dtype=np.uint8)]
        lengths[i], start = len(patched[i]), i + 1
    pieces.append(out[bounds[start]:])
    bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    return np.concatenate(pieces), bounds


def normalise_many(texts: pa.Array | pa.ChunkedArray) -> list[str]:
    """``normalise`` of each text of an Arrow string array without nulls: the same strings, in native code."""
    return decoded(*normalise_utf8(texts))


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
