"""The compiled predict (spark_jobs/predict.py) returns fastText's own ``predict`` probability bit for bit: on real
classifiers over the shared data's texts, on generated token soups full of fastText's edge cases, for word n-gram
lengths 1 to 3; models it cannot reproduce keep fastText's predict."""

from __future__ import annotations

import fasttext
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_jobs.classifier import NEGATIVE, POSITIVE, fasttext_probability, positive_probability
from spark_jobs.predict import compiled
from spark_jobs.text import normalise_many

from .conftest import SHARED_DATA, read_jsonl


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """Normalised PlanetMath entries and Wikipedia articles; the first 150 of each train, the rest are held out."""
    raw = {"math": [r["text"] for r in read_jsonl(SHARED_DATA / "corpora/math/planetmath/planetmath_entries.jsonl.gz",
                                                  400)],
           "wiki": [r["text"] for r in read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 400)]}
    return {k: normalise_many(pa.array(v, pa.large_string())) for k, v in raw.items()}


def train(tmp_path, texts, **kwargs):
    lines = [f"{POSITIVE} {t}" for t in texts["math"][:150]] + [f"{NEGATIVE} {t}" for t in texts["wiki"][:150]]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    options = {"epoch": 5, "dim": 16, "bucket": 20_000, "wordNgrams": 2, "minCount": 2, "seed": 1, "thread": 1,
               "verbose": 0, **kwargs}
    return fasttext.train_supervised(input=str(path), **options)


@pytest.fixture(scope="module")
def model(tmp_path_factory, texts):
    return train(tmp_path_factory.mktemp("model"), texts)


def bits(a: np.ndarray) -> list[int]:
    return np.asarray(a, dtype=np.float32).view(np.uint32).tolist()


@pytest.mark.parametrize("n_grams", [1, 2, 3])
def test_held_out_texts_score_as_fasttext_scores_them(tmp_path, texts, n_grams):
    model = train(tmp_path, texts, wordNgrams=n_grams)
    assert compiled(model, POSITIVE) is not None
    held = texts["math"][150:] + texts["wiki"][150:]
    expected = fasttext_probability(model, held)
    assert bits(positive_probability(model, held)) == bits(expected)
    assert len(set(bits(expected))) > 100  # real, varied scores, not a constant


# What fastText's tokenizer and dictionary treat specially: every separator it splits at, a literal end token (the
# text ends there), label-prefixed tokens (a known label, an unknown one), bytes >= 0x80 (its hash reads signed
# chars), words in and out of the vocabulary, and the empty text.
PIECES = [" ", "  ", "\t", "\x0b", "\x0c", "\r", "\x00", "</s>", "</s>x", "__label__pos", "__label__neg",
          "__label__zz", "x__label__pos", "é", "ü", "𝔸", "ß", "\u3000", "the", "of", "and", "theorem", "let", "group",
          "river", "born", "1", "=", "(", "qqzv", ".", ","]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=40).map("".join), min_size=1, max_size=8))
def test_edge_cases_score_as_fasttext_scores_them(model, soup):
    assert bits(positive_probability(model, soup)) == bits(fasttext_probability(model, soup))


def test_the_corner_cases_of_fasttexts_tokenizer(model):
    """A literal end token ends the text, a NUL separates words, a label-prefixed token is no word at all (nor part
    of an n-gram); the compiled predict follows fastText in each."""
    cases = ["the group of", "the group of </s> river born", "the group of river born", "the group\x00of",
             "the __label__pos group of", "", "</s>", "théorème de groupe"]
    got = positive_probability(model, cases)
    assert bits(got) == bits(fasttext_probability(model, cases))
    assert got[0] == got[1] == got[3] == got[4] != got[2]


def test_a_newline_is_refused_as_fasttext_refuses_it(model):
    with pytest.raises(ValueError, match="one line at a time"):
        fasttext_probability(model, ["a\nb"])
    with pytest.raises(ValueError, match="one line at a time"):
        positive_probability(model, ["a\nb"])


@pytest.mark.parametrize("kwargs", [{"minn": 2, "maxn": 4}, {"loss": "ova"}, {"loss": "hs"}])
def test_models_it_cannot_reproduce_keep_fasttexts_predict(tmp_path, texts, kwargs):
    """Character n-grams or another loss: not compiled (None), and the scores are fastText's own."""
    model = train(tmp_path, texts, **kwargs)
    assert compiled(model, POSITIVE) is None
    held = texts["math"][150:160] + texts["wiki"][150:160]
    assert bits(positive_probability(model, held)) == bits(fasttext_probability(model, held))


def test_a_quantized_model_keeps_fasttexts_predict(tmp_path, texts):
    model = train(tmp_path, texts)
    model.quantize(input=None, qnorm=False, retrain=False, cutoff=0)
    assert compiled(model, POSITIVE) is None
    held = texts["math"][150:160]
    assert bits(positive_probability(model, held)) == bits(fasttext_probability(model, held))
