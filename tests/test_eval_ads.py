"""The ads tasks' data and scoring, the metrics and intervals against hand-computed values, the judge's parser,
task-name resolution and the errors a user can cause. No model and no server: seconds."""

from __future__ import annotations

import math

import pytest
from lm_eval.api.metrics import mean

from eval.backends import check_model_dir
from eval.judge import parse_verdict
from eval.metrics import (
    bootstrap_ci,
    distinct_1,
    distinct_2,
    distinct_n,
    jackknife_ci,
    roc_auc,
    score_ci,
    stratified_bootstrap_ci,
    wilson,
)
from eval.results import markdown_table
from eval.run import TASKS_DIR, _KeepingTaskManager, resolve_tasks
from trait import UserError


def test_wilson_matches_hand_computation():
    # 8/10: centre (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.71674; half 1.96·sqrt(0.016 + 0.009604) / 1.38415 = 0.22658
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    # 0/32 (SAT's size): [0, z²/(n + z²)] = [0, 3.8415/35.8415]
    assert wilson(0, 32) == (0.0, pytest.approx(0.10718, abs=1e-4))
    assert wilson(32, 32)[1] == 1.0 and wilson(32, 32)[0] == pytest.approx(1 - 0.10718, abs=1e-4)


def test_roc_auc_and_distinct_n_match_hand_computation():
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ranked right
    assert roc_auc([(0.1, 0), (0.4, 0), (0.35, 1), (0.8, 1)]) == 0.75
    assert math.isnan(roc_auc([(0.1, 1), (0.2, 1)]))  # one class: undefined, not 0.5
    # "a b a" + "A c": unigrams a b a a c (3 distinct of 5), bigrams ab ba ac (3 of 3)
    texts = ["a b a", "A c"]
    assert distinct_n(texts, 1) == distinct_1(texts) == 0.6
    assert distinct_2(texts) == 1.0
    assert distinct_n(["one"], 2) == 0.0


def test_intervals_bootstrap_jackknife_and_choice():
    values = [1.0, 2.0, 3.0, 4.0]
    # jackknife of a mean is the textbook interval: se = s / sqrt(n) = sqrt(5/3) / 2
    lo, hi = jackknife_ci(values, mean)
    assert (lo, hi) == (pytest.approx(2.5 - 1.959964 * 0.645497, abs=1e-5), pytest.approx(2.5 + 1.959964 * 0.645497,
                                                                                           abs=1e-5))
    spread = [i * 0.37 % 5 for i in range(40)]
    first = bootstrap_ci(spread, mean, seed=3)
    assert first == bootstrap_ci(spread, mean, seed=3) and first != bootstrap_ci(spread, mean, seed=4)
    assert min(spread) < first[0] < mean(spread) < first[1] < max(spread)
    assert bootstrap_ci([5.0] * 6, mean) == (5.0, 5.0)

    binary = score_ci([1, 0, 1, 1, 0, 1, 1, 1, 1, 1], mean)
    assert binary["ci_method"] == "wilson" and binary["ci"] == pytest.approx(list(wilson(8, 10)))
    auc = score_ci([(0.1, 0), (0.4, 0), (0.35, 1), (0.8, 1), (0.2, 0), (0.9, 1)], roc_auc)
    assert auc["ci_method"].startswith("bootstrap") and 0 <= auc["ci"][0] <= auc["ci"][1] <= 1
    titles = ["red shoe", "blue shoe", "red hat", "green sock"]
    distinct = score_ci(titles, distinct_1)
    assert distinct["ci_method"] == "jackknife" and distinct["ci"][0] < distinct_1(titles) < distinct["ci"][1]
    # two tasks' means averaged: every resample lies between the two extremes
    lo, hi = stratified_bootstrap_ci([([1, 1, 1], mean), ([0, 0, 1, 0], mean)])
    assert 0.5 <= lo <= hi <= 1.0


