"""``trait decontaminate``: quarantine documents sharing an n-gram (13 words by default) with a benchmark test split.

The driver reads the test problems of the chosen benchmarks and eval files (``trait.benchmarks``), builds the
``NgramIndex`` (``trait.decontam``: the same code the synthetic-passage generator uses), saves it as an .npz
named by its content hash and ships it with the job (``SparkContext.addFile``). Each Python worker loads it once
(``shipped_index``) and checks documents an Arrow batch at a time (``mapInArrow``), all n-grams of a batch in
one vectorised lookup. Clean rows are written unchanged; contaminated rows go to ``_quarantine`` with reason
``contaminated``, the benchmark names, the number of shared n-grams and the first one in ``detail``, and the
whole row as JSON in ``raw`` (so a row can be restored). For the registry's ten benchmarks at n=13 the index is
918,205 n-grams, 9.2 MB (uint64 hashes + uint16 bitmasks), built in about 2 s; each worker holds one copy and
its 2 MiB prefilter bitmap, plus a bounded cache of word hashes (2^18 words, 32 MB when full, measured with
tracemalloc).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import tempfile
import time

import pyarrow as pa

from trait.config import to_dict
from trait.decontam import HASH_VERSION, DecontamConfig, NgramIndex, build_index

from . import shipped
from .dataset import DatasetError, JobOutput, open_dataset, parts_glob, read_quarantine

log = logging.getLogger(__name__)

REASON = "contaminated"
_INDEXES: dict[str, NgramIndex] = {}


def shipped_index(name: str) -> NgramIndex:
    """The shipped index ``name``, loaded once per Python worker (a worker keeps at most two indexes)."""
    if name not in _INDEXES:
        if len(_INDEXES) >= 2:
            _INDEXES.clear()
        _INDEXES[name] = NgramIndex.load(shipped.resolve(name))
    return _INDEXES[name]


def flag_batches(index_name: str):
    """mapInArrow function: each batch plus ``_benchmarks`` (comma-separated names, null if clean) and
    ``_detail`` (the quarantine detail, null if clean)."""

    def run(batches):
        index = shipped_index(index_name)
        for batch in batches:
            ids = batch.column("id").to_pylist()
            found = index.match_many([t or "" for t in batch.column("text").to_pylist()])
            names = [",".join(m.benchmarks) if m.benchmarks else None for m in found]
            details = [None if not m.benchmarks else
                       f"benchmarks={','.join(m.benchmarks)}; n={index.n}; matching_ngrams={m.matching_ngrams}; "
                       f"first={m.first_ngram!r}; id={doc}" for m, doc in zip(found, ids)]
            yield pa.RecordBatch.from_arrays(
                list(batch.columns) + [pa.array(names, pa.string()), pa.array(details, pa.string())],
                names=batch.schema.names + ["_benchmarks", "_detail"])

    return run


def decontam_stats(rows_in: dict[str, tuple[int, int]], data_schema, names: list[str]):
    """Rows and tokens in (counted on the input), out and quarantined (aggregated over the written files), by
    source and by benchmark (a document matching two benchmarks counts under both)."""

    def stats(spark, path: str) -> dict:
        from pyspark.sql import functions as F

        # Read with the schema given: an empty output leaves no file to infer one from.
        out = spark.read.schema(data_schema).option("pathGlobFilter", "part-*.parquet").parquet(path)
        bad = read_quarantine(spark, path).select(
            "source", "reason", F.regexp_extract("detail", r"^benchmarks=([^;]*)", 1).alias("benchmarks"),
            F.get_json_object(F.col("raw").cast("string"), "$.n_tokens").cast("long").alias("n_tokens"))
        by_source = {s: {"rows_in": r, "tokens_in": t, "rows_out": 0, "tokens_out": 0, "rows_quarantined": 0,
                         "tokens_quarantined": 0} for s, (r, t) in sorted(rows_in.items())}
        for kind, frame in (("out", out), ("quarantined", bad)):
            for r in frame.groupBy("source").agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")) \
                    .collect():
                s = by_source.setdefault(r["source"], {"rows_in": 0, "tokens_in": 0})
                s[f"rows_{kind}"], s[f"tokens_{kind}"] = r["rows"], r["tokens"] or 0
        by_benchmark = {name: {"rows": 0, "tokens": 0} for name in names}
        for r in bad.select(F.explode(F.split("benchmarks", ",")).alias("b"), "n_tokens").groupBy("b") \
                .agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).collect():
            by_benchmark[r["b"]] = {"rows": r["rows"], "tokens": r["tokens"] or 0}
        reasons = {r["reason"] for r in bad.select("reason").distinct().collect()}
        total = {k: sum(s.get(k, 0) for s in by_source.values()) for k in
                 ("rows_in", "tokens_in", "rows_out", "tokens_out", "rows_quarantined", "tokens_quarantined")}
        if reasons - {REASON} or total["tokens_in"] != total["tokens_out"] + total["tokens_quarantined"]:
            raise DatasetError(f"decontaminate: tokens in ({total['tokens_in']}) != out ({total['tokens_out']}) + "
                               f"quarantined ({total['tokens_quarantined']}), or unexpected reasons {reasons}; "
                               f"output left in {path}")
        return {**total, "quarantined_by_benchmark": by_benchmark, "by_source": by_source}

    return stats


def _ship_index(spark, index: NgramIndex) -> tuple[str, str, int]:
    """Save the index as ``ngram_index_<sha1>.npz`` in a temporary folder of this driver's and ship it; the
    content-addressed name lets one Spark session ship several indexes (``addFile`` refuses a second file under the
    same name). An executor fetches the file from the driver when it first runs a task of the session, so the folder
    stays until the driver exits, and goes then (it held ~9 MB per run, left behind in the temporary folder)."""
    digest = hashlib.sha1()
    for part in (index.keys.tobytes(), index.masks.tobytes(), "\0".join(index.names).encode(), str(index.n).encode()):
        digest.update(part)
    sha1 = digest.hexdigest()
    path = os.path.join(tempfile.mkdtemp(prefix="trait-decontam-"), f"ngram_index_{sha1[:16]}.npz")
    atexit.register(_remove_index, path)
    index.save(path)
    return shipped.ship(spark, path), sha1, os.path.getsize(path)


def _remove_index(path: str) -> None:
    """Remove the shipped index file, then its folder if that left it empty: nothing else is deleted."""
    with contextlib.suppress(OSError):
        os.unlink(path)
        os.rmdir(os.path.dirname(path))


def run_decontaminate(spark, config: DecontamConfig, input_path: str, output: str, overwrite: bool = False) -> dict:
    """Write the rows of the finished dataset at ``input_path`` that share no n-gram with the configured test
    sets to ``output``, and the others to its ``_quarantine``; returns the manifest."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    df, upstream = open_dataset(spark, input_path)
    test_files = [f.path for files in config.sources().values() for f in files]
    job = JobOutput(spark, output, "decontaminate", to_dict(config), [parts_glob(input_path), *test_files],
                    overwrite)
    if (done := job.finished()) is not None:
        return done
    t0 = time.time()
    index, report = build_index(config)
    build_s = time.time() - t0
    for name, r in report.items():
        if r["malformed"]:
            log.warning("decontaminate: %s: %d malformed records left out (%s)", name, r["malformed"],
                        "; ".join(e for f in r["files"] for e in f["malformed_examples"][:2]))
    name, sha1, npz_bytes = _ship_index(spark, index)
    log.info("decontaminate: index of %d %d-grams, %.1f MB, built in %.2f s, shipped as %s", len(index.keys),
             index.n, index.nbytes / 1e6, build_s, name)
    rows_in = {r["source"]: (r["rows"], r["tokens"] or 0) for r in df.groupBy("source")
               .agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).collect()}
    source_df = df.withColumn("_file", F.col("_metadata.file_path"))
    schema = StructType([*source_df.schema.fields, StructField("_benchmarks", StringType()),
                         StructField("_detail", StringType())])
    # One Python pass feeds both outputs: the flagged rows are kept on disk between the two writes.
    flagged = source_df.mapInArrow(flag_batches(name), schema).persist(StorageLevel.DISK_ONLY)
    try:
        clean = flagged.where(F.col("_benchmarks").isNull()).select(*df.columns)
        row_json = F.to_json(F.struct(*df.columns), {"ignoreNullFields": "false"})  # keep url: null
        dirty = flagged.where(F.col("_benchmarks").isNotNull()).select(
            "source", F.col("_file").alias("input_file"), F.lit(REASON).alias("reason"),
            F.col("_detail").alias("detail"), row_json.cast("binary").alias("raw"))
        return job.write(clean, dirty, stats=decontam_stats(rows_in, df.schema, index.names), extra={
            "tokenizer": upstream.get("tokenizer"), "classifiers": upstream.get("classifiers", {}),
            "index": {"n": index.n, "ngrams": len(index.keys), "bytes": index.nbytes, "npz_bytes": npz_bytes,
                      "key_dtype": str(index.keys.dtype), "mask_dtype": str(index.masks.dtype),
                      "hash": HASH_VERSION, "sha1": sha1, "build_s": round(build_s, 3),
                      "ngrams_per_benchmark": index.ngrams_per_name()},
            "benchmarks": report})
    finally:
        flagged.unpersist()
