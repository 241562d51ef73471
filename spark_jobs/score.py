"""``trait score``: add one float32 column per fastText classifier (and per rule-based signal) to every row.

Spark plans and schedules the work; the bytes never pass through the JVM. The input's part files are cut into
byte-range splits, as Spark's own Parquet reader cuts them (a row group belongs to the split holding its
midpoint), and each split is one task. A task runs in a Python worker: it decodes the ``text`` of its row
groups with pyarrow, scores it an Arrow batch at a time with the classifiers shipped with the job
(``SparkContext.addFile``, loaded once per worker by ``shipped``) and the rule-based signals (``quality_signals``,
from the raw text), and writes one Parquet file of every input row plus the score columns: the input's column
chunks copied as they are, the scores appended (``parquet_append``).
The text chunk is read twice (decoded, then copied): from the page cache here, twice the bytes from object
storage. Measured on one core, the job costs 3-6 % more than raw fastText (the text's zstd decompression, the
first job's start); re-encoding the output had cost ~5 % more, and Spark's DataFrame reader and writer, with the
Arrow round trip of ``mapInArrow``, ~20 % (benchmarks/score_throughput.py).

No Spark SQL runs at all: the input's schema and row count come from its Parquet footers, and the statistics
from the tasks, each totalling by source the rows it scored (a pass over the output had cost a small job ~0.2 s).
A SQL pass costs little in a warm JVM but seconds of planning, code generation and JIT compilation in a fresh one,
on the cores the scoring needs.

Commit: each task attempt writes ``_attempts/<split>-<uuid>.parquet`` under staging and returns its name; the
driver renames the files of the successful attempts, in split order, to ``part-NNNNN.parquet`` and deletes the
rest, so a retried or lost task leaves nothing behind. Scoring never drops a row: a text that normalises to
nothing gets a null score.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from trait.config import ConfigError, field, to_dict
from trait.contract import part_name, validate_schema

from . import quality_signals, shipped
from .classifier import load_card, positive_probabilities
from .dataset import JobOutput, finished_manifest, footer_schema, parts_glob, read_footer
from .fs import HadoopFS, arrow_filesystem
from .parquet_append import ColumnAppender
from .select import Threshold
from .text import normalise_utf8

log = logging.getLogger(__name__)

ATTEMPTS_DIR = "_attempts"
MIN_SPLIT_BYTES, MAX_SPLIT_BYTES = 4 << 20, 128 << 20
SPLIT_SLOP = 1.1


@dataclass
class ScoreConfig:
    models: list[str] = field(default_factory=list, help="classifier directories (each with card.json and its .bin)")
    signals: list[str] = field(default_factory=list, help="rule-based score columns to add: score_quality_heuristic_v1"
                               " or score_quality_heuristic_math_v1 (FineWeb's filters; spark_jobs/quality_signals.py)")
    split_bytes: int | None = field(None, help="bytes of input Parquet per task; null: the input over 8 tasks "
                                    "per core (so the last wave is short), between 4 MiB and 128 MiB and at least "
                                    "the first part file's largest row group")
    batch_rows: int = field(2048, help="rows normalised and scored per Arrow batch")
    signals_where: Threshold | None = field(
        None, help="a cascade: compute the signals only where a classifier's score is at least min "
        "(COLUMN:min=X, e.g. score_domain_math_v1:min=0.05); elsewhere they are null, so select never keeps those "
        "rows (counted as null_quality_score) and a quality percentile is taken among the rows that have one")

    def validate(self) -> None:
        if not self.models and not self.signals:
            raise ConfigError("score needs at least one classifier directory (models) or signal (signals)")
        quality_signals.check(self.signals)
        if self.signals_where is not None:
            if not self.signals:
                raise ConfigError("signals_where gates the signals, but no signal is computed (signals is empty)")
            if self.signals_where.min is None:
                raise ConfigError(f"signals_where: give a fixed score, {self.signals_where.column}:min=X (a "
                                  "percentile or budget would need the whole corpus scored first)")
        if self.split_bytes is not None and self.split_bytes <= 0:
            raise ConfigError(f"split_bytes must be positive, got {self.split_bytes}")
        if self.batch_rows <= 0:
            raise ConfigError(f"batch_rows must be positive, got {self.batch_rows}")


def score_texts(texts: pa.ChunkedArray, models: list[tuple[str, object]], batch_rows: int,
                signals: tuple[str, ...] = (), signals_where: tuple[str, float] | None = None) -> pa.Table:
    """One float32 column per ``(column, loaded fastText model)``: P(positive) of each text, and per signal column
    (``quality_signals``), ``batch_rows`` texts at a time; null where the text normalises to nothing, and the
    signals null too where the model column ``signals_where[0]`` scores below ``signals_where[1]``."""
    values = {column: np.zeros(len(texts), dtype=np.float32) for column in [*(c for c, _ in models), *signals]}
    present = np.zeros(len(texts), dtype=bool)
    signalled = np.zeros(len(texts), dtype=bool)
    for start in range(0, len(texts), batch_rows):
        batch = texts.slice(start, batch_rows)
        normalised, bounds = normalise_utf8(batch)
        end = start + len(batch)
        kept = present[start:end]
        kept[:] = np.diff(bounds) > 0
        if not kept.any():
            continue
        # the empty texts too, the batch as it is; their scores are masked
        for (column, _), scores in zip(models, positive_probabilities([m for _, m in models], normalised, bounds)):
            values[column][start:end] = scores
        if not signals:
            continue
        gated = kept if signals_where is None else kept & (values[signals_where[0]][start:end] >= signals_where[1])
        signalled[start:end] = gated
        raw = [t for t, g in zip(batch.to_pylist(), gated) if g]  # signals judge the raw text
        for column in signals if raw else ():
            values[column][start:end][gated] = quality_signals.score(column, raw)
    return pa.table({column: _float32(v, signalled if column in signals else present) for column, v in values.items()})


def _float32(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """``values`` as an Arrow float32 array, null where ``valid`` is False; made from its buffers because
    ``pa.array`` imports pandas on its first call, ~0.2 s of each Python worker's first task."""
    return pa.Array.from_buffers(pa.float32(), len(values),
                                 [pa.py_buffer(np.packbits(valid, bitorder="little")), pa.py_buffer(values)])


