"""``trait baseline random``: the seeded sample is exactly the lowest keys to the budget; budgets from a selection,
and bad input (empty pool, budget of nothing, budget above the pool, missing or unfinished budget source)."""

from __future__ import annotations

import pytest

from spark_jobs.baselines import RandomConfig, run_random
from spark_jobs.dataset import DatasetError
from trait.config import ConfigError, from_dict
from trait.contract import finished_dataset, validate_table

from .support.baselines import expected_cut, fake_dataset, spark_uniform


@pytest.fixture(scope="module")
def pool(small_corpus):
    return finished_dataset(small_corpus["pool"]).to_table().to_pandas()


def _random(spark, small_corpus, tmp_path, name, **cfg):
    manifest = run_random(spark, from_dict(RandomConfig, cfg), small_corpus["pool"], str(tmp_path / name))
    table = finished_dataset(str(tmp_path / name)).to_table()
    validate_table(table)
    return manifest, table.to_pandas()


def test_random_keeps_exactly_the_lowest_seeded_keys_to_the_budget(spark, small_corpus, pool, tmp_path):
    budget = 200_000
    manifest, kept = _random(spark, small_corpus, tmp_path, "r1", seed=7, token_budget=budget)
    assert set(kept["id"]) == expected_cut(pool, spark_uniform(7, pool["id"]), budget, keep_high=False)
    c = manifest["counts"]
    assert c["tokens_out"] == kept["n_tokens"].sum() >= budget
    assert c["tokens_out"] - budget < kept["n_tokens"].max()  # overshoot below one document
    assert c["rows_in"] == len(pool) and c["rejected_rows"] == {"not_sampled": len(pool) - len(kept)}
    assert manifest["budget"] == {"tokens": budget, "from": None, "reached": True} and manifest["seed"] == 7
    assert sum(s["tokens_in"] for s in c["by_source"].values()) == pool["n_tokens"].sum()
    # Same seed, new output: the same rows; another seed: another sample of the same size in tokens.
    _, again = _random(spark, small_corpus, tmp_path, "r1-again", seed=7, token_budget=budget)
    _, other = _random(spark, small_corpus, tmp_path, "r2", seed=8, token_budget=budget)
    assert sorted(again["id"]) == sorted(kept["id"]) and set(other["id"]) != set(kept["id"])
    assert other["n_tokens"].sum() >= budget
    # A rerun with the same config and inputs is a no-op (same manifest, same wall time).
    assert run_random(spark, from_dict(RandomConfig, {"seed": 7, "token_budget": budget}), small_corpus["pool"],
                      str(tmp_path / "r1")) == manifest


def test_budget_from_a_selection_matches_its_tokens_out(spark, small_corpus, pool, tmp_path):
    first, _ = _random(spark, small_corpus, tmp_path, "src", seed=1, token_budget=123_456)
    manifest, kept = _random(spark, small_corpus, tmp_path, "matched", seed=2, budget_from=str(tmp_path / "src"))
    tokens = first["counts"]["tokens_out"]
    assert manifest["budget"]["tokens"] == tokens and manifest["budget"]["from"] == str(tmp_path / "src")
    assert set(kept["id"]) == expected_cut(pool, spark_uniform(2, pool["id"]), tokens, keep_high=False)


def test_budget_above_the_pool_keeps_everything_and_says_so(spark, small_corpus, pool, tmp_path):
    manifest, kept = _random(spark, small_corpus, tmp_path, "all", token_budget=10 * int(pool["n_tokens"].sum()))
    assert len(kept) == len(pool) and manifest["budget"]["reached"] is False
    assert manifest["counts"]["rows_rejected_by_reason"] == 0


def test_a_budget_from_a_selection_that_kept_nothing_is_refused_as_a_budget_of_0_is(spark, small_corpus, tmp_path):
    empty = fake_dataset(tmp_path / "none", {"counts": {"rows_out": 0, "tokens_out": 0}, "tokenizer": "words"})
    with pytest.raises(ConfigError, match=f"{empty} kept 0 tokens, and a budget must be a positive number of tokens"):
        run_random(spark, from_dict(RandomConfig, {"budget_from": empty}), small_corpus["pool"],
                   str(tmp_path / "nothing"))
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(ConfigError, match="token_budget must be a positive number of tokens, got 0"):
        from_dict(RandomConfig, {"token_budget": 0})


@pytest.mark.parametrize(("setting", "message"), [
    ({"num_buckets": 0}, "num_buckets must be in \\[1, 16777216\\]"),
    ({"num_buckets": 1 << 40}, "num_buckets must be in \\[1, 16777216\\]"),
    ({"min_example_length": -1}, "min_example_length and memo_bigrams must be >= 0"),
    ({"memo_bigrams": -1}, "min_example_length and memo_bigrams must be >= 0"),
    ({"token_budget": -3}, "token_budget must be a positive number of tokens"),
])
def test_nonsense_dsir_settings_are_refused(setting, message):
    from spark_jobs.dsir import DsirConfig

    with pytest.raises(ConfigError, match=message):
        from_dict(DsirConfig, {"token_budget": 100, **setting})


def test_bad_budgets_and_inputs_are_clear_errors(spark, small_corpus, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of token_budget"):
        from_dict(RandomConfig, {})
    with pytest.raises(ConfigError, match="exactly one of token_budget"):
        from_dict(RandomConfig, {"token_budget": 5, "budget_from": "x"})
    with pytest.raises(ConfigError, match="positive"):
        from_dict(RandomConfig, {"token_budget": 0})
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for source, error, text in [(str(tmp_path / "missing"), DatasetError, "not a finished dataset"),
                                (str(unfinished), DatasetError, "not a finished dataset"),
                                (fake_dataset(tmp_path / "no-count", {"counts": {}}), DatasetError, "tokens_out"),
                                (fake_dataset(tmp_path / "hf", {"counts": {"tokens_out": 5}, "tokenizer": "hf:x"}),
                                 ConfigError, "another tokenizer|counted tokens with")]:
        with pytest.raises(error, match=text):
            run_random(spark, from_dict(RandomConfig, {"budget_from": source}), small_corpus["pool"],
                       str(tmp_path / "out"))
    empty_pool = fake_dataset(tmp_path / "empty-pool", {"counts": {"rows_out": 0}})
    with pytest.raises(DatasetError, match="has no documents"):
        run_random(spark, from_dict(RandomConfig, {"token_budget": 10}), empty_pool, str(tmp_path / "out"))
