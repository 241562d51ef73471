"""Held-out split: set documents aside before anything trains on them.

The held-out documents are the ``heldout_docs`` with the smallest ``sha1('<seed>:<id>')``: a choice that depends
only on the ids and the seed (not on file order or partitioning), so a rerun, or the same corpus on a cluster,
holds out the same documents. Two datasets come out, ``train`` and ``heldout``; every input row is in exactly
one of them, and the held-out ids are listed in the held-out dataset's manifest.
"""

from __future__ import annotations

import logging

from trait.config import ConfigError

from .dataset import JobOutput, open_dataset, parts_glob, read_parts

log = logging.getLogger(__name__)
# Ids are collected on the driver to write the split; past this a fraction-based split would be the tool.
MAX_HELDOUT_DOCS = 100_000


def _key(seed: int):
    from pyspark.sql import functions as F

    return F.sha1(F.concat(F.lit(f"{seed}:"), F.col("id")))


def _stats(rows_in: int, other: int):
    def stats(spark, path: str) -> dict:
        from pyspark.sql import functions as F

        row = read_parts(spark, path).agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).first()
        return {"rows_in": rows_in, "rows_out": row["rows"], "tokens_out": row["tokens"] or 0,
                "rows_quarantined": 0, "rows_rejected_by_reason": other}

    return stats


def run_split(spark, input_path: str, train_output: str, heldout_output: str, heldout_docs: int, seed: int = 0,
              overwrite: bool = False) -> dict:
    """Write ``train_output`` and ``heldout_output`` from the finished dataset at ``input_path``; returns
    ``{"train": manifest, "heldout": manifest}``."""
    if not 1 <= heldout_docs <= MAX_HELDOUT_DOCS:
        raise ConfigError(f"heldout_docs must be between 1 and {MAX_HELDOUT_DOCS:,}, got {heldout_docs}")
    df, upstream = open_dataset(spark, input_path)
    config = {"heldout_docs": heldout_docs, "seed": seed}
    outputs = {side: JobOutput(spark, path, f"split_{side}", config, [parts_glob(input_path)], overwrite)
               for side, path in (("heldout", heldout_output), ("train", train_output))}
    done = {side: job.finished() for side, job in outputs.items()}
    if all(m is not None for m in done.values()):
        return done
    rows_in = df.count()
    if heldout_docs >= rows_in:
        raise ConfigError(f"{input_path} has {rows_in:,} documents: holding out {heldout_docs:,} leaves none to "
                          "train on; lower heldout docs")
    keyed = df.withColumn("_key", _key(seed))
    ids = [r["id"] for r in keyed.orderBy("_key").select("id").limit(heldout_docs).collect()]
    from pyspark.sql import functions as F

    held = F.broadcast(spark.createDataFrame([(i,) for i in ids], "id string"))
    extra = {"tokenizer": upstream.get("tokenizer")}
    manifests = {
        "heldout": outputs["heldout"].write(df.join(held, "id", "left_semi"), stats=_stats(rows_in, rows_in - len(ids)),
                                            extra={**extra, "heldout_ids": sorted(ids)}),
        "train": outputs["train"].write(df.join(held, "id", "left_anti"), stats=_stats(rows_in, len(ids)),
                                        extra=extra),
    }
    log.info("split: %d of %d documents held out (seed %d)", len(ids), rows_in, seed)
    return manifests
