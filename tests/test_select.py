"""``trait select``: absolute, percentile and token-budget thresholds, exact and deterministic; edge cases."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.select import SelectConfig, Threshold, run_select
from trait.config import ConfigError, from_dict
from trait.contract import finished_dataset, validate_table

D, Q = "score_domain_math_v1", "score_quality_edu_v1"


@pytest.fixture(scope="module")
def frame(scored):
    return finished_dataset(scored).to_table().to_pandas()


def _select(spark, scored, tmp_path, name, **cfg):
    manifest = run_select(spark, from_dict(SelectConfig, cfg), scored, str(tmp_path / name))
    table = finished_dataset(str(tmp_path / name)).to_table()
    validate_table(table)
    return manifest, table.to_pandas()


def test_absolute_thresholds_keep_exactly_the_rows_at_or_above(spark, scored, frame, tmp_path):
    manifest, kept = _select(spark, scored, tmp_path, "abs", domain={"column": D, "min": 0.05},
                             quality={"column": Q, "min": 0.3})
    expected = frame[(frame[D] >= np.float32(0.05)) & (frame[Q] >= np.float32(0.3))]
    assert sorted(kept["id"]) == sorted(expected["id"])
    c = manifest["counts"]
    assert c["rows_in"] == len(frame) and c["rows_out"] == len(expected)
    assert c["tokens_out"] == expected["n_tokens"].sum()
    dropped = Counter()
    for s in c["by_source"].values():
        dropped.update({k: v["rows"] for k, v in s["dropped"].items()})
    assert sum(dropped.values()) == len(frame) - len(expected)
    # A row failing the quality threshold is counted as below_quality, whatever its domain score.
    assert dropped["below_quality"] == (frame[Q] < np.float32(0.3)).sum()


def test_percentile_is_the_exact_nearest_rank_value(spark, scored, frame, tmp_path):
    manifest, kept = _select(spark, scored, tmp_path, "pct", domain={"column": D, "percentile": 90})
    values = np.sort(frame[D].to_numpy())
    expected = values[math.floor(0.9 * len(values))]  # rank floor(p n) + 1, 1-based
    assert manifest["thresholds"]["domain"]["score"] == float(expected)
    assert len(kept) == (frame[D] >= expected).sum()
    assert abs(len(kept) - 0.1 * len(frame)) <= 1 + (frame[D] == expected).sum()


def test_token_budget_takes_the_best_tokens_among_quality_documents(spark, scored, frame, tmp_path):
    budget = 50_000
    manifest, kept = _select(spark, scored, tmp_path, "budget", quality={"column": Q, "min": 0.2},
                             domain={"column": D, "token_budget": budget})
    t = manifest["thresholds"]["domain"]
    eligible = frame[frame[Q] >= np.float32(0.2)]
    assert t["budget_reached"] and kept["n_tokens"].sum() >= budget
    assert (kept[Q] >= np.float32(0.2)).all() and kept[D].min() == np.float32(t["score"])
    # The threshold is the highest that reaches the budget: without the documents at it, it is not reached.
    assert kept[kept[D] > np.float32(t["score"])]["n_tokens"].sum() < budget
    assert sorted(kept["id"]) == sorted(eligible[eligible[D] >= np.float32(t["score"])]["id"])


def test_selection_is_deterministic(spark, scored, tmp_path):
    cfg = {"domain": {"column": D, "token_budget": 30_000}, "quality": {"column": Q, "percentile": 25}}
    m1, _ = _select(spark, scored, tmp_path, "one", **cfg)
    m2, _ = _select(spark, scored, tmp_path, "two", **cfg)
    assert m1["thresholds"] == m2["thresholds"] and m1["counts"] == m2["counts"]
    one, two = (sorted((tmp_path / n).glob("part-*.parquet")) for n in ("one", "two"))
    assert [pq.read_table(p) for p in one] == [pq.read_table(p) for p in two]


def test_a_threshold_that_keeps_nothing_and_a_budget_beyond_the_corpus(spark, scored, frame, tmp_path):
    manifest, kept = _select(spark, scored, tmp_path, "none", domain={"column": D, "min": 1})
    assert frame[D].max() < 1 and len(kept) == 0 and manifest["counts"]["rows_out"] == 0
    assert (tmp_path / "none" / "_SUCCESS").exists()
    manifest, kept = _select(spark, scored, tmp_path, "all", domain={"column": D, "token_budget": 10**12})
    assert not manifest["thresholds"]["domain"]["budget_reached"] and len(kept) == len(frame)


def _unscored(tmp_path) -> str:
    """Three documents whose domain scores are null or NaN; quality scores 0.5, null, 0.7."""
    out = tmp_path / "nulls"
    out.mkdir()
    table = pa.table({"id": ["a", "b", "c"], "source": ["s"] * 3, "text": ["x", "y", "z"],
                      "url": pa.nulls(3, pa.string()),  # a column of nulls is still a string column
                      "n_tokens": pa.array([1, 2, 3], pa.int64()),
                      D: pa.array([None, float("nan"), None], pa.float32()),
                      Q: pa.array([0.5, None, 0.7], pa.float32())})
    pq.write_table(table, out / "part-00000.parquet")
    (out / "manifest.json").write_text(json.dumps({"job": "score"}))
    (out / "_SUCCESS").write_text("")
    return str(out)


def test_null_and_nan_scores_are_never_kept_and_are_counted(spark, tmp_path):
    # NaN sorts above every number in Spark, so without care it would pass any threshold.
    out = _unscored(tmp_path)
    manifest = run_select(spark, from_dict(SelectConfig, {"domain": {"column": D, "percentile": 50}}), str(out),
                          str(tmp_path / "sel"))
    assert manifest["thresholds"]["domain"]["score"] is None
    assert manifest["counts"]["rows_out"] == 0
    assert manifest["counts"]["by_source"]["s"]["dropped"] == {"null_domain_score": {"rows": 3, "tokens": 6}}


def test_threshold_forms_and_their_errors(spark, scored, tmp_path):
    assert Threshold.parse(f"{D}:token_budget=1e6") == Threshold(column=D, token_budget=1_000_000)
    assert Threshold.parse(f"{D}:percentile=90").percentile == 90.0
    for bad in (f"{D}>=0.5", f"{D}:top=5", f"{D}:percentile=100"):
        with pytest.raises(ConfigError):
            Threshold.parse(bad)
    with pytest.raises(ConfigError, match="exactly one of min, percentile, token_budget"):
        from_dict(SelectConfig, {"domain": {"column": D, "min": 0.1, "percentile": 5}})
    with pytest.raises(ConfigError, match="only one threshold can be a token budget"):
        from_dict(SelectConfig, {"domain": {"column": D, "token_budget": 5}, "quality": {"column": Q,
                                                                                          "token_budget": 5}})
    with pytest.raises(ConfigError, match="column 'score_nope_v1' not found; score columns are"):
        run_select(spark, from_dict(SelectConfig, {"domain": {"column": "score_nope_v1", "min": 0}}), scored,
                   str(tmp_path / "x"))
    assert not Path(tmp_path / "x").exists()


@pytest.mark.parametrize(("text", "message"), [
    (f"{D}:percentile=abc", "percentile 'abc' is not a number"),
    (f"{D}:min=", "min '' is not a number"),
    (f"{D}:token_budget=inf", "token_budget must be a whole number of tokens"),
    (f"{D}:token_budget=nan", "token_budget must be a whole number of tokens"),
    (f"{D}:token_budget=12.5", "token_budget must be a whole number of tokens"),
    (f"{D}:token_budget=0", "token_budget must be a positive number of tokens, got 0"),
    (f"{D}:token_budget=-5", "token_budget must be a positive number of tokens, got -5"),
    (f"{D}:min=nan", "min must be a score in \\[0, 1\\]"),
    (f"{D}:min=1.5", "min must be a score in \\[0, 1\\]"),
    (f"{D}:min=-0.1", "min must be a score in \\[0, 1\\]"),
    (f"{D}:percentile=nan", "percentile must be in \\[0, 100\\)"),
    (f"{D}:percentile=-1", "percentile must be in \\[0, 100\\)"),
    (f"{D}:percentile=inf", "percentile must be in \\[0, 100\\)"),
])
def test_thresholds_that_are_not_numbers_or_out_of_range_are_one_line_errors(text, message):
    """``percentile=abc`` and ``token_budget=inf`` were a ValueError and an OverflowError trace."""
    with pytest.raises(ConfigError, match=message) as caught:
        Threshold.parse(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("threshold", [{"percentile": "abc"}, {"min": float("nan")}, {"min": 2},
                                       {"token_budget": float("inf")}, {"token_budget": 0}, {"percentile": 100}])
def test_the_config_path_refuses_the_same_thresholds(threshold):
    with pytest.raises(ConfigError, match="percentile|min|token_budget"):
        from_dict(SelectConfig, {"domain": {"column": D, **threshold}})


def test_selects_over_missing_scores_warn_and_say_what_they_keep(spark, tmp_path, caplog):
    """A percentile over no score warns as a budget over no score does; a budget it cannot reach says what it kept."""
    data = _unscored(tmp_path)
    nothing = f"no document has a {D} score (null or NaN): keeping nothing"
    cases = [({"domain": {"column": D, "percentile": 50}}, f"domain threshold: percentile 50.0: {nothing}", 0),
             ({"domain": {"column": D, "token_budget": 10}}, f"domain threshold: token budget 10 not reached: "
              f"{nothing}", 0),
             ({"domain": {"column": D, "token_budget": 10}, "quality": {"column": Q, "min": 0.6}},
              f"token budget 10 not reached: no document that passes the quality threshold has a {D} score", 0),
             ({"domain": {"column": Q, "token_budget": 10}},
              "domain threshold: token budget 10 not reached: keeping every document with a score, 2 documents of "
              "4 tokens", 2)]
    for i, (cfg, warning, rows_out) in enumerate(cases):
        caplog.clear()
        with caplog.at_level("WARNING", logger="spark_jobs.select"):
            manifest = run_select(spark, from_dict(SelectConfig, cfg), data, str(tmp_path / f"sel{i}"))
        warnings = [r.getMessage() for r in caplog.records if r.name == "spark_jobs.select"]
        assert len(warnings) == 1 and warning in warnings[0], (cfg, warnings)
        assert manifest["counts"]["rows_out"] == rows_out
