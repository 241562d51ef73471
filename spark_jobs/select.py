"""``trait select``: keep documents by domain and quality thresholds, without re-scoring.

Each threshold is one of:
- ``min``: an absolute score in [0, 1]; documents with score >= min are kept;
- ``percentile`` p in [0, 100): keeps the top (100 - p)% of scored documents (ties at the threshold kept): the
  threshold is the lowest score left when the lowest-scoring p% are dropped (``trait.ranks``; the report's
  percentile rows show the same score);
- ``token_budget`` N: the best N tokens by this score among the documents that pass the other threshold
  (kept tokens reach N, overshooting by at most the documents tied at the threshold).

Percentiles and budgets are resolved exactly and deterministically with two aggregations: a histogram of the
score over ``BINS`` bins finds the bin where the cumulative count (or token sum) crosses the target, then the
distinct float32 values inside that bin (a few hundred at most) give the exact score. Nothing is collected to the
driver but those small tables, so this works unchanged on a cluster-sized corpus. Null and NaN scores are never
kept; a percentile over no score, and a budget it cannot reach, are logged as warnings saying what was kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trait.config import ConfigError, field, to_dict
from trait.ranks import cut_weight, first_reaching

from .dataset import JobOutput, open_dataset, parts_glob, read_parts

log = logging.getLogger(__name__)

BINS = 65536
_NOTHING_SCORED = "no {documents} has a {column} score (null or NaN): keeping nothing"


@dataclass
class Threshold:
    column: str = field(help="score column, e.g. score_domain_math_v1")
    min: float | None = field(None, help="keep score >= min")
    percentile: float | None = field(None, help="keep the top (100 - percentile)% of documents")
    token_budget: int | None = field(None, help="keep the best N tokens among documents passing the others")

    def validate(self) -> None:
        if not self.column.strip():
            raise ConfigError("a threshold needs its score column, e.g. score_domain_math_v1:percentile=90")
        given = [k for k in ("min", "percentile", "token_budget") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"threshold on {self.column!r}: give exactly one of min, percentile, token_budget "
                              f"(got {given or 'none'})")
        where = f"threshold on {self.column!r}"
        if self.min is not None and not 0 <= self.min <= 1:
            raise ConfigError(f"{where}: min must be a score in [0, 1] (scores are probabilities), got {self.min}")
        if self.percentile is not None and not 0 <= self.percentile < 100:
            raise ConfigError(f"{where}: percentile must be in [0, 100) (90 keeps the top 10%), got {self.percentile}")
        if self.token_budget is not None and self.token_budget <= 0:
            raise ConfigError(f"{where}: token_budget must be a positive number of tokens, got {self.token_budget}")

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """``COLUMN:min=0.5``, ``COLUMN:percentile=90`` or ``COLUMN:token_budget=1000000`` (CLI form)."""
        column, sep, rest = text.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or key not in ("min", "percentile", "token_budget"):
            raise ConfigError(f"threshold {text!r}: write COLUMN:min=X, COLUMN:percentile=P or "
                              "COLUMN:token_budget=N")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"threshold {text!r}: {key} {value!r} is not a number") from None
        if key == "token_budget":
            if not number.is_integer():  # also inf and nan
                raise ConfigError(f"threshold {text!r}: token_budget must be a whole number of tokens, e.g. 1e6")
            number = int(number)
        t = cls(column=column, **{key: number})
        t.validate()
        return t

    from_str = parse  # the string form a config value or --domain/--quality flag may take


@dataclass
class SelectConfig:
    domain: Threshold = field(help="threshold on the domain score")
    quality: Threshold | None = field(None, help="threshold on the quality score (optional)")

    def thresholds(self) -> dict[str, Threshold]:
        """Thresholds in the order they filter: quality first, so a drop is counted under the first that fails."""
        return {k: t for k, t in (("quality", self.quality), ("domain", self.domain)) if t is not None}

    def validate(self) -> None:
        if sum(t.token_budget is not None for t in self.thresholds().values()) > 1:
            raise ConfigError("only one threshold can be a token budget")


def value_at_cumulative(df, column: str, weight, target: float, descending: bool) -> float | None:
    """The score at which the cumulative ``weight``, summed over scores sorted ascending (or descending), first
    reaches ``target``; None if the total weight never reaches it. Exact; two aggregations."""
    from pyspark.sql import functions as F

    df = df.where(F.col(column).isNotNull())
    lo, hi = df.agg(F.min(column), F.max(column)).first()
    if lo is None:
        return None
    width = (hi - lo) or 1.0
    binned = df.withColumn("_bin", F.least(F.floor((F.col(column) - lo) / width * BINS), F.lit(BINS - 1)))
    bins = sorted(((r["_bin"], r["w"]) for r in binned.groupBy("_bin").agg(F.sum(weight).alias("w")).collect()),
                  reverse=descending)
    found = first_reaching(bins, 1, target)
    if found is None:
        return None
    (crossing, _), before = found
    values = binned.where(F.col("_bin") == crossing).groupBy(column).agg(F.sum(weight).alias("w")).collect()
    (value, _), _ = first_reaching(sorted(((r[column], r["w"]) for r in values), reverse=descending), 1,
                                   target - before)
    return float(value)


def resolve(df, config: SelectConfig) -> dict[str, dict]:
    """Absolute score per threshold, with how it was resolved and what it was resolved over."""
    from pyspark.sql import functions as F

    resolved = {}
    budget_key = None
    for key, t in config.thresholds().items():
        if t.column not in df.columns:
            scores = [c for c in df.columns if c.startswith("score_")]
            raise ConfigError(f"{key} threshold: column {t.column!r} not found; score columns are: {scores}")
        if t.min is not None:
            resolved[key] = {"column": t.column, "rule": {"min": t.min}, "score": t.min}
        elif t.percentile is not None:
            n = df.where(F.col(t.column).isNotNull()).count()
            target = cut_weight(t.percentile, n)  # documents at or below the cut: the lowest p% and the first kept
            score = value_at_cumulative(df, t.column, F.lit(1), target, descending=False) if n else None
            if not n:
                log.warning("%s threshold: percentile %s: %s", key, t.percentile,
                            _NOTHING_SCORED.format(documents="document", column=t.column))
            resolved[key] = {"column": t.column, "rule": {"percentile": t.percentile}, "score": score,
                             "scored_documents": n}
        else:
            budget_key = key
    if budget_key is not None:
        t = config.thresholds()[budget_key]
        eligible = df
        for r in resolved.values():
            eligible = eligible.where(F.col(r["column"]) >= r["score"]) if r["score"] is not None else eligible.limit(0)
        score = value_at_cumulative(eligible, t.column, F.col("n_tokens"), t.token_budget, descending=True)
        reached = score is not None
        if not reached:  # the budget exceeds what is eligible: keep everything eligible
            score, docs, tokens = eligible.where(F.col(t.column).isNotNull()).agg(
                F.min(t.column), F.count("*"), F.sum("n_tokens")).first()
            others = " and ".join(resolved)
            if docs:
                log.warning("%s threshold: token budget %d not reached: keeping every document%s with a score, %d "
                            "documents of %d tokens", budget_key, t.token_budget,
                            f" that passes the {others} threshold" if others else "", docs, tokens or 0)
            else:
                log.warning("%s threshold: token budget %d not reached: %s", budget_key, t.token_budget,
                            _NOTHING_SCORED.format(column=t.column, documents=f"document that passes the {others} "
                                                   "threshold" if others else "document"))
        resolved[budget_key] = {"column": t.column, "rule": {"token_budget": t.token_budget},
                                "score": None if score is None else float(score), "budget_reached": reached}
    return resolved


def _keep(resolved: dict[str, dict]):
    from pyspark.sql import functions as F

    cond = F.lit(True)
    for r in resolved.values():
        cond = cond & (F.col(r["column"]) >= r["score"]) if r["score"] is not None else F.lit(False)
    return cond


def select_stats(input_df, resolved: dict[str, dict]):
    """Rows and tokens in, out and dropped (by first failing reason) per source, from one aggregation."""

    def stats(spark, path: str) -> dict:
        from pyspark.sql import functions as F

        reason = F.lit("kept")
        for key in reversed(list(resolved)):
            r = resolved[key]
            fails = F.col(r["column"]) < r["score"] if r["score"] is not None else F.lit(True)
            reason = F.when(F.col(r["column"]).isNull(), F.lit(f"null_{key}_score")).when(
                fails, F.lit(f"below_{key}")).otherwise(reason)
        by_source: dict[str, dict] = {}
        rows = input_df.groupBy("source", reason.alias("reason")).agg(
            F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).collect()
        for r in rows:
            s = by_source.setdefault(r["source"], {"rows_in": 0, "tokens_in": 0, "dropped": {}})
            s["rows_in"] += r["rows"]
            s["tokens_in"] += r["tokens"] or 0
            if r["reason"] != "kept":
                s["dropped"][r["reason"]] = {"rows": r["rows"], "tokens": r["tokens"] or 0}
        written = {r["source"]: (r["rows"], r["tokens"] or 0) for r in read_parts(spark, path).groupBy("source")
                   .agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).collect()}
        for source, s in by_source.items():
            s["rows_out"], s["tokens_out"] = written.get(source, (0, 0))
        total = {k: sum(s[k] for s in by_source.values()) for k in ("rows_in", "tokens_in", "rows_out", "tokens_out")}
        return {**total, "rows_quarantined": 0,
                "rows_rejected_by_reason": sum(d["rows"] for s in by_source.values() for d in s["dropped"].values()),
                "by_source": dict(sorted(by_source.items()))}

    return stats


def run_select(spark, config: SelectConfig, input_path: str, output: str, overwrite: bool = False) -> dict:
    """Resolve the thresholds over the scored dataset at ``input_path`` and write the kept rows to ``output``."""
    from pyspark.sql import functions as F

    df, upstream = open_dataset(spark, input_path)
    job = JobOutput(spark, output, "select", to_dict(config), [parts_glob(input_path)], overwrite)
    if (done := job.finished()) is not None:
        return done
    # Spark orders NaN above every number, so a NaN score would pass any threshold: treat it as no score (a row
    # without a score is never kept; it is counted under null_<threshold>_score).
    for t in config.thresholds().values():
        if t.column in df.columns:
            df = df.withColumn(t.column, F.when(~F.isnan(t.column), F.col(t.column)))
    resolved = resolve(df, config)
    for key, r in resolved.items():
        log.info("select: %s threshold %s %s resolved to score >= %s", key, r["column"], r["rule"], r["score"])
    manifest = job.write(df.where(_keep(resolved)), stats=select_stats(df, resolved),
                         extra={"thresholds": resolved, "tokenizer": upstream.get("tokenizer"),
                                "classifiers": upstream.get("classifiers", {})})
    return manifest
