"""``trait ingest``: JSONL (plain, .gz, .zst) and Parquet inputs into contract Parquet.

Each input is a glob or any URI Spark reads, with its own source name and field names (dotted paths reach into
nested JSON: ``meta.url``). The files are read and parsed in the Python workers (``ingest_read``). Rows that cannot
become documents go to ``_quarantine`` with a reason (``INGEST_QUARANTINE_REASONS``): bad records, files that
cannot be decoded (one row naming the file), and every repeat of an id after its first row. Ids are unique in the
output, and rows in (records read, plus one per undecodable file) = rows out + rows quarantined is checked.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from trait.config import ConfigError, field
from trait.contract import BASE_SCHEMA, INGEST_QUARANTINE_REASONS, QUARANTINE_DIR, QUARANTINE_SCHEMA, doc_id

from . import shipped
from .dataset import JobOutput, read_parts, read_quarantine
from .fs import HadoopFS, arrow_filesystem
from .ingest_read import SPLIT_BYTES, CorruptFile, check_readable, plan_splits, read_split

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".ndjson")
RAW_PREFIX_BYTES = 65536  # quarantine keeps this much of a bad record: enough to diagnose, bounded in size
# A Python worker holds one output batch: at most this many rows, cut early past BATCH_BYTES of input records.
BATCH_ROWS, BATCH_BYTES = 2048, 64 << 20
# Repeated ids (with the file and position of their first row, ~200 bytes each: 40 MB) are sent to every task
# up to this many; past it Spark joins them to the rows by shuffling both.
MAX_BROADCAST_IDS = 200_000


@dataclass
class InputSpec:
    path: str = field(help="glob or URI of the input files (anything spark.read accepts)")
    source: str = field(help="source name written to every row, e.g. 'wiki/enwiki-2015'")
    format: str = field("auto", help="'jsonl', 'parquet', or 'auto' (from the file suffix)")
    text_field: str = field("text", help="field holding the document text (dotted path for nested JSON)")
    id_field: str | None = field("id", help="field with the source's own document id; null: use url, else text")
    url_field: str | None = field("url", help="field with the document url, or null")
    source_field: str | None = field(None, help="JSONL field naming a sub-source: rows get '<source>/<value>'")

    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        lower = self.path.lower().rstrip("/*")
        if lower.endswith(JSONL_SUFFIXES):
            return "jsonl"
        if lower.endswith(".parquet") or "." not in lower.rsplit("/", 1)[-1]:
            return "parquet"
        raise ConfigError(f"cannot tell the format of {self.path!r} from its suffix; set format: jsonl|parquet")

    def columns(self) -> list[str]:
        """Top-level Parquet columns holding the text, id and url fields."""
        return [f.split(".")[0] for f in (self.text_field, self.id_field, self.url_field) if f]

    def validate(self) -> None:
        if self.format not in ("auto", "jsonl", "parquet"):
            raise ConfigError(f"input format {self.format!r}: use 'jsonl', 'parquet' or 'auto'")
        self.resolved_format()


@dataclass
class IngestConfig:
    inputs: list[InputSpec] = field(help="the input files, each with its source name and fields")
    tokenizer: str = field("words", help="token counter: 'words' or 'hf:<path to tokenizer.json>'")
    max_doc_bytes: int = field(4 << 20, help="documents larger than this (UTF-8 bytes) are quarantined")
    max_records_per_file: int = field(100_000, help="rows per output part file (keeps files splittable)")

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("ingest needs at least one input")
        if self.max_doc_bytes <= 0:
            raise ConfigError(f"max_doc_bytes must be positive, got {self.max_doc_bytes}")
        if self.max_records_per_file <= 0:
            raise ConfigError(f"max_records_per_file must be positive, got {self.max_records_per_file}")
        self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        """Load a local tokenizer file here, so a wrong path fails before any Spark work (remote ones are
        fetched by Spark)."""
        if self.tokenizer == "words":
            return
        path = self.tokenizer[3:] if self.tokenizer.startswith("hf:") else None
        if not path:
            raise ConfigError(f"tokenizer {self.tokenizer!r}: use 'words' or 'hf:<path to tokenizer.json>'")
        if "://" in path:
            return
        if not os.path.isfile(path):
            raise ConfigError(f"tokenizer file {path} not found; give hf:<path to a tokenizer.json>")
        from .text import TokenCounter

        try:
            TokenCounter(self.tokenizer)
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ConfigError(f"tokenizer file {path} cannot be loaded: {str(exc)[:200]}") from None


# Everything the parser emits: contract columns for good rows, quarantine columns for bad ones, and where each
# record was read (the input's index in the config, the file, the record's position in it) for every row.
PARSED_SCHEMA = pa.schema(
    [pa.field(f.name, f.type, nullable=True) for f in BASE_SCHEMA]
    + [pa.field(f.name, f.type, nullable=True) for f in QUARANTINE_SCHEMA if f.name not in ("source",)]
    + [pa.field("input_index", pa.int32()), pa.field("position", pa.int64())]
)


def _get(obj: Any, path: str | None) -> Any:
    if path is None:
        return None
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _as_key(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def _document(source: str, spec: InputSpec, max_bytes: int, text: Any, ident: Any, url: Any) -> dict:
    """Validate one record's fields; returns the row (good) or the quarantine reason and detail (bad)."""
    if text is None:
        return {"reason": "null_text", "detail": f"field {spec.text_field!r} is missing or null"}
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return {"reason": "invalid_utf8", "detail": str(exc)[:200]}
    if not isinstance(text, str):
        return {"reason": "text_not_string", "detail": f"{spec.text_field!r} is {type(text).__name__}"}
    if not text.strip():
        return {"reason": "empty_text", "detail": None}
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return {"reason": "too_large", "detail": f"{size} bytes > max_doc_bytes {max_bytes}"}
    url = _as_key(url)
    for name, value in (("text", text), ("url", url), ("id", _as_key(ident)), ("source", source)):
        try:
            (value or "").encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON "\ud800" escapes decode to lone surrogates
            return {"reason": "invalid_unicode", "detail": f"{name}: {str(exc)[:200]}"}
    key = _as_key(ident)
    key = f"id:{key}" if key is not None else (f"url:{url}" if url else f"text:{text}")
    return {"id": doc_id(source, key), "source": source, "text": text, "url": url}


