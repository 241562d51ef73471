"""``trait baseline dsir``: features pinned to the reference package (``data-selection``), log importance weights
that agree with its ``HashedNgramDSIR`` on the same data, and Gumbel top-k resampling to a token budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_selection import HashedNgramDSIR
from data_selection.hashed_ngram_dsir import get_ngram_counts, hash_buckets, wpt

from spark_jobs.dataset import DatasetError
from spark_jobs.dsir import LOG_WEIGHT, DsirConfig, bucket_counts, hash_bucket, log_weights, run_dsir, tokenize
from tests.support.baselines import expected_cut, fake_dataset, spark_uniform
from trait.config import from_dict
from trait.contract import finished_dataset, validate_table


def test_hash_is_pinned_and_equals_the_reference():
    ngrams = ["the", "math", "x ^", "théorème", "a b"]
    assert [hash_bucket(g, 10_000) for g in ngrams] == [8288, 9680, 6325, 3955, 1685]  # golden values
    assert [hash_bucket(g, 10_000) for g in ngrams] == [hash_buckets(g) for g in ngrams]


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