def plan_splits(files: list[tuple[str, int]], split_bytes: int) -> list[tuple[int, str, int, int]]:
    """``(index, uri, start, end)`` byte ranges of ``split_bytes`` covering every file, in file order; a file's
    last range takes up to ``SPLIT_SLOP`` x ``split_bytes``, as Hadoop's input formats do, rather than leave a
    sliver (the footer's bytes) to a split of its own."""
    splits = []
    for uri, size in files:
        start = 0
        while True:
            end = size if size - start <= SPLIT_SLOP * split_bytes else start + split_bytes
            splits.append((len(splits), uri, start, end))
            if end >= size:
                break
            start = end
    return splits


def job_splits(files: list[tuple[str, int]], footer, parallelism: int, split_bytes: int = 0
               ) -> tuple[int, list[tuple[int, str, int, int]]]:
    """The job's split size and ``plan_splits`` of ``files``: ``split_bytes`` if given, else about 8 splits per core
    of ``parallelism``, within ``MIN_SPLIT_BYTES`` and ``MAX_SPLIT_BYTES``. A split holds the row groups whose
    midpoint it holds, so one smaller than a row group may hold none: at least the largest row group of the first
    file (``footer``) (the demo's pool: 8 files of one 8.5 MB row group made 20 splits, 12 empty, ~0.1 s of a core
    each)."""
    floor = max([MIN_SPLIT_BYTES] + [sum(footer.row_group(g).column(c).total_compressed_size
                                         for c in range(footer.num_columns)) for g in range(footer.num_row_groups)])
    total = sum(size for _, size in files)
    split_bytes = split_bytes or min(MAX_SPLIT_BYTES, max(floor, -(-total // (8 * parallelism))))
    return split_bytes, plan_splits(files, split_bytes)


def _row_groups_in(metadata, start: int, end: int) -> list[int]:
    """Row groups whose midpoint lies in ``[start, end)``: each row group falls in exactly one split."""
    groups = []
    for i in range(metadata.num_row_groups):
        rg = metadata.row_group(i)
        chunks = [rg.column(c) for c in range(rg.num_columns)]
        first = min(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in chunks)
        if start <= first + sum(c.total_compressed_size for c in chunks) // 2 < end:
            groups.append(i)
    return groups


def score_split(split: tuple[int, str, int, int], models: list[tuple[str, str]], schema: pa.Schema, staging: str,
                batch_rows: int, signals: tuple[str, ...] = (), signals_where: tuple[str, float] | None = None) -> dict:
    """Executor side: score the row groups of one split into one attempt file; return its name, its row count, its
    ``source_totals``, and (from the split at the start of its file) the file's row count in its footer, so the
    driver counts the rows in, and the statistics, without a pass of its own. Only ``text``, ``source`` and
    ``n_tokens`` are decoded; each output row group is the input's column chunks, copied, plus the scores
    (``ColumnAppender``), so memory per task is one row group's text."""
    import pyarrow.parquet as pq

    index, uri, start, end = split
    fs, path = arrow_filesystem(uri)
    added = pa.schema([schema.field(column) for column in [*(c for c, _ in models), *signals]])
    with fs.open_input_file(path) as source:
        reader = pq.ParquetFile(source)
        result = {"index": index, "file": None, "rows": 0, "totals": [],
                  "file_rows": reader.metadata.num_rows if start == 0 else 0}
        groups = [g for g in _row_groups_in(reader.metadata, start, end) if reader.metadata.row_group(g).num_rows]
        if not groups:
            return result
        if not pa.schema(list(reader.schema_arrow) + list(added)).equals(schema):
            raise ConfigError(f"{uri} has schema {reader.schema_arrow}, unlike the input's first part file "
                              f"({pa.schema(list(schema)[:-len(added)])}); a dataset's part files share one schema")
        loaded = [(column, shipped.fasttext_model(name)) for column, name in models]
        out_fs, out_dir = arrow_filesystem(f"{staging}/{ATTEMPTS_DIR}")
        out_fs.create_dir(out_dir, recursive=True)
        name = f"{index:05d}-{uuid.uuid4().hex}.parquet"
        with out_fs.open_output_stream(f"{out_dir}/{name}") as sink:
            appender = ColumnAppender(source, sink, added, schema)
            for group in groups:
                rows = reader.read_row_group(group, columns=["text", "source", "n_tokens"], use_threads=False)
                scores = score_texts(rows.column("text"), loaded, batch_rows, signals, signals_where)
                appender.write_row_group(group, scores)
                result["totals"] += source_totals(pa.Table.from_arrays(
                    [rows.column("source"), rows.column("n_tokens"), *scores.columns],
                    ["source", "n_tokens", *scores.column_names]), scores.column_names)
            appender.close()
    return {**result, "file": name, "rows": sum(reader.metadata.row_group(g).num_rows for g in groups)}


def source_totals(table: pa.Table, columns: list[str]) -> list[dict]:
    """Per source in ``table`` (``source``, ``n_tokens`` and the score ``columns``): its rows, tokens, and each
    score's sum and non-null count (sums and counts, not means, so the driver can add them up)."""
    aggregates = [([], "count_all"), ("n_tokens", "sum")] + [(c, f) for c in columns for f in ("sum", "count")]
    return table.group_by("source", use_threads=False).aggregate(aggregates).to_pylist()


def score_stats(totals: list[dict], columns: list[str], rows_in: int) -> dict:
    """Rows by source and each score's mean and null count, from the tasks' ``source_totals``."""
    summed: dict = {}
    for group in totals:
        group = dict(group)
        total = summed.setdefault(group.pop("source"), dict.fromkeys(group, 0))
        for key, value in group.items():
            total[key] += value or 0  # a sum over nothing but nulls is null
    by_source = {source: {"rows": t["count_all"], "tokens": t["n_tokens_sum"],
                          **{f"{c}_mean": t[f"{c}_sum"] / t[f"{c}_count"] if t[f"{c}_count"] else None
                             for c in columns},
                          **{f"{c}_nulls": t["count_all"] - t[f"{c}_count"] for c in columns}}
                 for source, t in summed.items()}
    return {"rows_in": rows_in, "rows_out": sum(v["rows"] for v in by_source.values()), "rows_quarantined": 0,
            "tokens_out": sum(v["tokens"] or 0 for v in by_source.values()), "by_source": by_source}


def run_score(spark, config: ScoreConfig, input_path: str, output: str, overwrite: bool = False) -> dict:
    """Score the finished dataset at ``input_path`` with every classifier; write all rows to ``output``."""
    upstream = finished_manifest(spark, input_path)
    cards = [load_card(m) for m in config.models]
    columns = [card["score_column"] for card, _ in cards] + config.signals
    if len(set(columns)) != len(columns):
        raise ConfigError(f"two classifiers or signals write the same column: {columns}")
    gate = config.signals_where
    if gate is not None and gate.column not in columns[:len(cards)]:
        raise ConfigError(f"signals_where: {gate.column!r} is not a column of the classifiers scored here "
                          f"({columns[:len(cards)]})")
    signal_versions = {column: quality_signals.describe(column) for column in config.signals}
    job = JobOutput(spark, output, "score", {**to_dict(config), "cards": [c for c, _ in cards],
                                             "signal_versions": signal_versions},
                    [parts_glob(input_path), *[str(b) for _, b in cards]], overwrite)
    if (done := job.finished()) is not None:
        return done
    files = [(f["path"], f["bytes"]) for f in job.input_files if f["path"].endswith(".parquet")]
    footer = read_footer(files[0][0])
    schema = footer_schema(footer)
    clash = [c for c in columns if c in schema.names]
    if clash:
        raise ConfigError(f"{input_path} already has column(s) {clash}; score the unscored dataset or bump the "
                          "classifier version")
    models = [(card["score_column"], shipped.ship(spark, str(bin_path))) for card, bin_path in cards]
    sc = spark.sparkContext
    split_bytes, splits = job_splits(files, footer, sc.defaultParallelism, config.split_bytes)
    log.info("score: %d files, %.1f MB in %d splits of <= %.1f MB", len(files),
             sum(size for _, size in files) / 1e6, len(splits), split_bytes / 1e6)
    schema = pa.schema(list(schema) + [pa.field(c, pa.float32()) for c in columns])
    validate_schema(schema)  # before hours of scoring; commit checks every part file written with it
    staging = job.begin()
    sc.setJobDescription(f"trait score: {len(splits)} splits of {input_path}")
    task = functools.partial(score_split, models=models, schema=schema, staging=staging,
                             batch_rows=config.batch_rows, signals=tuple(config.signals),
                             signals_where=None if gate is None else (gate.column, gate.min))
    results = sc.parallelize(splits, len(splits)).map(task).collect()
    rows_in = sum(r["file_rows"] for r in results)
    written = [r for r in sorted(results, key=lambda r: r["index"]) if r["file"]]
    fs = HadoopFS(spark)
    for number, result in enumerate(written):
        fs.rename(f"{staging}/{ATTEMPTS_DIR}/{result['file']}", f"{staging}/{part_name(number)}")
    fs.delete(f"{staging}/{ATTEMPTS_DIR}")  # attempts of failed or killed tasks
    if not written:  # an empty corpus still gives a readable, typed dataset
        import pyarrow.parquet as pq

        out_fs, out_dir = arrow_filesystem(staging)
        out_fs.create_dir(out_dir, recursive=True)
        with out_fs.open_output_stream(f"{out_dir}/{part_name(0)}") as sink:
            pq.ParquetWriter(sink, schema, compression="zstd").close()
    counts = score_stats([t for r in written for t in r["totals"]], columns, rows_in)
    return job.commit(stats=lambda *_: counts,
                      extra={"tokenizer": upstream.get("tokenizer"), "score_columns": columns,
                             "splits": len(splits), "split_bytes": split_bytes,
                             "classifiers": {c["score_column"]: {"name": c["name"], "version": c["version"],
                                                                 "sha1": c["model_sha1"],
                                                                 "heldout_metrics": c["heldout_metrics"]}
                                             for c, _ in cards},
                             "signals": signal_versions})
