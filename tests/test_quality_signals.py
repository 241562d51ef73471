"""The heuristic quality signals: datatrove's verdicts on pinned examples, the fraction, and the score job's column."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from spark_jobs import quality_signals
from spark_jobs.quality_signals import HEURISTIC_MATH_V1, HEURISTIC_V1, filter_verdicts, score
from spark_jobs.score import ScoreConfig, run_score
from trait.config import ConfigError, from_dict
from trait.contract import finished_dataset, validate_table, write_text_dataset

from .conftest import REPO, SHARED_DATA, read_jsonl

GOOD = ("The river rises in the hills north of the town and flows south for about forty kilometres. "
        "Its valley was farmed from the Bronze Age, and the remains of several early settlements have been found "
        "along its banks.\n"
        "In the Middle Ages the river drove more than twenty mills. Most of them ground grain, but a few were used "
        "to full cloth, which made the town one of the richest in the region.\n"
        "The last mill closed in 1952. Today the river is known for its trout, and a footpath follows it from "
        "the source to the sea, passing the old mill buildings, which have been turned into homes and a museum.")
MENU = "Home\nAbout us\nProducts\nContact\nLogin\nCart\nSearch\nPrivacy policy\nTerms of use\nSitemap"
SPAM = "Buy cheap watches online at the best price. " * 30
CODE = "int main(void) {\n  printf(\"hello\");\n  return 0;\n}\n" + GOOD
# GOOD without the full stop that ends each line: FineWeb runs the C4 filter without its rule that drops such lines
# (with it, no line would be left and the C4 filter would fail the document: 'too_few_sentences').
NO_FINAL_STOP = "\n".join(line.rstrip(".") for line in GOOD.split("\n"))
MATH = ("Let $G$ be a finite group and let $H$ be a subgroup of $G$. The order of $H$ divides the order of $G$.\n"
        "To see this, note that the left cosets $gH = \\{gh : h \\in H\\}$ partition $G$ into sets of equal size.\n"
        "Each coset has exactly $|H|$ elements, since the map $h \\mapsto gh$ is a bijection from $H$ onto $gH$.\n"
        "Hence $|G| = [G:H] \\cdot |H|$, where $[G:H]$ is the number of cosets.\n"
        "In particular, the order of every element of $G$ divides $|G|$, because it is the order of the cyclic "
        "subgroup that the element generates.")

# datatrove 0.10.1's verdicts (None: passed), in FILTERS order: gopher_repetition, gopher_quality, c4, fineweb;
# (text, verdicts, score) under score_quality_heuristic_v1, and where the math variant differs, under it.
PINNED = {
    "GOOD": (GOOD, [None, None, None, None], 1.0),
    "MENU": (MENU, ["top_4_gram", "gopher_short_doc", "too_few_sentences", "line_punct_ratio"], 0.0),
    # 'gopher_enough_stop_words' is datatrove's name for having fewer than 2 of its 8 stop words
    "SPAM": (SPAM, ["top_2_gram", "gopher_enough_stop_words", None, "line_punct_ratio"], 0.25),
    "CODE": (CODE, [None, None, "curly_bracket", None], 0.75),
    "NO_FINAL_STOP": (NO_FINAL_STOP, [None, None, None, "line_punct_ratio"], 0.75),
    "MATH": (MATH, [None, "gopher_below_alpha_threshold", "curly_bracket", None], 0.5),
}
MATH_VARIANT = {"CODE": ([None, None, None, None], 1.0), "MATH": ([None, None, None, None], 1.0)}


@pytest.mark.parametrize("name", list(PINNED))
def test_each_filter_gives_datatroves_verdict(name):
    text, verdicts, _ = PINNED[name]
    assert filter_verdicts(text) == dict(zip(quality_signals.FILTERS, verdicts))
    math_verdicts, _ = MATH_VARIANT.get(name, (verdicts, None))
    assert filter_verdicts(text, HEURISTIC_MATH_V1) == dict(zip(quality_signals.FILTERS, math_verdicts))


def test_the_score_is_the_fraction_of_filters_passed():
    texts = [text for text, _, _ in PINNED.values()]
    scores = score(HEURISTIC_V1, texts)
    assert scores.dtype == np.float32
    assert scores.tolist() == [fraction for _, _, fraction in PINNED.values()]
    assert score(HEURISTIC_MATH_V1, texts).tolist() == [MATH_VARIANT.get(name, (None, fraction))[1]
                                                        for name, (_, _, fraction) in PINNED.items()]


def test_unknown_signals_and_a_missing_library_are_refused(monkeypatch):
    with pytest.raises(ConfigError, match="unknown quality signal.*score_quality_heuristic_v1"):
        from_dict(ScoreConfig, {"signals": ["score_quality_heuristic_v2"]})
    with pytest.raises(ConfigError, match="at least one classifier directory .* or signal"):
        from_dict(ScoreConfig, {})
    monkeypatch.setitem(sys.modules, "datatrove.pipeline.filters", None)  # as if datatrove were not installed
    quality_signals._filters.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"needs datatrove and spaCy .*pip install .*\[quality\]"):
            from_dict(ScoreConfig, {"signals": [HEURISTIC_V1]})
    finally:
        quality_signals._filters.cache_clear()


def test_the_signal_loads_no_torch_where_torch_is_installed():
    """spaCy's thinc imports torch when it can; the Python workers that score must not (spark_jobs never does)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: there is nothing to keep out")
    code = ("import sys; from spark_jobs.quality_signals import HEURISTIC_V1, score; score(HEURISTIC_V1, ['A.']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'thinc', 'spacy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "['spacy', 'thinc']\n"


def test_the_score_job_adds_the_signal_column(spark, tmp_path):
    """Signals alone, no classifier: every row scored from its raw text, null where the text normalises to
    nothing ('$$' is markup only), the libraries' versions in the manifest."""
    texts = [GOOD, MENU, "$$", SPAM, CODE]
    source = write_text_dataset(tmp_path / "in", "web/test", texts)
    cfg = from_dict(ScoreConfig, {"signals": [HEURISTIC_V1, HEURISTIC_MATH_V1]})
    manifest = run_score(spark, cfg, source, str(tmp_path / "out"))
    out = finished_dataset(str(tmp_path / "out")).to_table()
    validate_table(out)
    assert out.schema.field(HEURISTIC_V1).type == pa.float32()
    by_text = {t: (a, b) for t, a, b in zip(*(out.column(c).to_pylist() for c in ("text", *cfg.signals)))}
    assert by_text == {GOOD: (1.0, 1.0), MENU: (0.0, 0.0), "$$": (None, None), SPAM: (0.25, 0.25), CODE: (0.75, 1.0)}
    assert manifest["score_columns"] == [HEURISTIC_V1, HEURISTIC_MATH_V1]
    assert manifest["signals"][HEURISTIC_V1]["datatrove"] == "0.10.1"
    written = json.loads((Path(tmp_path / "out") / "manifest.json").read_text())
    assert written["counts"]["by_source"]["web/test"][f"{HEURISTIC_V1}_nulls"] == 1


def test_warming_the_tokenizer_changes_no_verdict():
    """The signal tokenises what it judges outside spaCy's memory zones first, so spaCy caches its splits
    (``quality_signals._warm_up``). datatrove's filters alone, in a fresh process that does not warm, give the same
    verdicts on real documents of every kind the selection scores: encyclopedia articles, web chunks, LaTeX math."""
    corpora = SHARED_DATA / "corpora"
    texts = [r["text"] for r in read_jsonl(corpora / "general/enwiki_2015_part1.jsonl.gz", 20)]
    texts += [r["contents"] for r in read_jsonl(corpora / "general/web_samples/dsir_toy_pile_data.jsonl", 80)]
    texts += [r["text"] for r in read_jsonl(corpora / "math/planetmath/planetmath_entries.jsonl.gz", 40)]
    assert sum(map(len, texts)) < quality_signals.WARM_CHARS  # every document is judged after it warmed the cache
    code = ("import json, sys; from datatrove.data import Document; from spark_jobs.quality_signals import _filters\n"
            "texts, column = json.load(sys.stdin)\n"
            "print(json.dumps([[None if (v := f.filter(Document(text=t, id=''))) is True else v[1]"
            " for f in _filters(column)] for t in texts]))")
    for column in (HEURISTIC_V1, HEURISTIC_MATH_V1):
        cold = subprocess.run([sys.executable, "-c", code], input=json.dumps([texts, column]), capture_output=True,
                              text=True, check=True, cwd=REPO).stdout
        warm = [list(filter_verdicts(t, column).values()) for t in texts]
        assert warm == json.loads(cold)
        assert len({tuple(v) for v in warm}) > 3  # the documents meet different verdicts, not one
