"""``trait baseline dsir``: features pinned to the reference package (``data-selection``), log importance weights
that agree with its ``HashedNgramDSIR`` on the same data, and Gumbel top-k resampling to a token budget."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import regex
from data_selection import HashedNgramDSIR
from data_selection.hashed_ngram_dsir import get_ngram_counts, hash_buckets, wpt

from spark_jobs.dataset import DatasetError
from spark_jobs.dsir import LOG_WEIGHT, DsirConfig, Featurizer, bucket_counts, log_weights, run_dsir
from tests.support.baselines import expected_cut, fake_dataset, spark_uniform
from trait.config import from_dict
from trait.contract import finished_dataset, validate_table

# The features in plain Python, the reference the kernel is held to: nltk's WordPunctTokenizer pattern on the
# ``regex`` engine with nltk's flags, and the reference's bucket formula.
_TOKEN = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def hash_bucket(ngram: str, num_buckets: int) -> int:
    return int.from_bytes(hashlib.sha256(ngram.encode("utf-8")).digest(), "big") % num_buckets


def ngrams(text: str) -> tuple[list[str], list[str]]:
    """(unigrams, bigrams) of one text, in order."""
    words = tokenize(text)
    return words, [f"{a} {b}" for a, b in zip(words, words[1:])]


def reference_buckets(text: str, num_buckets: int) -> tuple[list[int], list[int]]:
    """(unigram buckets, bigram buckets) of one text, in order."""
    return tuple([hash_bucket(g, num_buckets) for g in grams] for grams in ngrams(text))


# Texts where a byte walk could part from the regex: no token, one token (no bigram; neighbours must not pair
# across texts), punctuation runs against words and spaces, accents, CJK, 4-byte emoji, characters where
# ``regex`` and ``re`` disagree (superscripts), combining marks, Unicode spaces and format characters, NUL and
# control characters, lower-casing that changes the length (``İ``), and tokens and bigrams around SHA-256's block
# sizes (55, 56, 64, 119, 120 bytes) and far past them.
TRICKY = ["", "  \n\t ", "x", "alpha", "beta", "Hello, World!! ... (ok)?", "don't stop—never,again;a.b",
          "Ünïcödé x² ½ — $\\frac{a}{b}$ ⅷ ١٢٣", "Café CRÈME brûlée", "日本語のテキスト、です。",
          "emoji 😀😀 ok 👍🏽! 🇫🇷x", "İstanbul ǅ ß ΣΑΣ",
          "ab\u0301c d\u0300 e\u200bf g\u00a0h i\u2028j \x85 k\u3000l m\ufeffn", "\x00nul\x00 \x1c\x1d\x1e\x1f \x7f",
          "é" * 28, "!" * 130 + "word" + "?" * 64,
          " ".join("x" * k for k in (1, 54, 55, 56, 57, 63, 64, 65, 118, 119, 120, 300)),
          " ".join(f"{'y' * 27} {'z' * k}" for k in (26, 27, 28, 35, 36, 37, 90, 91, 92)),
          "中" * 40 + " 中 " + "😀" * 20, "the the the cat the cat"]


def test_hash_is_pinned_and_equals_the_reference():
    grams = ["the", "math", "x ^", "théorème", "a b"]
    assert [hash_bucket(g, 10_000) for g in grams] == [8288, 9680, 6325, 3955, 1685]  # golden values
    assert [hash_bucket(g, 10_000) for g in grams] == [hash_buckets(g) for g in grams]
    for word, bucket in (("the", 8288), ("math", 9680), ("théorème", 3955)):  # the kernel's SHA-256, unmemoised
        assert np.flatnonzero(bucket_counts([word], 10_000, 0)).tolist() == [bucket]


@pytest.mark.parametrize("num_buckets", [10_000, 1, 7, (1 << 24) - 1])
def test_kernel_counts_equal_plain_python_with_any_memo(num_buckets):
    texts = TRICKY * 3  # the second and third copies are looked up in the memo
    expected = np.zeros(num_buckets, dtype=np.int64)
    for text in texts:
        np.add.at(expected, sum(reference_buckets(text, num_buckets), []), 1)
    distinct = len({g for t in TRICKY for grams in ngrams(t) for g in grams})
    # 0: nothing memoised; 1 and 5: full within the first texts, later n-grams hashed past it; 10^6: all kept.
    for max_pairs in (0, 1, 5, 10**6):
        featurizer = Featurizer(num_buckets, max_pairs)
        for _ in range(2):  # the second batch starts with the first's memo
            counts, weights, words = featurizer.features(texts)
            assert np.array_equal(counts, expected), max_pairs
            assert not weights.any() and list(words) == [len(tokenize(t)) for t in texts]
        assert featurizer._entries[0] == min(max_pairs, distinct)  # one entry per distinct n-gram, never more
    assert bucket_counts([], num_buckets, 10).shape == (num_buckets,) and not bucket_counts([], num_buckets, 10).any()


def test_kernel_log_weights_per_text_are_the_python_ones_to_the_bit():
    ratio = np.random.default_rng(0).normal(size=10_000)
    texts = TRICKY * 2
    uni, bi = zip(*(reference_buckets(t, 10_000) for t in texts))
    # As the Python featurizer summed them: unigrams in order, bigrams in order, then the two sums added.
    docs = range(len(texts))
    expected = (np.bincount([d for d in docs for _ in uni[d]], weights=ratio[sum(uni, [])], minlength=len(texts))
                + np.bincount([d for d in docs for _ in bi[d]], weights=ratio[sum(bi, [])], minlength=len(texts)))
    for max_pairs in (0, 5, 10**6):
        weights, words = log_weights(texts, ratio, max_pairs)
        assert weights.dtype == np.float64 and np.array_equal(weights, expected), max_pairs
        assert list(words) == [len(u) for u in uni]
    weights, words = log_weights([], ratio, 10)
    assert len(weights) == len(words) == 0
    assert [bucket_counts(t, 10_000, 10).sum() for t in (["alpha", "beta"], ["alpha beta"])] == [2, 3]  # no bigram


def test_a_lone_surrogate_is_an_encoding_error_as_in_the_reference():
    with pytest.raises(UnicodeEncodeError):
        hash_buckets("a\ud800b")  # the reference hashes UTF-8, which has no lone surrogates
    for text in ("a\ud800b", "\udc00", "ok \ud83d\ude00"):
        with pytest.raises(UnicodeEncodeError, match="text 1 of the batch"):
            bucket_counts(["fine", text], 10_000, 100)
        with pytest.raises(UnicodeEncodeError, match="text 1 of the batch"):
            log_weights(["fine", text], np.zeros(10_000), 100)


@pytest.fixture(scope="module")
def texts(small_corpus):
    pool = finished_dataset(small_corpus["pool"]).to_table().to_pandas()
    seed = finished_dataset(small_corpus["seed"]).to_table().to_pandas()
    return pool, seed


def test_features_equal_the_reference_counts(texts):
    pool, seed = texts
    sample = list(pool["text"][:60]) + list(seed["text"][:60]) + ["", "x", "Ünïcödé x² ½ — $\\frac{a}{b}$"]
    assert all(tokenize(t) == wpt.tokenize(t.lower()) for t in sample)
    reference = [get_ngram_counts(t) for t in sample]
    assert np.array_equal(bucket_counts(sample, 10_000, 50), sum(reference))  # tiny memo: the unmemoised path too
    ratio = np.random.default_rng(0).normal(size=10_000)
    weights, words = log_weights(sample, ratio, 1_000_000)
    np.testing.assert_allclose(weights, [ratio @ c for c in reference], rtol=1e-9, atol=1e-9)
    assert list(words) == [len(wpt.tokenize(t.lower())) for t in sample]


@pytest.fixture(scope="module")
def reference_weights(texts, tmp_path_factory):
    """The reference package's log importance weights of every pool document, by id (seed = target)."""
    pool, seed = texts
    root = tmp_path_factory.mktemp("reference")
    for name, frame in (("raw", pool), ("target", seed)):
        with open(root / f"{name}.jsonl", "w") as fh:
            fh.writelines(json.dumps({"text": t}) + "\n" for t in frame["text"])
    dsir = HashedNgramDSIR([str(root / "raw.jsonl")], [str(root / "target.jsonl")], str(root / "cache"),
                           num_proc=1)
    dsir.fit_importance_estimator(num_tokens_to_fit="all")
    dsir.compute_importance_weights()
    return dict(zip(pool["id"], np.load(root / "cache/log_importance_weights/0.npy")))