def _parse_jsonl(spec: InputSpec, max_bytes: int, raw: bytes) -> dict:
    if len(raw) > max_bytes:
        return {"reason": "too_large", "detail": f"record of more than max_doc_bytes {max_bytes} bytes"}
    if not raw.strip():
        return {"reason": "blank_line", "detail": None}
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {"reason": "invalid_utf8", "detail": str(exc)[:200]}
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays or objects nested ~1,000 deep
        return {"reason": "invalid_json", "detail": str(exc)[:200]}
    if not isinstance(obj, dict):
        return {"reason": "not_an_object", "detail": f"top-level JSON {type(obj).__name__}"}
    source = spec.source
    if spec.source_field and (sub := _as_key(_get(obj, spec.source_field))):
        source = f"{spec.source}/{sub}"
    return _document(source, spec, max_bytes, _get(obj, spec.text_field), _get(obj, spec.id_field),
                     _get(obj, spec.url_field))


def _raw_bytes(value: Any) -> bytes | None:
    """What quarantine keeps of a Parquet record's text value."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


class _Batch:
    """Parsed rows for one output batch; the good ones get their token counts when the batch is taken."""

    def __init__(self, counter):
        self.counter = counter
        self.bad: list[dict] = []
        self.good: list[dict] = []
        self.bytes = 0

    def add(self, row: dict, raw: bytes | None, **where) -> None:
        if "reason" in row:
            self.bad.append({**where, **row, "raw": raw[:RAW_PREFIX_BYTES] if raw is not None else None})
        else:
            self.good.append({**where, **row})
        self.bytes += len(raw or b"")

    def full(self) -> bool:
        return len(self.bad) + len(self.good) >= BATCH_ROWS or self.bytes >= BATCH_BYTES

    def take(self) -> pa.RecordBatch:
        counts = self.counter.count([r["text"] for r in self.good])
        rows = self.bad + [{**r, "n_tokens": n} for r, n in zip(self.good, counts)]
        self.bad, self.good, self.bytes = [], [], 0
        return pa.RecordBatch.from_pylist(rows, schema=PARSED_SCHEMA)


def _parse_split(spec: InputSpec, index: int, uri: str, start: int, end: int, max_bytes: int, counter):
    """PARSED_SCHEMA batches for the records of one split: one row per record, and one `corrupt_file` row when
    the file cannot be decoded past some point (the records before it stay)."""
    fmt = spec.resolved_format()
    batch = _Batch(counter)
    where = {"input_index": index, "input_file": uri}
    position, records = start - 1, 0
    try:
        for position, record in read_split(fmt, uri, start, end, max_bytes, spec.columns()):
            if fmt == "jsonl":
                row, raw = _parse_jsonl(spec, max_bytes, record), record
            else:
                text = _get(record, spec.text_field)
                row = _document(spec.source, spec, max_bytes, text, _get(record, spec.id_field),
                                _get(record, spec.url_field))
                raw = _raw_bytes(text)
            batch.add(row, raw, source=spec.source, position=position, **where)
            records += 1
            if batch.full():
                yield batch.take()
    except CorruptFile as exc:
        batch.add({"reason": "corrupt_file", "detail": f"{exc} ({records} records before it were read)"}, None,
                  source=spec.source, position=position + 1, **where)
    if batch.bad or batch.good:
        yield batch.take()


def parse_splits(specs: list[InputSpec], splits: list[tuple], max_bytes: int, tokenizer: str):
    """mapInArrow function over ``spark.range(len(splits))``: each id names a split of ``splits``
    (``plan_splits``) to read and parse into PARSED_SCHEMA batches."""

    def run(batches):
        counter = shipped.token_counter(tokenizer)
        for batch in batches:
            for split in batch.column("id").to_pylist():
                _, index, uri, start, end = splits[split]
                yield from _parse_split(specs[index], index, uri, start, end, max_bytes, counter)

    return run


def _check_columns(spec: InputSpec, uris: list[str]) -> None:
    """ConfigError when the first Parquet file of an input that opens lacks a configured column (a file that
    does not open is quarantined by the job)."""
    import pyarrow.parquet as pq

    for uri in uris:
        fs, path = arrow_filesystem(uri)
        try:
            with fs.open_input_file(path) as source:
                names = pq.ParquetFile(source).schema_arrow.names
        except (pa.ArrowException, OSError):
            continue
        missing = [f for f in (spec.text_field, spec.id_field, spec.url_field) if f and f.split(".")[0] not in names]
        if missing:
            raise ConfigError(f"{spec.path}: column(s) {missing} not found; columns are: {', '.join(names)}")
        return


def _quarantine_repeats(parsed, firsts):
    """``parsed`` with each good row whose id an earlier good row has turned into a `duplicate_id` quarantine row.
    Earlier means by input (config order), then file uri, then position in the file: the row kept never depends
    on how Spark split or scheduled the work. ``firsts``: (id, first) for each repeated id (``_first_rows``)."""
    from pyspark.sql import functions as F

    order = F.struct("input_index", "input_file", "position")
    repeat = F.col("first").isNotNull() & (order != F.col("first"))
    detail = F.format_string("id %s: its first row, kept, is in %s at position %d (the byte offset of a JSONL "
                             "line, the row number in a Parquet file)", F.col("id"), F.col("first.input_file"),
                             F.col("first.position"))
    return (parsed.join(firsts, "id", "left")
            .withColumn("reason", F.when(repeat, F.lit("duplicate_id")).otherwise(F.col("reason")))
            .withColumn("detail", F.when(repeat, detail).otherwise(F.col("detail")))
            .withColumn("raw", F.when(repeat, F.substring(F.col("text").cast("binary"), 1, RAW_PREFIX_BYTES))
                        .otherwise(F.col("raw"))))


def _first_rows(parsed):
    """(id, first) of every id that more than one good row has; ``first``: (input_index, input_file, position)
    of its first row."""
    from pyspark.sql import functions as F

    return (parsed.where(F.col("reason").isNull()).groupBy("id")
            .agg(F.count("*").alias("rows"), F.min(F.struct("input_index", "input_file", "position")).alias("first"))
            .where(F.col("rows") > 1).select("id", "first"))


def ingest_stats(rows_in: dict[str, int]):
    """Stats over the written output: rows and tokens out by source (sub-sources included), quarantined rows by
    input source and reason, and the balance per input source."""

    def stats(spark, path: str) -> dict:
        from pyspark.sql import functions as F

        out = {r["source"]: {"rows_out": r["rows"], "tokens_out": r["tokens"] or 0} for r in read_parts(spark, path)
               .groupBy("source").agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).collect()}
        quarantined: dict[str, dict[str, int]] = {}
        by_reason = dict.fromkeys(INGEST_QUARANTINE_REASONS, 0)
        for r in read_quarantine(spark, path).groupBy("source", "reason").count().collect():
            quarantined.setdefault(r["source"], {})[r["reason"]] = r["count"]
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + r["count"]
        inputs = {}
        for source, n in sorted(rows_in.items()):
            mine = [s for s in {*out, *quarantined} if s == source or s.startswith(f"{source}/")]
            reasons: dict[str, int] = {}  # a repeated id of a sub-source is quarantined under the sub-source
            for counts in (quarantined.get(s, {}) for s in mine):
                for reason, count in counts.items():
                    reasons[reason] = reasons.get(reason, 0) + count
            inputs[source] = {"rows_in": n, "rows_out": sum(out[s]["rows_out"] for s in mine if s in out),
                              "tokens_out": sum(out[s]["tokens_out"] for s in mine if s in out),
                              "quarantined": dict(sorted(reasons.items()))}
        return {
            "rows_in": sum(rows_in.values()),
            "rows_out": sum(v["rows_out"] for v in out.values()),
            "rows_quarantined": sum(by_reason.values()),
            "quarantined_by_reason": by_reason,
            "tokens_out": sum(v["tokens_out"] for v in out.values()),
            "by_input_source": inputs,
            "by_source": dict(sorted(out.items())),
        }

    return stats


def run_ingest(spark, config: IngestConfig, output: str, overwrite: bool = False) -> dict:
    """Ingest ``config.inputs`` into the contract dataset at ``output``; returns its manifest."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from trait.config import to_dict

    job = JobOutput(spark, output, "ingest", to_dict(config), [s.path for s in config.inputs], overwrite)
    if (done := job.finished()) is not None:
        return done
    files = []
    for index, spec in enumerate(config.inputs):
        matched = [(uri, size) for uri, size, _ in HadoopFS(spark).glob(spec.path)]
        for uri, _ in matched:
            check_readable(uri)
        if spec.resolved_format() == "parquet":
            _check_columns(spec, [uri for uri, _ in matched])
        files.extend((index, uri, size) for uri, size in matched)
    tokenizer = config.tokenizer
    if tokenizer.startswith("hf:"):
        tokenizer = "hf:" + shipped.ship(spark, tokenizer[3:])
    # Splits of the input over 4 tasks per core (so the last wave is short), of 1 MiB to SPLIT_BYTES; many small
    # files share a task (a task costs ~50 ms to start).
    total, cores = sum(size for *_, size in files), spark.sparkContext.defaultParallelism
    split_bytes = min(SPLIT_BYTES, max(1 << 20, -(-total // (4 * cores))))
    splits = plan_splits(files, [s.resolved_format() for s in config.inputs], split_bytes)
    tasks = min(len(splits), max(4 * cores, -(-total // split_bytes)))
    parse = parse_splits(config.inputs, splits, config.max_doc_bytes, tokenizer)
    # One Python pass over the input: the parsed rows are kept on disk for the count, the ids and both writes.
    parsed = spark.range(len(splits), numPartitions=tasks).mapInArrow(parse, from_arrow_schema(PARSED_SCHEMA))
    parsed = parsed.persist(StorageLevel.DISK_ONLY)
    try:
        rows_in = dict.fromkeys((s.source for s in config.inputs), 0)
        for r in parsed.groupBy("input_index").count().collect():
            rows_in[config.inputs[r["input_index"]].source] += r["count"]
        # Not cached: a cached aggregate keeps all spark.sql.shuffle.partitions (200 tasks per read); computed
        # again for each write instead, only when some id repeats, from the cached rows.
        firsts = _first_rows(parsed)
        rows = parsed
        if repeated := firsts.count():
            log.info("ingest: %d ids are on more than one row; their later rows go to quarantine", repeated)
            rows = _quarantine_repeats(parsed, F.broadcast(firsts) if repeated <= MAX_BROADCAST_IDS else firsts)
        good = rows.where(F.col("reason").isNull()).select(*BASE_SCHEMA.names)
        bad = rows.where(F.col("reason").isNotNull()).select(*QUARANTINE_SCHEMA.names)
        manifest = job.write(good, bad, stats=ingest_stats(rows_in), max_records_per_file=config.max_records_per_file,
                             extra={"tokenizer": config.tokenizer, "splits": len(splits)})
    finally:
        parsed.unpersist()
    if corrupt := manifest["counts"]["quarantined_by_reason"]["corrupt_file"]:
        log.warning("ingest: %d input file(s) could not be decoded to their end; %s/%s names them "
                    "(reason corrupt_file)", corrupt, job.path, QUARANTINE_DIR)
    return manifest
