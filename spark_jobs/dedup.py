"""``trait dedup``: drop exact and near-duplicate documents, keeping the smallest id of each cluster.

1. Signatures: one pass over the texts on the executors (``mapInArrow``, Arrow batches) computes, with
   ``trait.minhash`` (the code the generator uses in memory), each document's exact key (xxh3-128 of the
   normalised text), MinHash signature (``bands * rows`` values) and LSH band keys. Only these ~1 KB rows are
   persisted; the texts are read again only to write the kept rows.
2. Exact: among documents with the same exact key, the smallest id is kept; the others are dropped as
   ``exact_duplicate`` with that id as representative.
3. Near, over the exact survivors: documents sharing a band key are candidate pairs (``dedup_graph``), verified by
   signature agreement (>= ceil(threshold * num_perm) equal values, the estimated Jaccard); connected components
   of the verified pairs keep their smallest id; the others are dropped as ``near_duplicate``.

Output: the kept rows (every input column) as the contract dataset; ``_dropped/`` lists each dropped row's id,
source, n_tokens, reason and representative id, so nothing is lost silently. Counts come from the written files:
rows in = rows out + rows dropped (by reason) is checked. Why not Spark ML's ``MinHashLSH``: it hashes sparse
vectors (so shingles must first be vectorised, e.g. ``HashingTF``), its ``approxSimilarityJoin`` returns
distance pairs without any cap on huge buckets, and its hashes are not the ones the generator can compute without
Spark, so the two sides would no longer keep the same documents.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import pyarrow as pa

from trait.config import to_dict
from trait.minhash import DedupConfig, band_keys, signatures

from .dataset import DatasetError, JobOutput, open_dataset, parts_glob, read_parts
from .dedup_graph import candidate_pairs, connected_components, verified_edges

log = logging.getLogger(__name__)

DROPPED_DIR = "_dropped"
DROPPED_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("n_tokens", pa.int64(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),  # exact_duplicate | near_duplicate
    pa.field("representative_id", pa.string(), nullable=False),  # the kept id at that stage (see find_duplicates)
])
SIGNATURE_SCHEMA = "id string, exact_key string, signature array<bigint>, bands array<bigint>"


def _lists(values: np.ndarray, present: np.ndarray) -> pa.ListArray:
    """Arrow list<int64> of the rows of ``values`` (n, k); null where not ``present``."""
    n, k = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1).view(np.int64)), mask=pa.array(~present))


def signature_batches(batches, config: DedupConfig):
    """Executor side (``mapInArrow``): (id, text) batches -> (id, exact_key, signature, bands) batches.
    Signature values are < 2^61, so int64 holds them; a text without tokens has null signature and bands."""
    for batch in batches:
        sigs, present, keys = signatures(batch.column("text").to_pylist(), config)
        yield pa.RecordBatch.from_arrays(
            [batch.column("id"), pa.array(keys, pa.string()), _lists(sigs, present),
             _lists(band_keys(sigs, config), present)], names=["id", "exact_key", "signature", "bands"])


def _size_bins(rows) -> dict[str, int]:
    """Cluster size histogram in power-of-two bins ("2-3", "4-7", ...) from (bin exponent, clusters) rows."""
    return {f"{1 << r['bin']}-{(2 << r['bin']) - 1}": r["clusters"] for r in sorted(rows, key=lambda r: r["bin"])}


def dedup_stats(input_df):
    """Rows and tokens in, out and dropped (by reason) per source, and cluster counts and size histograms, all
    aggregated over the written output and ``_dropped``; rows in is counted over the input independently."""

    def stats(spark, path: str) -> dict:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema

        agg = [F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")]
        by_source: dict[str, dict] = {}
        for r in input_df.groupBy("source").agg(*agg).collect():
            by_source[r["source"]] = {"rows_in": r["rows"], "tokens_in": r["tokens"] or 0, "rows_out": 0,
                                      "tokens_out": 0, "dropped": {}}
        for r in read_parts(spark, path).groupBy("source").agg(*agg).collect():
            by_source[r["source"]].update(rows_out=r["rows"], tokens_out=r["tokens"] or 0)
        # Read with the schema given: a run that drops nothing may leave _dropped without a file to infer it from.
        dropped = spark.read.schema(from_arrow_schema(DROPPED_SCHEMA)).parquet(f"{path}/{DROPPED_DIR}")
        by_reason: dict[str, dict] = {}
        for r in dropped.groupBy("source", "reason").agg(*agg).collect():
            by_source[r["source"]]["dropped"][r["reason"]] = {"rows": r["rows"], "tokens": r["tokens"] or 0}
            total = by_reason.setdefault(r["reason"], {"rows": 0, "tokens": 0})
            total["rows"] += r["rows"]
            total["tokens"] += r["tokens"] or 0
        # A cluster is a representative and the rows dropped in its favour at one stage.
        clusters = dropped.groupBy("reason", "representative_id").agg((F.count("*") + 1).alias("size"))
        hist = (clusters.groupBy("reason", F.floor(F.log2("size")).cast("int").alias("bin"))
                .agg(F.count("*").alias("clusters")).collect())
        sizes = {reason: _size_bins([r for r in hist if r["reason"] == reason])
                 for reason in ("exact_duplicate", "near_duplicate")}
        totals = {k: sum(s[k] for s in by_source.values()) for k in ("rows_in", "tokens_in", "rows_out", "tokens_out")}
        return {**totals, "rows_quarantined": 0,
                "rows_rejected_by_reason": sum(v["rows"] for v in by_reason.values()),
                "dropped_by_reason": dict(sorted(by_reason.items())),
                "clusters": {"exact": sum(sizes["exact_duplicate"].values()),
                             "near": sum(sizes["near_duplicate"].values())},
                "cluster_sizes": {"exact": sizes["exact_duplicate"], "near": sizes["near_duplicate"]},
                "by_source": dict(sorted(by_source.items()))}

    return stats


def _check_unique_ids(df, input_path: str) -> None:
    from pyspark.sql import functions as F

    repeated = df.groupBy("id").count().where(F.col("count") > 1).limit(3).collect()
    if repeated:
        raise DatasetError(f"{input_path}: ids must be unique to keep the smallest one, but {repeated[0]['id']!r} "
                           f"appears {repeated[0]['count']} times (and maybe others); re-ingest so each document "
                           "has its own id")


def run_dedup(spark, config: DedupConfig, input_path: str, output: str, overwrite: bool = False) -> dict:
    """Drop exact and near duplicates from the finished dataset at ``input_path``; write the rest to ``output``."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df, upstream = open_dataset(spark, input_path)
    job = JobOutput(spark, output, "dedup", to_dict(config),
                    [parts_glob(input_path)], overwrite)
    if (done := job.finished()) is not None:
        return done
    _check_unique_ids(df, input_path)
    # As many partitions as the input has splits (~1.2 KB of signature per document): Spark does not coalesce a
    # cached plan's shuffle (spark.sql.optimizer.canChangeCachedPlanOutputPartitioning), so with the default 200
    # every later scan of the cache would be 200 tasks (15k articles on 2 busy cores: 290 s with them, 55 s without).
    sigs = (df.select("id", "text").mapInArrow(functools.partial(signature_batches, config=config), SIGNATURE_SCHEMA)
            .repartition(max(1, df.rdd.getNumPartitions()), "exact_key")
            .withColumn("exact_rep", F.min("id").over(Window.partitionBy("exact_key")))
            .drop("exact_key").persist(StorageLevel.MEMORY_AND_DISK))
    exact_dropped = sigs.where(F.col("id") != F.col("exact_rep")).select(
        "id", F.lit("exact_duplicate").alias("reason"), F.col("exact_rep").alias("representative_id"))
    survivors = sigs.where((F.col("id") == F.col("exact_rep")) & F.col("signature").isNotNull())
    bands = survivors.select("id", F.posexplode("bands").alias("band", "key"))
    pairs, bucket_stats = candidate_pairs(bands, config.max_bucket_size)
    pairs = pairs.localCheckpoint()
    log.info("dedup: signatures, exact keys and candidate pairs in %.1f s", time.time() - job.started)
    edges = verified_edges(pairs, survivors.select("id", "signature"), config.min_agreeing).localCheckpoint()
    log.info("dedup: pairs verified at %.1f s", time.time() - job.started)
    labels, rounds = connected_components(edges)
    near_dropped = labels.where(F.col("id") != F.col("representative")).select(
        "id", F.lit("near_duplicate").alias("reason"), F.col("representative").alias("representative_id"))
    dropped = (exact_dropped.unionByName(near_dropped).join(df.select("id", "source", "n_tokens"), "id")
               .select(*DROPPED_SCHEMA.names).localCheckpoint())
    kept = df.join(dropped.select("id"), "id", "left_anti").select(*df.columns)
    graph = {"candidate_pairs": pairs.count(), "verified_pairs": edges.count(), "components_rounds": rounds,
             **bucket_stats}
    log.info("dedup: graph %s at %.1f s", graph, time.time() - job.started)
    staging = job.begin()
    job.write_parts(kept, staging)
    job.write_parts(dropped.coalesce(1), f"{staging}/{DROPPED_DIR}")
    sigs.unpersist()
    lsh = {"num_perm": config.permutations, "min_agreeing": config.min_agreeing,
           "s_curve_midpoint": round((1 / config.bands) ** (1 / config.rows), 4),
           "candidate_probability_at_threshold": round(config.candidate_probability(config.threshold), 4),
           "shingle_hash": "xxh3_64 of the UTF-8 shingle", "exact_hash": "xxh3_128 of the normalised text",
           "permutations": "(a x + b) mod 2^61-1, a < 2^32", "normaliser": config.normaliser}
    return job.commit(stats=dedup_stats(df), extra={
        "tokenizer": upstream.get("tokenizer"), "classifiers": upstream.get("classifiers", {}),
        "dedup": {**graph, **lsh}})
