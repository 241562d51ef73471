"""``trait.simplify.simplify_text`` (``normaliser: datatrove``) pinned by examples: each expected string is what
datatrove 0.10.1's own ``simplify_text`` returned for the input (measured once in .venv-bench; the benchmark
``benchmarks.dedup_agreement`` compares the two on the whole demo pool)."""

from __future__ import annotations

import unicodedata

import pytest

from trait.minhash import DedupConfig, find_duplicates, normalise, signatures
from trait.simplify import PUNCTUATION, simplify_text


@pytest.mark.parametrize("text, expected", [
    ("May 17 is the 137th day of the year (138th in leap years) in the Gregorian calendar.",
     "may 0 is the 0th day of the year 0th in leap years in the gregorian calendar"),
    # one decimal separator joins two digit runs; a second one starts a new number
    ("Pi is 3.14159; a million is 1,000,000 and 1,234,567 people.", "pi is 0 a million is 0 0 and 0 0 people"),
    # accents dropped; the opening single quote is not in datatrove's punctuation, the closing one is
    ("Café  Ångström — naïve “quotes” and ‘single’ «guillemets»", "cafe angstrom naive quotes and ‘single guillemets"),
    ("x+1 = y-1, 50% off! (see [1]) e-mail: a@b.c", "x 0 y 0 0 off see 0 e mail a b c"),
    ("Tabs\tand\nnewlines\r\n  and\u00a0nbsp\u2003em space", "tabs and newlines and nbsp em space"),
    # digits of any script; the full-width full stop is punctuation, not a decimal separator
    ("\u0661\u0662\u0663\u066b\u0664\u0665 Arabic-Indic and \uff13\uff0e\uff11\uff14 full-width",
     "0 arabic indic and 0 0 full width"),
    ("\u01c5emal \u0130stanbul STRASSE \u00df", "\u01c6emal istanbul strasse \u00df"),
    ("Ελληνικά ἀρχή", "ελληνικα αρχη"),
    ("a \u0301 b", "a  b"),  # a lone combining mark goes after the white space step: two spaces stay
    ("   ", ""),
    ("ctrl\x01chars\x7fand\x85C1", "ctrl chars and c0"),
])
def test_simplify_text_matches_datatrove(text, expected):
    assert simplify_text(text) == expected


def test_decomposed_output_and_punctuation_set():
    assert simplify_text("한국어") == unicodedata.normalize("NFD", "한국어")  # stays decomposed, as datatrove's
    assert len(PUNCTUATION) == len(set(PUNCTUATION)) == 129
    assert "\t" not in PUNCTUATION and "\n" not in PUNCTUATION and "\u2018" not in PUNCTUATION


def test_day_of_year_articles_are_near_duplicates_only_under_datatrove():
    """Two templated day-of-year stubs differ in their numbers only: equal under ``datatrove``, not ``dedup-v1``."""
    template = ("{month} {day} is the {n}th day of the year ({m}th in leap years) in the Gregorian calendar. "
                "There are {left} days remaining until the end of the year. Events, births and deaths follow.")
    may = template.format(month="May", day=17, n=137, m=138, left=228)
    june = template.format(month="May", day=18, n=138, m=139, left=227)
    assert normalise(may, "datatrove") == normalise(june, "datatrove")
    assert normalise(may) != normalise(june)
    matched = DedupConfig(normaliser="datatrove")
    assert find_duplicates(["a", "b"], [may, june], matched) == {"b": ("exact_duplicate", "a")}
    assert find_duplicates(["a", "b"], [may, june], DedupConfig()) == {}
    sigs, _, _ = signatures([may, june], matched)
    assert (sigs[0] == sigs[1]).all()
