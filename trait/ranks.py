"""Rank statistics shared by the Spark jobs and eval (numpy only): ROC-AUC, and where an exact cumulative cut falls.

ROC-AUC is the Mann-Whitney U statistic: the chance that a random positive scores above a random negative, a tie
counting one half. Tied scores share their average rank, so ``(sum of positive ranks - P(P+1)/2) / (P N)`` is it.

The cut of ``trait select`` (``percentile``) and ``trait report`` (its percentile rows) is one convention: the
percentile p (0 <= p < 100) of a weighted score distribution is the lowest score kept when the lowest-scoring p% of
the weight is dropped, i.e. the smallest score whose cumulative weight (over scores <= it, ascending) exceeds
p% of the total. Weights are whole numbers (documents, tokens), so that is the first score whose cumulative weight
reaches ``cut_weight(p, total) = floor(p * total / 100) + 1``. Over 10 documents, percentile 50 is the 6th lowest
score: select keeps the documents scoring >= it (the top 5, and any tied with the 6th), and the report's p50 row
shows that same score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` in ascending order, tied values sharing their average rank; shape of ``values``."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of ``scores`` against 0/1 ``labels`` (1 = positive); NaN when only one label occurs."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(np.asarray(scores, dtype=float))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cut_weight(percentile: float, total: int) -> int:
    """The cumulative weight (of ``total``) at which the cut of ``percentile`` falls: floor(p * total / 100) + 1,
    computed on the decimal the user wrote (0.3 is 3/10, not the float just below it)."""
    return math.floor(Fraction(str(percentile)) * total / 100) + 1


def first_reaching(entries: Sequence[tuple], key: int, target: float) -> tuple[tuple, float] | None:
    """The first of ``entries`` (in the caller's order) at which the cumulative weight ``entry[key]`` reaches
    ``target``, and the weight before it; None when the total never reaches it."""
    before = 0
    for entry in entries:
        if before + entry[key] >= target:
            return entry, before
        before += entry[key]
    return None
