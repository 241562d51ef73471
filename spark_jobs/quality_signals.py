"""Rule-based quality signals: FineWeb's heuristic filters, as datatrove implements them (``trait score`` signals).

Each signal is the fraction of four datatrove 0.10.1 filters a document passes: 0, 0.25, 0.5, 0.75 or 1, each filter
judging the document as given:

- ``GopherRepetitionFilter`` (Gopher, Rae et al. 2021, table A1): share of duplicated lines and paragraphs, of
  characters in them, in the most frequent 2-4-grams and in duplicated 5-10-grams;
- ``GopherQualityFilter`` (same paper): 50 to 100,000 words, mean word length 3 to 10, '#' and '...' under 10% of
  words, bullet lines <= 90%, lines ending in '...' <= 30%, >= 80% of words with a letter, >= 2 of 8 stop words;
- ``C4QualityFilter`` (C4, Raffel et al. 2020): >= 5 sentences in lines of >= 3 words, no 'lorem ipsum', no curly
  bracket (lines with 'javascript' or cookie/terms text do not count);
- ``FineWebQualityFilter`` (FineWeb, Penedo et al. 2024): >= 12% of lines end in punctuation, <= 67% of lines are
  30 characters or shorter, <= 1% of characters in duplicated lines, newlines <= 30% of words.

``score_quality_heuristic_v1`` uses FineWeb's settings (datatrove ``examples/fineweb.py``: the library defaults, and
the C4 filter without its rule that drops lines not ending in punctuation). They reject mathematics: LaTeX has curly
brackets, and formulas are words without a letter, so on the demo seed only 0-14% of PlanetMath and OpenStax
entries pass all four (mean scores 0.35 and 0.14). ``score_quality_heuristic_math_v1`` turns those two rules off
(C4's curly bracket, Gopher's words with a letter) and keeps the rest.

Why a fraction and not FineWeb's all-or-nothing: a graded score ranks documents, so ``trait select`` can cut it at
a percentile. Figures against web documents labelled good or bad: docs/quality-validation.md (v1: ROC-AUC 0.84 on
the dev part and 0.75 on the test part; the fastText reference-vs-crawl classifier: 0.65 and 0.63).

datatrove tokenises English words and sentences with spaCy (a blank ``en`` pipeline): both come with the
``quality`` extra. It does so inside spaCy memory zones, where spaCy's tokenizer neither keeps lexemes nor caches
how it split a whitespace-separated chunk: every token of every document goes through the affix rules again, most
of the signal's time. So each process first tokenises the first ``WARM_CHARS`` characters it judges outside a
zone (``_warm_up``), which fills that cache with the common chunks for good. The cache only remembers spaCy's own
splits, so every verdict is unchanged (tests/test_quality_signals.py); the signal runs ~3.4 x faster (0.07 to
0.23 MB/s per core on a loaded machine, 800 Wikipedia and Pile documents). fastText scores ~30 MB/s.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from importlib import metadata

import numpy as np

from trait.config import ConfigError

HEURISTIC_V1 = "score_quality_heuristic_v1"
HEURISTIC_MATH_V1 = "score_quality_heuristic_math_v1"
# column -> (C4's curly-bracket rule on, Gopher's minimum share of words with a letter)
SIGNALS = {HEURISTIC_V1: (True, 0.8), HEURISTIC_MATH_V1: (False, None)}
FILTERS = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")
INSTALL = "pip install -c constraints.txt -e '.[quality]'"
WARM_CHARS = 4_000_000  # text each process tokenises outside a memory zone first (a few MB of lexemes, once)
_warmed_chars = 0


def check(columns: list[str]) -> None:
    """Refuse unknown signal columns, and known ones whose libraries are not installed."""
    unknown = [c for c in columns if c not in SIGNALS]
    if unknown:
        raise ConfigError(f"unknown quality signal(s) {unknown}; known: {', '.join(SIGNALS)}")
    for column in columns:
        _filters(column)


def describe(column: str) -> dict:
    """What computes ``column``: the filters and the library versions (part of a score job's fingerprint)."""
    curly, alpha = SIGNALS[column]
    return {"filters": list(FILTERS), "settings": {"c4.filter_no_terminal_punct": False,
                                                   "c4.filter_curly_bracket": curly,
                                                   "gopher_quality.max_non_alpha_words_ratio": alpha},
            "datatrove": metadata.version("datatrove"), "spacy": metadata.version("spacy")}


@contextlib.contextmanager
def _torch_blocked():
    """spaCy's thinc imports torch whenever it is installed (2.7 s and hundreds of MB in every Python worker), and
    spark_jobs never imports torch (tests/test_packaging.py); spaCy's tokenizer does not use it.
    While spaCy loads, ``import torch`` fails, so thinc records that it has none. A process that already has torch
    keeps it."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  (import machinery: None means 'not importable')
    try:
        yield
    finally:
        del sys.modules["torch"]


@functools.cache
def _filters(column: str) -> tuple:
    """The four filters of ``column``, built once per process (datatrove loads spaCy's tokenizer on first use)."""
    try:
        with _torch_blocked():
            import spacy  # noqa: F401  (datatrove's English tokenizer: without it, the first document fails)
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )
    except ImportError as exc:
        raise ConfigError(f"{column} needs datatrove and spaCy ({exc.name} is missing): {INSTALL}") from None
    curly, alpha = SIGNALS[column]
    return (GopherRepetitionFilter(), GopherQualityFilter(max_non_alpha_words_ratio=alpha),
            C4QualityFilter(filter_no_terminal_punct=False, filter_curly_bracket=curly), FineWebQualityFilter())


def _warm_up(text: str, language: str) -> None:
    """Tokenise ``text`` with the filters' spaCy tokenizer outside a memory zone while this process has warmed it
    with fewer than ``WARM_CHARS`` characters: its lexemes and chunk splits stay cached (see the module's doc)."""
    global _warmed_chars
    if _warmed_chars < WARM_CHARS:
        from datatrove.utils.word_tokenizers import load_word_tokenizer

        # the filters' tokenizer (datatrove keeps one per language): its spaCy pipeline's Tokenizer
        load_word_tokenizer(language).tokenizer.tokenizer(text)
        _warmed_chars += len(text)


def filter_verdicts(text: str, column: str = HEURISTIC_V1) -> dict[str, str | None]:
    """Per filter (``FILTERS``) of the signal ``column``: None if ``text`` passes it, else datatrove's reason (e.g.
    'gopher_short_doc')."""
    from datatrove.data import Document

    filters = _filters(column)
    _warm_up(text, filters[0].language)
    out = {}
    for name, flt in zip(FILTERS, filters):
        verdict = flt.filter(Document(text=text, id=""))  # a fresh Document: the C4 filter rewrites its text
        out[name] = None if verdict is True else verdict[1]
    return out


def score(column: str, texts: list[str]) -> np.ndarray:
    """The signal ``column`` (one of ``SIGNALS``) of each raw text: the fraction of ``FILTERS`` it passes, float32."""
    check([column])
    return np.array([sum(v is None for v in filter_verdicts(t, column).values()) / len(FILTERS) for t in texts],
                    dtype=np.float32)
