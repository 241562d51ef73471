"""Metrics lm-eval lacks, and a 95% confidence interval for every score, computed from the per-sample values.

- ``roc_auc``: an lm-eval aggregation over per-sample ``(score, label)`` pairs (``trait.ranks.roc_auc``, checked
  against sklearn's in the tests; NaN when the sample holds one class only, since AUC is then undefined).
- ``distinct_1`` / ``distinct_2``: aggregations over the generated texts: distinct n-grams / all n-grams of the
  whole set of outputs (lower-cased whitespace words; Li et al. 2016's corpus-level form). 1.0: no n-gram repeats.
- ``score_ci``: the interval of a score. A mean of 0/1 values (accuracy, exact match) gets the Wilson score
  interval, which stays inside [0, 1] and is sound for small n (SAT has 32 items); distinct-n a jackknife
  interval (see ``jackknife_ci``); anything else (AUC, a mean of non-binary values) a seeded percentile bootstrap
  over the samples, recomputing the aggregation on each resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from trait import ranks

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_ITERS = 1000


def wilson(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``: centre (p + z²/2n) / (1 + z²/n),
    half-width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # at p = 0 (or 1) the bound is exactly 0 (or 1); the formula leaves float noise of ~1e-17 there
    return (0.0 if successes <= 0 else lo, 1.0 if successes >= n else hi)


def bootstrap_ci(values: Sequence, statistic: Callable[[list], float], iters: int = BOOTSTRAP_ITERS,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap: ``statistic`` of ``iters`` resamples (with replacement, same size) of ``values``;
    resamples where it is undefined (NaN, e.g. AUC of one class) are left out. Deterministic for a seed."""
    values = list(values)
    if not values:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stats = np.array([statistic([values[i] for i in rng.integers(0, len(values), len(values))])
                      for _ in range(iters)], dtype=float)
    stats = stats[~np.isnan(stats)]
    if not stats.size:
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    return (float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail)))


def stratified_bootstrap_ci(strata: Sequence[tuple[Sequence, Callable[[list], float]]], iters: int = BOOTSTRAP_ITERS,
                            seed: int = 0, level: float = 0.95) -> list[float | None]:
    """Interval of the unweighted mean of several tasks' scores: each resample redraws every task's per-sample
    values (within the task) and averages the tasks' aggregations. ``strata``: ``(values, aggregation)`` per task."""
    strata = [(list(values), agg) for values, agg in strata if len(values)]
    if not strata:
        return [None, None]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(iters):
        scores = [agg([values[i] for i in rng.integers(0, len(values), len(values))]) for values, agg in strata]
        stats.append(float(np.mean(scores)))
    stats = np.array(stats)
    stats = stats[~np.isnan(stats)]
    if not stats.size:
        return [None, None]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))]


def jackknife_ci(values: Sequence, statistic: Callable[[list], float], z: float = Z_95) -> tuple[float, float]:
    """Leave-one-out jackknife: value +- z * se, se² = (n-1)/n * sum((theta_i - mean theta)²).

    For distinct-n, where resampling with replacement is wrong: a resample repeats outputs, which the statistic
    counts as repeated n-grams, so every resample scores lower than the data (with 8 titles, 0.64 against a
    bootstrap interval of [0.27, 0.59]). Leaving one out never invents a repeat."""
    values = list(values)
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    theta = statistic(values)
    loo = np.array([statistic(values[:i] + values[i + 1:]) for i in range(n)], dtype=float)
    se = math.sqrt((n - 1) / n * float(np.sum((loo - loo.mean()) ** 2)))
    return (theta - z * se, theta + z * se)


def roc_auc(items: Sequence[tuple[float, int]]) -> float:
    """ROC-AUC of per-sample ``(score, label)`` pairs (label 1 = positive); NaN if only one label occurs. The
    classifiers' held-out AUC is the same function (``trait.ranks.roc_auc``)."""
    return ranks.roc_auc(np.array([int(label) for _, label in items]), np.array([float(s) for s, _ in items]))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / total n-grams over all ``texts`` (lower-cased whitespace words); 0.0 if there are none."""
    grams = []
    for text in texts:
        words = text.lower().split()
        grams += [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_1(texts: Sequence[str]) -> float:
    return distinct_n(texts, 1)


def distinct_2(texts: Sequence[str]) -> float:
    return distinct_n(texts, 2)


distinct_1.ci_method = distinct_2.ci_method = "jackknife"  # read by score_ci


def _is_binary(values: Sequence) -> bool:
    return all(isinstance(v, (int, float, bool)) and not isinstance(v, tuple) and v in (0, 1) for v in values)


def score_ci(values: Sequence, aggregation: Callable[[list], float], seed: int = 0) -> dict:
    """``{"ci": [lo, hi], "ci_method": ...}`` for a score aggregated from per-sample ``values``: Wilson when the
    aggregation is a mean and every value is 0 or 1, the jackknife when the aggregation asks for it
    (``ci_method = "jackknife"``), else the seeded bootstrap of ``aggregation``."""
    values = list(values)
    if getattr(aggregation, "__name__", "") == "mean" and _is_binary(values):
        lo, hi = wilson(sum(float(v) for v in values), len(values))
        method = "wilson"
    elif getattr(aggregation, "ci_method", None) == "jackknife":
        lo, hi = jackknife_ci(values, aggregation)
        method = "jackknife"
    else:
        lo, hi = bootstrap_ci(values, aggregation, seed=seed)
        method = f"bootstrap_percentile_{BOOTSTRAP_ITERS}"
    return {"ci": [_finite(lo), _finite(hi)], "ci_method": method}


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined bound is written as null."""
    return None if x is None or math.isnan(x) else float(x)
