"""Side-by-side comparison of selections drawn from one pool: tokens by source and pairwise overlap.

The paper compares TRAIT's selection with random sampling and DSIR at the same token budget; a data engineer
wants to see what each kept and how much they agree. One Spark aggregation does it at any scale: every selected
row contributes its id with a bit for the selection it is in; grouping by id gives each document's membership
mask, and grouping by (mask, source) leaves a table of at most 2^k x sources rows for the driver, from which
every per-selection and pairwise figure follows.
"""

from __future__ import annotations

from itertools import combinations

from trait import UserError

from .dataset import open_dataset


def compare_selections(spark, selections: dict[str, str]) -> dict:
    """Per-selection rows and tokens by source, and for each pair the documents and tokens both kept.

    ``selections`` maps a name to a finished dataset path; all must come from the same pool (ids are compared).
    Returns ``{"selections": {name: {"rows", "tokens", "by_source": {source: tokens}}},
    "overlap": [{"a", "b", "rows", "tokens", "jaccard_tokens"}]}``; the token Jaccard is shared tokens over
    tokens in either.
    """
    from pyspark.sql import functions as F

    if len(selections) < 2:
        raise UserError("compare needs at least two selections")
    names = list(selections)
    frames = None
    for bit, name in enumerate(names):
        df, _ = open_dataset(spark, selections[name])
        df = df.select("id", "source", "n_tokens", F.lit(1 << bit).alias("bit"))
        frames = df if frames is None else frames.unionByName(df)
    # A document kept by several selections carries the same source and token count in each (same pool).
    members = frames.groupBy("id").agg(F.sum("bit").alias("mask"), F.first("source").alias("source"),
                                       F.first("n_tokens").alias("n_tokens"))
    table = members.groupBy("mask", "source").agg(F.count("*").alias("rows"),
                                                  F.sum("n_tokens").alias("tokens")).collect()
    out = {"selections": {}, "overlap": []}
    for bit, name in enumerate(names):
        rows = [r for r in table if r["mask"] >> bit & 1]
        by_source: dict[str, int] = {}
        for r in rows:
            by_source[r["source"]] = by_source.get(r["source"], 0) + r["tokens"]
        out["selections"][name] = {"rows": sum(r["rows"] for r in rows), "tokens": sum(r["tokens"] for r in rows),
                                   "by_source": dict(sorted(by_source.items()))}
    for (i, a), (j, b) in combinations(enumerate(names), 2):
        both = [r for r in table if r["mask"] >> i & 1 and r["mask"] >> j & 1]
        either = sum(r["tokens"] for r in table if r["mask"] >> i & 1 or r["mask"] >> j & 1)
        shared = sum(r["tokens"] for r in both)
        out["overlap"].append({"a": a, "b": b, "rows": sum(r["rows"] for r in both), "tokens": shared,
                               "jaccard_tokens": shared / either if either else 0.0})
    return out


def comparison_table(comparison: dict) -> str:
    """Markdown: tokens by source per selection (sources sorted), totals, then the pairwise overlap."""
    names = list(comparison["selections"])
    sels = comparison["selections"]
    sources = sorted({s for v in sels.values() for s in v["by_source"]})
    lines = ["| source | " + " | ".join(f"{n} tokens" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for source in sources:
        lines.append(f"| {source} | " + " | ".join(f"{sels[n]['by_source'].get(source, 0):,}" for n in names) + " |")
    lines.append("| **total tokens** | " + " | ".join(f"{sels[n]['tokens']:,}" for n in names) + " |")
    lines.append("| **documents** | " + " | ".join(f"{sels[n]['rows']:,}" for n in names) + " |")
    lines += ["", "| pair | documents in both | tokens in both | token Jaccard |", "|---|---:|---:|---:|"]
    for o in comparison["overlap"]:
        lines.append(f"| {o['a']} & {o['b']} | {o['rows']:,} | {o['tokens']:,} | {o['jaccard_tokens']:.3f} |")
    return "\n".join(lines)
