"""The figures of ``trait report``, each from one Spark aggregation; only small tables reach the driver.

Conventions shared by every figure (the test computes them again with pandas):
- A score is *valid* when it is neither null nor NaN; nulls and NaNs are counted, never binned or kept.
- Histogram bin of a score s over [0, 1] with B bins: ``clip(floor(s * B), 0, B - 1)`` (s = 1.0 falls in the last
  bin; a score outside [0, 1], which no scorer writes, lands in an edge bin and shows in the column's min/max).
- Percentile p (document- or token-weighted): ``trait select``'s cut (``trait.ranks``), the smallest score s whose
  cumulative weight over scores <= s exceeds ``p * total / 100``: the lowest score left when the lowest-scoring p%
  are dropped. Exact: a fine histogram of ``B * FINE_PER_BIN`` bins finds the crossing bins, then the distinct
  values inside them give the score.
- Threshold t keeps a document when its valid score is >= t (as ``trait select`` does).
- Adaptive figures: the default threshold grid is quantile-spaced (0 and the document-weighted percentile cuts that
  keep ``GRID_KEEP`` percent of the documents), and where at least ``SKEW_SHARE`` of the documents fall in the
  lowest histogram bin, the histogram is re-binned on a log axis from the same fine histogram (``log_bins``).
"""

from __future__ import annotations

import math

from trait.ranks import cut_weight, first_reaching

# Fine bins per histogram bin. A power of two keeps the fine and coarse bins nested exactly: float64
# multiplication by 2^12 only shifts the exponent, so floor(s * B * 4096) // 4096 == floor(s * B) for every s.
FINE_PER_BIN = 4096
GRID_KEEP = (90, 75, 50, 25, 10, 5, 3, 1)  # percent of the documents each default grid threshold keeps (0: all)
GRID_PERCENTILES = [100 - k for k in GRID_KEEP]
SKEW_SHARE = 0.5  # share of the documents in the lowest bin from which the histogram gets a log axis


def quantile_thresholds(cuts: list[dict]) -> list[float]:
    """The default grid thresholds of a column: 0 and its percentile cuts (``[{"p", "score"}]``), ascending and
    distinct (a mass of tied scores makes several cuts one)."""
    return sorted({0.0, *(c["score"] for c in cuts if c["score"] is not None)})


def log_bins(fine: list[tuple[int, int, int]], fine_bins: int, bins: int) -> dict:
    """``bins`` log-spaced bins over [1 / fine_bins, 1] plus the bin [0, 1 / fine_bins), re-binned exactly from the
    fine histogram ``(fine index, docs, tokens)``: every edge is a fine-bin edge."""
    import bisect

    bounds = sorted({0, *(round(fine_bins ** (i / bins)) for i in range(bins + 1))})
    docs, tokens = [0] * (len(bounds) - 1), [0] * (len(bounds) - 1)
    for index, n, t in fine:
        j = min(bisect.bisect_right(bounds, index) - 1, len(docs) - 1)
        docs[j] += n
        tokens[j] += t
    return {"edges": [b / fine_bins for b in bounds], "docs": docs, "tokens": tokens}


def _valid(column: str):
    from pyspark.sql import functions as F

    return F.col(column).isNotNull() & ~F.isnan(F.col(column))


def _finite(value):
    """JSON has no NaN or infinity: such a min or max is reported as null."""
    return float(value) if value is not None and math.isfinite(value) else None


