"""``trait baseline random``: the paper's random-selection baseline, and the budget logic every baseline shares.

A baseline keeps documents of the pool up to a token budget, given as ``token_budget`` N or ``budget_from`` a
finished selection (its manifest's ``counts.tokens_out``), so a baseline is compared with a selection at the same
number of tokens. Each document gets a seeded key; the documents are taken in key order until their tokens reach
the budget, the cut resolved exactly by ``select.value_at_cumulative`` (two aggregations, nothing but small tables
on the driver). The kept tokens reach the budget and overshoot it by less than the last document taken (plus any
documents whose key equals the cut's: all are kept). A budget above the pool keeps every document and says so
in the manifest (``budget.reached: false``). A budget of 0 tokens is refused, given or from a selection that kept
nothing: a baseline of nothing compares with nothing.

Random: the key of a document is a uniform number in (0, 1) from ``xxhash64(seed, id)`` (Spark's ``xxhash64``,
the same on every executor and in every run, so the sample depends on the seed and the ids only, not on
partitioning or row order); the lowest keys are kept. Two ids share a key only on a 53-bit hash collision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trait.config import ConfigError, field, to_dict

from .dataset import DatasetError, JobOutput, finished_manifest, open_dataset, parts_glob, read_parts
from .select import value_at_cumulative

log = logging.getLogger(__name__)

NOT_SAMPLED = "not_sampled"


@dataclass
class BudgetedSample:
    """What every baseline takes: a seed and a token budget (given, or the one a selection reached)."""

    seed: int = field(0, help="seed of the per-document random keys; another seed draws another sample")
    token_budget: int | None = field(None, help="tokens to keep (n_tokens summed); or give budget_from")
    budget_from: str | None = field(None, help="finished selection dataset whose counts.tokens_out is the budget")

    def validate(self) -> None:
        check_budget_source(self.token_budget, self.budget_from)


@dataclass
class RandomConfig(BudgetedSample):
    """Uniform random sample to the budget."""


def check_budget_source(token_budget: int | None, budget_from: str | None) -> None:
    """Exactly one of the two budget sources, and a positive explicit budget."""
    if (token_budget is None) == (budget_from is None):
        raise ConfigError("give exactly one of token_budget (--token-budget N) and budget_from (--budget-from DIR, "
                          "a finished selection whose manifest has counts.tokens_out)")
    if token_budget is not None and token_budget <= 0:
        raise ConfigError(f"token_budget must be a positive number of tokens, got {token_budget}")


def resolve_budget(spark, token_budget: int | None, budget_from: str | None, pool_manifest: dict) -> dict:
    """``{"tokens": N, "from": path or None}``; raises DatasetError when ``budget_from`` is unfinished or has no
    token count, ConfigError when it kept no token or counted tokens with another tokenizer than the pool."""
    if budget_from is None:
        return {"tokens": int(token_budget), "from": None}
    manifest = finished_manifest(spark, budget_from)
    tokens = manifest.get("counts", {}).get("tokens_out")
    if not isinstance(tokens, int) or tokens < 0:
        raise DatasetError(f"{budget_from}: its manifest has no counts.tokens_out; give a selection made by "
                           "`trait select` (or a baseline), or pass --token-budget N")
    if tokens == 0:
        raise ConfigError(f"{budget_from} kept 0 tokens, and a budget must be a positive number of tokens: give a "
                          "selection that kept documents, or --token-budget N")
    theirs, ours = manifest.get("tokenizer"), pool_manifest.get("tokenizer")
    if theirs and ours and theirs != ours:
        raise ConfigError(f"{budget_from} counted tokens with {theirs!r}, the pool with {ours!r}; a budget in other "
                          "tokens would not be the same budget: pass --token-budget N")
    return {"tokens": tokens, "from": budget_from}


def uniform_key(seed: int):
    """Column: a uniform double in (0, 1) from ``xxhash64(seed, id)``: its top 53 bits, centred in their cell."""
    from pyspark.sql import functions as F

    bits = F.shiftrightunsigned(F.xxhash64(F.lit(seed), F.col("id")), 11)
    return (bits.cast("double") + 0.5) / float(1 << 53)


def cut_to_budget(eligible, key: str, budget: dict, keep_high: bool):
    """(condition keeping the documents of ``eligible`` taken in ``key`` order until ``budget`` tokens, reached).

    ``keep_high``: take the highest keys first (DSIR), else the lowest (random)."""
    from pyspark.sql import functions as F

    cut = value_at_cumulative(eligible, key, F.col("n_tokens"), budget["tokens"], descending=keep_high)
    if cut is None:
        log.warning("token budget %d exceeds the eligible pool: keeping every eligible document", budget["tokens"])
        return F.lit(True), False
    log.info("token budget %d resolved to %s >= %r", budget["tokens"], key if keep_high else f"-{key}", cut)
    return (F.col(key) >= cut) if keep_high else (F.col(key) <= cut), True


def baseline_stats(candidates, reason):
    """``stats`` for JobOutput.commit: rows and tokens in and out per source, rejected rows by ``reason`` (a
    column naming why a row of ``candidates`` was not kept, null when kept), counted apart from the output."""

    def stats(spark, path: str) -> dict:
        from pyspark.sql import functions as F

        by_source: dict[str, dict] = {}
        for r in candidates.groupBy("source", reason.alias("reason")).agg(
                F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).collect():
            s = by_source.setdefault(r["source"], {"rows_in": 0, "tokens_in": 0, "rejected": {}})
            s["rows_in"] += r["rows"]
            s["tokens_in"] += r["tokens"] or 0
            if r["reason"] is not None:
                s["rejected"][r["reason"]] = {"rows": r["rows"], "tokens": r["tokens"] or 0}
        written = {r["source"]: (r["rows"], r["tokens"] or 0) for r in read_parts(spark, path).groupBy("source")
                   .agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).collect()}
        for source, s in by_source.items():
            s["rows_out"], s["tokens_out"] = written.pop(source, (0, 0))
        if written:
            raise DatasetError(f"output has sources the input lacks: {sorted(written)}")
        total = {k: sum(s[k] for s in by_source.values()) for k in ("rows_in", "tokens_in", "rows_out", "tokens_out")}
        rejected: dict[str, int] = {}
        for s in by_source.values():
            for why, d in s["rejected"].items():
                rejected[why] = rejected.get(why, 0) + d["rows"]
        # rows_rejected_by_reason is the total JobOutput's balance check adds; the split is rejected_rows.
        return {**total, "rows_quarantined": 0, "rows_rejected_by_reason": sum(rejected.values()),
                "rejected_rows": dict(sorted(rejected.items())), "by_source": dict(sorted(by_source.items()))}

    return stats


def open_nonempty(spark, path: str, role: str = "pool"):
    """(DataFrame, manifest) of a finished dataset with documents; raises DatasetError for an empty one."""
    df, manifest = open_dataset(spark, path)
    if manifest.get("counts", {}).get("rows_out", 1) == 0 or df.limit(1).count() == 0:
        raise DatasetError(f"{role} {path} has no documents; a baseline needs a non-empty {role}")
    return df, manifest


def run_random(spark, config: RandomConfig, input_path: str, output: str, overwrite: bool = False) -> dict:
    """Keep a seeded uniform random sample of the pool at ``input_path`` up to the budget; write it to ``output``."""
    from pyspark.sql import functions as F

    df, upstream = open_nonempty(spark, input_path)
    budget = resolve_budget(spark, config.token_budget, config.budget_from, upstream)
    inputs = [parts_glob(input_path)] + ([f"{config.budget_from.rstrip('/')}/manifest.json"]
                                         if config.budget_from else [])
    job = JobOutput(spark, output, "baseline_random", {**to_dict(config), "budget_tokens": budget["tokens"]},
                    inputs, overwrite)
    if (done := job.finished()) is not None:
        return done
    keyed = df.withColumn("_key", uniform_key(config.seed))
    keep, reached = cut_to_budget(keyed, "_key", budget, keep_high=False)
    reason = F.when(keep, F.lit(None).cast("string")).otherwise(F.lit(NOT_SAMPLED))
    return job.write(keyed.where(keep).drop("_key"), stats=baseline_stats(keyed, reason),
                     extra={"budget": {**budget, "reached": reached}, "seed": config.seed,
                            "tokenizer": upstream.get("tokenizer")})
