"""The near-duplicate graph on Spark DataFrames: LSH candidate pairs, their verification, connected components.

The same rules as ``trait.minhash.find_duplicates`` (the in-memory path the generator uses), so both keep the same
documents: buckets up to ``max_bucket_size`` give all their pairs, larger ones pair each member with the bucket's
smallest id; a pair is an edge when its signatures agree in at least ``min_agreeing`` positions; each connected
component keeps its smallest id.

Connected components: min-label propagation with pointer jumping, in plain DataFrames. GraphFrames would do it
too, but its PyPI package (``graphframes-py``) is only the Python side: the Scala jar must come from Maven with
``--packages`` on every cluster, which this project's packaging (a py-files zip and a packed venv) avoids.
Near-duplicate graphs are sparse and shallow, so a few rounds of two joins are enough (logged per round).
"""

from __future__ import annotations

import logging

from trait.config import ConfigError

log = logging.getLogger(__name__)

MAX_ROUNDS = 64  # pointer jumping halves a path per round: 64 rounds cover any chain Spark could hold


def candidate_pairs(bands, max_bucket_size: int):
    """(pairs, bucket statistics): distinct ``(src, dst)`` with src < dst from ``bands`` (id, band, key) rows.

    Statistics are one small aggregate: buckets with two or more members, oversized buckets, and the pairs the
    cap skipped (n (n - 1) / 2 all-pairs minus the n - 1 star pairs, summed over oversized buckets)."""
    from pyspark.sql import functions as F

    sizes = (bands.groupBy("band", "key").agg(F.count("*").alias("n"), F.min("id").alias("first"))
             .where(F.col("n") >= 2))
    members = bands.join(sizes, ["band", "key"])
    small = members.where(F.col("n") <= max_bucket_size).select("band", "key", "id")
    left, right = small.alias("l"), small.alias("r")
    all_pairs = left.join(right, (F.col("l.band") == F.col("r.band")) & (F.col("l.key") == F.col("r.key"))
                          & (F.col("l.id") < F.col("r.id"))).select(F.col("l.id").alias("src"),
                                                                     F.col("r.id").alias("dst"))
    star_pairs = (members.where((F.col("n") > max_bucket_size) & (F.col("id") != F.col("first")))
                  .select(F.col("first").alias("src"), F.col("id").alias("dst")))
    pairs = all_pairs.unionByName(star_pairs).distinct()
    over = F.col("n") > max_bucket_size
    row = sizes.agg(F.count("*").alias("buckets"), F.sum(over.cast("long")).alias("oversized"),
                    F.sum(F.when(over, F.col("n") * (F.col("n") - 1) / 2 - (F.col("n") - 1)))
                    .cast("long").alias("skipped")).first()
    stats = {"buckets_with_collisions": row["buckets"], "oversized_buckets": row["oversized"] or 0,
             "pairs_skipped": row["skipped"] or 0}
    return pairs, stats


def verified_edges(pairs, signatures, min_agreeing: int):
    """Pairs whose signatures (``signatures``: id, signature array<bigint>) agree in >= ``min_agreeing`` places;
    columns src, dst, agreeing. The comparison runs in the JVM (``zip_with``), no Python round trip."""
    from pyspark.sql import functions as F

    left = signatures.select(F.col("id").alias("src"), F.col("signature").alias("s1"))
    right = signatures.select(F.col("id").alias("dst"), F.col("signature").alias("s2"))
    agreeing = F.expr("size(filter(zip_with(s1, s2, (x, y) -> x = y), same -> same))")
    return (pairs.join(left, "src").join(right, "dst").select("src", "dst", agreeing.alias("agreeing"))
            .where(F.col("agreeing") >= min_agreeing))


def connected_components(edges):
    """(labels, rounds): ``labels`` has (id, representative) for every node of ``edges`` (src, dst), the
    representative being the smallest id of its component.

    Each round: every node takes the smallest label among itself and its neighbours, then jumps to its label's
    label (pointer jumping, so a chain of n nodes needs about log2(n) rounds, not n). Labels are node ids and
    never grow, so when a round changes nothing every edge joins equal labels and each label is its component's
    minimum. Each round's labels are local checkpoints, so the plan does not grow with the rounds."""
    from pyspark.sql import functions as F

    both = edges.select("src", "dst").unionByName(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    labels = both.select(F.col("src").alias("id")).distinct().withColumn("label", F.col("id")).localCheckpoint()
    for rounds in range(1, MAX_ROUNDS + 1):
        offered = both.join(labels.withColumnRenamed("id", "src"), "src").select(F.col("dst").alias("id"), "label")
        spread = offered.unionByName(labels).groupBy("id").agg(F.min("label").alias("label"))
        parent = spread.select(F.col("id").alias("label"), F.col("label").alias("jump"))
        new = spread.join(parent, "label").select("id", F.col("jump").alias("label")).localCheckpoint()
        changed = new.join(labels.withColumnRenamed("label", "old"), "id").where(F.col("label") != F.col("old"))
        count = changed.count()
        log.info("dedup: connected components round %d: %d labels changed", rounds, count)
        labels = new
        if count == 0:
            return labels.withColumnRenamed("label", "representative"), rounds
    raise ConfigError(f"connected components did not converge in {MAX_ROUNDS} rounds; this takes a chain of more "
                      f"than 2^{MAX_ROUNDS} near duplicates, so the threshold is probably far too low")