def column_summaries(df, columns: list[str]) -> tuple[int, int, dict[str, dict]]:
    """(documents, tokens, per column: valid/null/NaN counts, valid tokens, min, max, mean), one aggregation."""
    from pyspark.sql import functions as F

    aggs = [F.count("*").alias("docs"), F.sum("n_tokens").alias("tokens")]
    for i, c in enumerate(columns):
        valid = _valid(c)
        aggs += [F.sum(valid.cast("long")).alias(f"v{i}"), F.sum(F.col(c).isNull().cast("long")).alias(f"n{i}"),
                 F.sum(F.when(valid, F.col("n_tokens"))).alias(f"t{i}"),
                 F.min(F.when(valid, F.col(c))).alias(f"lo{i}"), F.max(F.when(valid, F.col(c))).alias(f"hi{i}"),
                 F.avg(F.when(valid, F.col(c))).alias(f"mean{i}")]
    row = df.agg(*aggs).first()
    docs = row["docs"] or 0
    out = {}
    for i, c in enumerate(columns):
        nulls = row[f"n{i}"] or 0
        valid = row[f"v{i}"] or 0
        out[c] = {"valid": valid, "null": nulls, "nan": docs - valid - nulls, "valid_tokens": row[f"t{i}"] or 0,
                  "min": _finite(row[f"lo{i}"]), "max": _finite(row[f"hi{i}"]), "mean": _finite(row[f"mean{i}"])}
    return docs, row["tokens"] or 0, out


def histogram_and_percentiles(df, column: str, bins: int, percentiles: list[float]) -> dict:
    """Histogram of ``column`` over [0, 1] (documents and tokens per bin) and exact document- and token-weighted
    percentiles. Two aggregations: the fine histogram, then the distinct values inside the crossing fine bins."""
    from pyspark.sql import functions as F

    fine_bins = bins * FINE_PER_BIN
    valid = df.where(_valid(column))
    binned = valid.withColumn("_fine", F.least(F.greatest(F.floor(F.col(column).cast("double") * fine_bins),
                                                           F.lit(0)), F.lit(fine_bins - 1)))
    fine = sorted((r["_fine"], r["docs"], r["tokens"] or 0) for r in binned.groupBy("_fine").agg(
        F.count("*").alias("docs"), F.sum("n_tokens").alias("tokens")).collect())
    docs, tokens = [0] * bins, [0] * bins
    for index, n, t in fine:
        docs[index // FINE_PER_BIN] += n
        tokens[index // FINE_PER_BIN] += t
    totals = {"docs": sum(docs), "tokens": sum(tokens)}
    targets = {(w, p): cut_weight(p, totals[w]) for w in totals for p in percentiles if totals[w] > 0}
    crossing = {}
    for (w, p), target in targets.items():
        found = first_reaching(fine, 1 if w == "docs" else 2, target)
        if found is not None:
            crossing[(w, p)] = found
    values = {}
    wanted = sorted({entry[0] for entry, _ in crossing.values()})
    if wanted:
        rows = binned.where(F.col("_fine").isin(wanted)).groupBy("_fine", column).agg(
            F.count("*").alias("docs"), F.sum("n_tokens").alias("tokens")).collect()
        for r in rows:
            values.setdefault(r["_fine"], []).append((float(r[column]), r["docs"], r["tokens"] or 0))
    result = {"docs": {}, "tokens": {}}
    for (w, p), (entry, before) in crossing.items():
        key = 1 if w == "docs" else 2
        inner = first_reaching(sorted(values[entry[0]]), key, targets[(w, p)] - before)
        result[w][p] = inner[0][0] if inner else None
    edges = [i / bins for i in range(bins + 1)]
    skewed = totals["docs"] > 0 and docs[0] >= SKEW_SHARE * totals["docs"]
    return {"edges": edges, "docs": docs, "tokens": tokens,
            "log": log_bins(fine, fine_bins, bins) if skewed else None,
            "percentiles": {w: [{"p": p, "score": result[w].get(p)} for p in percentiles] for w in result}}


def bucket_index(column: str, thresholds: list[float]):
    """Index of the highest of the ascending ``thresholds`` that the score reaches; -1 for none, null or NaN."""
    from pyspark.sql import functions as F

    passed = sum((F.when(F.col(column) >= t, 1).otherwise(0) for t in thresholds), F.lit(0))
    return F.when(_valid(column), passed - 1).otherwise(F.lit(-1))


def _suffix_sums(table: dict[tuple, tuple], n_rows: int, n_cols: int) -> tuple[list, list]:
    """kept[i][j] = sum over cells (a >= i, b >= j) of ``table``; docs and tokens; the driver's small arithmetic."""
    docs = [[0] * n_cols for _ in range(n_rows)]
    tokens = [[0] * n_cols for _ in range(n_rows)]
    for (a, b), (n, t) in table.items():
        for i in range(a + 1):
            for j in range(b + 1):
                docs[i][j] += n
                tokens[i][j] += t
    return docs, tokens


def threshold_grid(df, domain: str, quality: str, domain_thresholds: list[float],
                   quality_thresholds: list[float]) -> dict:
    """Documents and tokens kept by every (domain >= d, quality >= q) pair; rows are domain thresholds."""
    from pyspark.sql import functions as F

    cells = df.groupBy(bucket_index(domain, domain_thresholds).alias("d"),
                       bucket_index(quality, quality_thresholds).alias("q")).agg(
        F.count("*").alias("docs"), F.sum("n_tokens").alias("tokens")).collect()
    table = {(r["d"], r["q"]): (r["docs"], r["tokens"] or 0) for r in cells if r["d"] >= 0 and r["q"] >= 0}
    docs, tokens = _suffix_sums(table, len(domain_thresholds), len(quality_thresholds))
    return {"domain_column": domain, "quality_column": quality, "domain_thresholds": domain_thresholds,
            "quality_thresholds": quality_thresholds, "kept_docs": docs, "kept_tokens": tokens}


def precision_recall(df, column: str, thresholds: list[float], positive_sources: list[str]) -> dict:
    """Precision, recall and F1 of "score >= t" against the label "source starts with one of positive_sources",
    for every threshold t, from one aggregation. A null or NaN score predicts negative (select never keeps it)."""
    from pyspark.sql import functions as F

    label = F.lit(False)
    for prefix in positive_sources:
        label = label | F.col("source").startswith(prefix)
    counts = df.groupBy(bucket_index(column, thresholds).alias("k"), label.alias("positive")).agg(
        F.count("*").alias("docs")).collect()
    positives = sum(r["docs"] for r in counts if r["positive"])
    rows = []
    for k, t in enumerate(thresholds):
        tp = sum(r["docs"] for r in counts if r["positive"] and r["k"] >= k)
        fp = sum(r["docs"] for r in counts if not r["positive"] and r["k"] >= k)
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / positives if positives else None
        if precision is None or recall is None:
            f1 = None
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"threshold": t, "tp": tp, "fp": fp, "fn": positives - tp, "precision": precision,
                     "recall": recall, "f1": f1})
    return {"column": column, "positive_sources": positive_sources, "documents": sum(r["docs"] for r in counts),
            "positives": positives, "rows": rows}


