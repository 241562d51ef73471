"""``normalise_many`` (native: a compiled pass) gives exactly ``normalise``'s string (Python: the reference), on every
code point, on adversarial mixes of math markup, white space and case, and on the shared data's real texts."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_jobs.text import _COMMANDS, _SYMBOLS, normalise, normalise_many

from .conftest import SHARED_DATA

ALL_CHARS = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]  # UTF-8 has no lone surrogates


def layouts(texts: list[str]) -> dict:
    """``texts`` as the Arrow layouts ``normalise_many`` takes: 32- and 64-bit offsets, a slice (its offsets do not
    start at 0, its buffer holds other texts), a column read from Parquet (a chunked array: one chunk, or several)."""
    padded = pa.array(["before \\ Σ", *texts, "after"], pa.string())
    half = len(texts) // 2
    return {"string": pa.array(texts, pa.string()), "large_string": pa.array(texts, pa.large_string()),
            "slice": padded.slice(1, len(texts)), "one chunk": pa.chunked_array([padded]).slice(1, len(texts)),
            "chunks": pa.chunked_array([pa.array(texts[:half], pa.string()), pa.array(texts[half:], pa.string())])}


def same(texts: list[str], every_layout: bool = False) -> None:
    """``normalise_many`` of ``texts``, as Parquet gives them (``string``) or in every layout, is ``normalise``'s."""
    arrays = layouts(texts) if every_layout else {"string": pa.array(texts, pa.string())}
    for layout, array in arrays.items():
        native = normalise_many(array)
        for text, got in zip(texts, native):
            assert got == normalise(text), (layout, text)
        assert len(native) == len(texts), layout


def test_every_code_point():
    """Each character after a capital and before a letter, 256 to a row: lower-casing, white space and the character
    maps all see every code point in the compiled pass. The two characters that send a row elsewhere ("Σ" to
    ``normalise``, a backslash to the command regexes) get rows of their own."""
    apart = {"Σ", "\\"}
    cells = [f"A{c}b x" for c in ALL_CHARS if c not in apart]
    same([" ".join(cells[i:i + 256]) for i in range(0, len(cells), 256)] + [f"A{c}b x" for c in apart])


# Pieces that meet in the traps: command names that prefix one another, escaped backslashes, fractions with white
# space and braces, the sentinels, final sigma, characters whose lower case is longer, Python-only white space.
PIECES = ["\\", "\\\\", "frac", "dfrac", "{", "}", "{a}", "{b c}", " ", "\n", "\t", "\x1c", "\x85", "\xa0", "\u2028",
          "\u3000", "le", "leq", "lemma", "LE", "Frac", "%", "$", "^", "_", "&", "~", '"', "'", ".", "-", ">", "x",
          "Σ", "ΑΣ", "σ", "İ", "ß", "é", "É", "ǅ", "ﬃ", "K", "\x01", "\x02", "\u1c89", "\ua7cb", "𝔸", "1", "=",
          *_SYMBOLS, *(f"\\{name}" for name in list(_COMMANDS)[::3])]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), st.text(max_size=30)),
                min_size=1, max_size=20))
def test_adversarial_texts(texts):
    same(texts, every_layout=True)


def test_examples():
    same([r"\\frac{a}{b}", r"\frac {a} {b}", r"\frac{a}{b}{c}", r"\lemma \le\leq\lex", r"\\lemma", r"\%\,\$\é",
          "\\", "a\\", "ΑΣ ΑΣ. Σ", "İstanbul", "", " \n\t ", "x=2.", "\x1cx\x1dy\x1e", "\\\x01le\x02", "\x01le\x02"],
         every_layout=True)


def test_shared_data_texts():
    """Every PlanetMath entry and OpenStax section (LaTeX), web samples and Wikipedia articles."""
    texts = []
    for pattern, limit in (("math/planetmath/*.jsonl.gz", None), ("math/openstax/*.jsonl.gz", None),
                           ("general/web_samples/*.json*", 2000), ("general/enwiki_2015_part1.jsonl.gz", 1000)):
        for path in sorted((SHARED_DATA / "corpora").glob(pattern)):
            with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as fh:
                for n, line in enumerate(fh):
                    if limit is not None and n == limit:
                        break
                    record = json.loads(line)
                    text = record.get("text", record.get("contents"))
                    if isinstance(text, str):
                        texts.append(text.encode("utf-8", "replace").decode("utf-8"))
    assert len(texts) > 5000
    same(texts)
