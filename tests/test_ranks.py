"""trait.ranks: the one ROC-AUC (the classifiers' held-out metric and eval's aggregation) against sklearn's, and the
one cut convention of select and report against a brute-force reading of its definition. No Spark: milliseconds."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from eval.metrics import roc_auc as eval_roc_auc
from spark_jobs.classifier import binary_metrics
from trait.ranks import average_ranks, cut_weight, first_reaching, roc_auc


@pytest.mark.parametrize("seed", range(20))
def test_roc_auc_equals_sklearn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)  # both classes
    scores = rng.random(n) if seed % 2 else np.round(rng.random(n), 1)  # odd seeds: no ties; even: many
    expected = roc_auc_score(labels, scores)
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert eval_roc_auc(list(zip(scores, labels))) == pytest.approx(expected, abs=1e-12)
    assert binary_metrics(labels, scores)["roc_auc"] == pytest.approx(expected, abs=1e-12)
    assert np.array_equal(average_ranks(scores), rankdata(scores, method="average"))


def test_roc_auc_of_one_class_is_undefined():
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))
    assert math.isnan(roc_auc(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3])))


def test_percentile_50_of_ten_values_is_the_sixth():
    values = [(float(v), 1) for v in range(1, 11)]  # 1.0 .. 10.0, one document each
    (value, _), before = first_reaching(values, 1, cut_weight(50, 10))
    assert (value, before) == (6.0, 5)  # the lowest 5 dropped: the threshold keeps 6..10, the top 50%
    assert cut_weight(0, 10) == 1 and cut_weight(90, 10) == 10 and cut_weight(99.9, 10) == 10


def test_cut_weight_reads_the_decimal_written():
    # 29 / 100 * 100 is 28.999999999999996 in floats; 0.3 is just below 3/10. Neither moves the cut.
    assert cut_weight(29, 100) == 30 and cut_weight(0.3, 1000) == 4 and cut_weight(12.5, 8) == 2


@pytest.mark.parametrize("seed", range(30))
def test_cut_is_the_lowest_score_left_after_dropping_the_lowest_p_percent(seed):
    """Brute force on the definition: the smallest score whose cumulative weight exceeds p% of the total."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    scores = np.round(rng.random(n), 1)  # ties
    weights = rng.integers(1, 500, n)  # token counts
    p = float(rng.choice([0, 1, 5, 10, 25, 33.3, 50, 75, 90, 95, 99, 99.9]))
    distinct = sorted(set(scores.tolist()))
    entries = [(s, int(weights[scores == s].sum())) for s in distinct]
    total = int(weights.sum())
    expected = next(s for s in distinct if Fraction(int(weights[scores <= s].sum())) > Fraction(str(p)) * total / 100)
    (value, _), _ = first_reaching(entries, 1, cut_weight(p, total))
    assert value == expected
    # what a select at this cut keeps: at most (100 - p)% of the weight above it, the rest tied at it
    assert Fraction(int(weights[scores > value].sum())) <= Fraction(str(100 - p)) * total / 100


def test_first_reaching_says_when_the_total_falls_short():
    assert first_reaching([(1, 2), (2, 3)], 1, 6) is None
    assert first_reaching([(1, 2), (2, 3)], 1, 5) == ((2, 3), 2)