def sample_documents(df, column: str, buckets: int, per_bucket: int, chars: int, seed: int) -> list[dict]:
    """Up to ``per_bucket`` documents per score bucket (equal-width over [0, 1]), chosen deterministically: the
    smallest sha1("<seed>:<id>") in the bucket. One aggregation (``min_by`` with k keeps k rows per group, so no
    group is ever collected whole); texts are cut to ``chars`` characters on the executors."""
    from pyspark.sql import functions as F

    bucket = F.least(F.greatest(F.floor(F.col(column).cast("double") * buckets), F.lit(0)), F.lit(buckets - 1))
    doc = F.struct(F.col("id").alias("id"), F.col("source").alias("source"), F.col(column).alias("score"),
                   F.col("n_tokens").alias("n_tokens"), F.substring("text", 1, chars).alias("text"),
                   F.length("text").alias("chars"))
    order = F.struct(F.sha1(F.concat(F.lit(f"{seed}:"), F.col("id"))), F.col("id"))
    rows = df.where(_valid(column)).groupBy(bucket.alias("bucket")).agg(
        F.min_by(doc, order, per_bucket).alias("docs")).collect()
    out = []
    for r in sorted(rows, key=lambda r: r["bucket"]):
        out.append({"bucket": r["bucket"], "low": r["bucket"] / buckets, "high": (r["bucket"] + 1) / buckets,
                    "docs": [{**d.asDict(), "score": float(d["score"])} for d in r["docs"]]})
    return out