def test_parse_verdict_reasons():
    assert parse_verdict("A") == ("A", None)
    assert parse_verdict(" b.\n") == ("B", None)
    assert parse_verdict("Tie") == ("tie", None)
    assert parse_verdict("  ") == (None, "empty_reply")
    assert parse_verdict("both are fine") == (None, "no_verdict")
    assert parse_verdict("A or B") == (None, "ambiguous")


@pytest.fixture(scope="module")
def manager():
    return _KeepingTaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def test_task_names_resolve_and_unknown_ones_list_what_exists(manager):
    assert resolve_tasks(["ads", "qadsm", "trait_webis_ads", "ads"], manager) == [
        "trait_ads_all", "trait_qadsm", "trait_webis_ads"]
    assert resolve_tasks(["math", "gsm8k"], manager) == ["trait_math_all", "trait_gsm8k"]
    with pytest.raises(UserError, match="unknown task 'hellaswag'.*trait_product_title"):
        resolve_tasks(["hellaswag"], manager)


def test_ads_task_documents(manager):
    loaded = manager.load(["trait_qadsm", "trait_webis_ads", "trait_product_title"])["tasks"]
    qadsm, webis, titles = (loaded[n] for n in ("trait_qadsm", "trait_webis_ads", "trait_product_title"))
    test = list(qadsm.test_docs())
    assert len(test) == 10_000 and sum(d["label"] for d in test) == 5_000 and len(list(qadsm.training_docs())) == 9_000
    assert {d["label"] for d in test[:8]} == {0, 1}  # hash order: a --limit prefix mixes labels
    assert set(test[0]) == {"query", "ad_title", "ad_description", "label"}
    docs = list(webis.test_docs())
    assert len(docs) == 2_600 and sum(d["label"] for d in docs) == 913
    assert {d["label"] for d in docs[:8]} == {0, 1}
    evaluated, pool = list(titles.test_docs()), list(titles.training_docs())
    assert (len(evaluated), len(pool)) == (1_354, 195)
    assert not {d["title"] for d in evaluated} & {d["title"] for d in pool}
    assert all(not d["description"].startswith(d["title"]) and len(d["description"]) <= 600 for d in evaluated)
    # the prompt and the scorer: choices [No, Yes], score = ll(Yes) - ll(No)
    assert qadsm.doc_to_text(test[0]).endswith("\nRelevant:") and qadsm.doc_to_choice(test[0]) == ["No", "Yes"]
    scored = qadsm.process_results({"label": 1}, [(-3.0, False), (-1.0, True)])
    assert scored == {"roc_auc": (2.0, 1), "acc": 1.0}
    assert titles.process_results(evaluated[0], [" Sony camera\nmore"]) == {"distinct_1": "Sony camera",
                                                                            "distinct_2": "Sony camera"}


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        check_model_dir(str(tmp_path / "missing"))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="not a Hugging Face model directory: no config.json"):
        check_model_dir(str(tmp_path))


def test_markdown_table_rows():
    result = {"model": "m", "backend": "hf", "limit": 4, "tasks": {"t": {
        "acc": {"value": 0.5, "ci": [0.2, 0.8], "n": 4, "metric": "acc", "filter": "none"},
        "exact_match,strict-match": {"value": 0.25, "ci": [0.05, 0.7], "n": 4, "metric": "exact_match",
                                     "filter": "strict-match"},
        "win_rate": {"value": None, "ci": [None, None], "n": 0, "computed": False, "reason": "no judge"}}}}
    table = markdown_table(result).splitlines()
    assert table[2] == "| task | metric | filter | value | 95% CI | n |"
    assert "| t | acc | none | 0.5000 | [0.2000, 0.8000] | 4 |" in table
    assert "| t | exact_match | strict-match | 0.2500 | [0.0500, 0.7000] | 4 |" in table
    assert "| t | win_rate | none | not computed: no judge | n/a | 0 |" in table