def test_log_weights_agree_with_the_reference(spark, small_corpus, texts, reference_weights, tmp_path):
    pool, _ = texts
    # Budget above the pool and no length filter: every document comes out with its weight.
    cfg = {"token_budget": 10**12, "min_example_length": 0}
    manifest = run_dsir(spark, from_dict(DsirConfig, cfg), small_corpus["pool"], small_corpus["seed"],
                        str(tmp_path / "all"))
    out = finished_dataset(str(tmp_path / "all")).to_table().to_pandas()
    assert len(out) == len(pool) and manifest["budget"]["reached"] is False
    ours = out[LOG_WEIGHT].to_numpy(np.float64)
    theirs = np.array([reference_weights[i] for i in out["id"]])
    pearson = np.corrcoef(ours, theirs)[0, 1]
    print(f"Pearson r of log importance weights, ours vs data-selection: {pearson:.9f}")
    assert pearson >= 0.99
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-3)  # float32 storage of the same values
    assert manifest["dsir"]["raw_ngrams"] > manifest["dsir"]["target_ngrams"] > 0


def test_gumbel_top_k_to_a_budget_is_exact_seeded_and_favours_high_weights(spark, small_corpus, texts,
                                                                           reference_weights, tmp_path):
    pool, _ = texts
    budget = 300_000

    def sample(name, seed):
        cfg = from_dict(DsirConfig, {"token_budget": budget, "seed": seed})
        manifest = run_dsir(spark, cfg, small_corpus["pool"], small_corpus["seed"], str(tmp_path / name))
        table = finished_dataset(str(tmp_path / name)).to_table()
        validate_table(table)
        return manifest, table.to_pandas()

    manifest, kept = sample("s1", 1)
    # Independently: reference weights + Gumbel noise from the seeded hash; documents of >= 100 words.
    weights = np.array([reference_weights[i] for i in pool["id"]])
    key = weights - np.log(-np.log(spark_uniform(1, pool["id"])))
    words = np.array([len(wpt.tokenize(t.lower())) for t in pool["text"]])
    eligible = pool[words >= 100].reset_index(drop=True)
    assert set(kept["id"]) == expected_cut(eligible, key[words >= 100], budget, keep_high=True)
    c = manifest["counts"]
    assert c["tokens_out"] >= budget and c["tokens_out"] - budget < kept["n_tokens"].max()
    assert c["rejected_rows"] == {"too_short": int((words < 100).sum()),
                                  "not_sampled": int((words >= 100).sum()) - len(kept)}
    assert c["rows_in"] == c["rows_out"] + c["rows_rejected_by_reason"] == len(pool)
    rejected = ~pool["id"].isin(kept["id"]) & (words >= 100)
    assert kept[LOG_WEIGHT].mean() > weights[rejected.to_numpy()].mean()
    # Same seed: the same rows. Another seed: exactly the independent expectation for that seed. On real text the
    # log weights of long documents lie hundreds apart, so Gumbel(0, 1) noise rarely moves the cut (the reference
    # behaves the same); with one bucket every weight is 0 and the noise alone decides: a uniform sample.
    _, again = sample("s1-again", 1)
    _, other = sample("s2", 2)
    assert sorted(again["id"]) == sorted(kept["id"])
    key2 = weights - np.log(-np.log(spark_uniform(2, pool["id"])))
    assert set(other["id"]) == expected_cut(eligible, key2[words >= 100], budget, keep_high=True)
    flat = {}
    for seed in (1, 2):
        cfg = from_dict(DsirConfig, {"token_budget": budget, "seed": seed, "num_buckets": 1})
        run_dsir(spark, cfg, small_corpus["pool"], small_corpus["seed"], str(tmp_path / f"flat{seed}"))
        flat[seed] = set(finished_dataset(str(tmp_path / f"flat{seed}")).to_table(columns=["id"])["id"].to_pylist())
        uniform = -np.log(-np.log(spark_uniform(seed, pool["id"])))
        assert flat[seed] == expected_cut(eligible, uniform[words >= 100], budget, keep_high=True)
    assert flat[1] != flat[2]


def test_bad_input_is_a_clear_error(spark, small_corpus, tmp_path):
    empty = fake_dataset(tmp_path / "empty", {"counts": {"rows_out": 0}})
    cfg = from_dict(DsirConfig, {"token_budget": 1000})
    with pytest.raises(DatasetError, match="target .* has no documents"):
        run_dsir(spark, cfg, small_corpus["pool"], empty, str(tmp_path / "out"))
    with pytest.raises(DatasetError, match="pool .* has no documents"):
        run_dsir(spark, cfg, empty, small_corpus["seed"], str(tmp_path / "out"))
    with pytest.raises(DatasetError, match="not a finished dataset"):
        run_dsir(spark, from_dict(DsirConfig, {"budget_from": str(tmp_path / "nowhere")}), small_corpus["pool"],
                 small_corpus["seed"], str(tmp_path / "out"))
