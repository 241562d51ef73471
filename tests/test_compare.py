"""Side-by-side comparison of selections: per-source tokens and pairwise overlap equal a pandas recount."""

from __future__ import annotations

import pytest

from spark_jobs.compare import compare_selections, comparison_table
from spark_jobs.select import SelectConfig, run_select
from trait import UserError
from trait.config import from_dict
from trait.contract import finished_dataset

D, Q = "score_domain_math_v1", "score_quality_edu_v1"


def test_comparison_equals_a_recount_of_the_kept_ids(spark, scored, tmp_path):
    configs = {"by_domain": {"domain": {"column": D, "percentile": 70}},
               "by_quality": {"domain": {"column": Q, "percentile": 60}},
               "both": {"domain": {"column": D, "percentile": 50}, "quality": {"column": Q, "percentile": 50}}}
    paths = {}
    for name, cfg in configs.items():
        paths[name] = str(tmp_path / name)
        run_select(spark, from_dict(SelectConfig, cfg), scored, paths[name])
    result = compare_selections(spark, paths)

    frames = {n: finished_dataset(p).to_table(columns=["id", "source", "n_tokens"]).to_pandas()
              for n, p in paths.items()}
    for name, frame in frames.items():
        got = result["selections"][name]
        assert got["rows"] == len(frame) and got["tokens"] == frame["n_tokens"].sum()
        assert got["by_source"] == {k: int(v) for k, v in frame.groupby("source")["n_tokens"].sum().items()}
    pairs = {(o["a"], o["b"]): o for o in result["overlap"]}
    assert set(pairs) == {("by_domain", "by_quality"), ("by_domain", "both"), ("by_quality", "both")}
    for (a, b), o in pairs.items():
        shared = frames[a].merge(frames[b][["id"]], on="id")
        either = frames[a]["n_tokens"].sum() + frames[b]["n_tokens"].sum() - shared["n_tokens"].sum()
        assert o["rows"] == len(shared) and o["tokens"] == shared["n_tokens"].sum()
        assert o["jaccard_tokens"] == pytest.approx(shared["n_tokens"].sum() / either)
    # "both" keeps domain >= its median, so the rows it shares with by_domain (domain >= 70th percentile) are
    # exactly its rows at or above by_domain's cut: a non-empty, proper part of each here.
    assert 0 < pairs[("by_domain", "both")]["rows"] < min(len(frames["both"]), len(frames["by_domain"]))
    table = comparison_table(result)
    assert "| **total tokens** |" in table and "by_domain & both" in table


def test_comparison_needs_two_finished_selections(spark, scored, tmp_path):
    with pytest.raises(UserError, match="at least two"):
        compare_selections(spark, {"only": scored})
    with pytest.raises(UserError, match="not a finished dataset"):
        compare_selections(spark, {"a": scored, "b": str(tmp_path / "missing")})
