"""``trait ingest``: JSONL (plain, .gz, .zst) and Parquet inputs into contract Parquet.

Each input is a glob or any URI Spark reads, with its own source name and field names (dotted paths reach into
nested JSON: ``meta.url``). Rows that cannot become documents go to ``_quarantine`` with a reason; rows in =
rows out + rows quarantined is checked against an independent count of the input records.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from trait.config import ConfigError, field
from trait.contract import BASE_SCHEMA, QUARANTINE_SCHEMA, doc_id

from . import shipped
from .dataset import JobOutput, read_parts, read_quarantine
from .fs import HadoopFS

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".ndjson")
RAW_PREFIX_BYTES = 65536  # quarantine keeps this much of a bad record: enough to diagnose, bounded in size


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
            raise ConfigError("max_doc_bytes must be positive")


# Everything the parser emits: contract columns for good rows, quarantine columns for bad ones.
PARSED_SCHEMA = pa.schema(
    [pa.field(f.name, f.type, nullable=True) for f in BASE_SCHEMA]
    + [pa.field(f.name, f.type, nullable=True) for f in QUARANTINE_SCHEMA if f.name not in ("source",)]
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


class _Rows:
    """Column buffers for one output batch."""

    def __init__(self):
        self.cols = {name: [] for name in PARSED_SCHEMA.names}

    def add(self, **values):
        for name, column in self.cols.items():
            column.append(values.get(name))

    def table(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict(self.cols, schema=PARSED_SCHEMA)


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
    for name, value in (("text", text), ("url", url), ("id", _as_key(ident))):
        try:
            (value or "").encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON "\ud800" escapes decode to lone surrogates
            return {"reason": "invalid_unicode", "detail": f"{name}: {str(exc)[:200]}"}
    key = _as_key(ident)
    key = f"id:{key}" if key is not None else (f"url:{url}" if url else f"text:{text}")
    return {"id": doc_id(source, key), "source": source, "text": text, "url": url}


def _parse_jsonl(spec: InputSpec, max_bytes: int, raw: bytes) -> dict:
    if len(raw) > max_bytes:
        return {"reason": "too_large", "detail": f"record of {len(raw)} bytes > max_doc_bytes {max_bytes}"}
    if not raw.strip():
        return {"reason": "blank_line", "detail": None}
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {"reason": "invalid_utf8", "detail": str(exc)[:200]}
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return {"reason": "invalid_json", "detail": str(exc)[:200]}
    if not isinstance(obj, dict):
        return {"reason": "not_an_object", "detail": f"top-level JSON {type(obj).__name__}"}
    source = spec.source
    if spec.source_field and (sub := _as_key(_get(obj, spec.source_field))):
        source = f"{spec.source}/{sub}"
    return _document(source, spec, max_bytes, _get(obj, spec.text_field), _get(obj, spec.id_field),
                     _get(obj, spec.url_field))


def parse_batches(spec: InputSpec, max_bytes: int, tokenizer: str):
    """mapInArrow function: raw records of one input -> parsed rows (good ones carry n_tokens)."""

    def run(batches):
        counter = shipped.token_counter(tokenizer)
        fmt = spec.resolved_format()
        for batch in batches:
            data = batch.to_pydict()
            rows = _Rows()
            good = []
            for i, path in enumerate(data["input_file"]):
                if fmt == "jsonl":
                    raw = data["raw"][i]
                    row = _parse_jsonl(spec, max_bytes, raw)
                else:
                    raw = data["text"][i]
                    row = _document(spec.source, spec, max_bytes, raw, data["id"][i], data["url"][i])
                if "reason" in row:
                    rows.add(source=spec.source, input_file=path, raw=(raw or b"")[:RAW_PREFIX_BYTES], **row)
                else:
                    good.append(row)
            for row, n in zip(good, counter.count([r["text"] for r in good])):
                rows.add(n_tokens=n, **row)
            yield rows.table()

    return run


def _read_raw(spark, spec: InputSpec):
    """The input as (raw/text bytes, id, url, input_file) rows, and an independent count of its records."""
    from pyspark.sql import functions as F

    # The matched files, not the glob: Spark probes a glob path for a streaming-sink log and prints a stack trace
    # when it is not a directory. (JobOutput's fingerprint has already refused a glob that matches nothing.)
    files = [uri for uri, _, _ in HadoopFS(spark).glob(spec.path)]
    if spec.resolved_format() == "jsonl":
        df = spark.read.text(files).select(
            F.col("value").cast("binary").alias("raw"), F.col("_metadata.file_path").alias("input_file"))
        return df, df.count()
    df = spark.read.parquet(*files)
    missing = [f for f in (spec.text_field, spec.id_field, spec.url_field) if f and f.split(".")[0] not in df.columns]
    if missing:
        raise ConfigError(f"{spec.path}: column(s) {missing} not found; columns are: {', '.join(df.columns)}")

    def col(name):
        return F.col(name).cast("string") if name else F.lit(None).cast("string")

    df = df.select(F.col(spec.text_field).cast("binary").alias("text"), col(spec.id_field).alias("id"),
                   col(spec.url_field).alias("url"), F.col("_metadata.file_path").alias("input_file"))
    return df, df.count()


def ingest_stats(rows_in: dict[str, int]):
    """Stats over the written output: rows and tokens out by source (sub-sources included), quarantined rows by
    input source and reason, and the balance per input source."""

    def stats(spark, path: str) -> dict:
        from pyspark.sql import functions as F

        out = {r["source"]: {"rows_out": r["rows"], "tokens_out": r["tokens"] or 0} for r in read_parts(spark, path)
               .groupBy("source").agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")).collect()}
        quarantined: dict[str, dict[str, int]] = {}
        for r in read_quarantine(spark, path).groupBy("source", "reason").count().collect():
            quarantined.setdefault(r["source"], {})[r["reason"]] = r["count"]
        inputs = {}
        for source, n in sorted(rows_in.items()):
            mine = [v for s, v in out.items() if s == source or s.startswith(f"{source}/")]
            inputs[source] = {"rows_in": n, "rows_out": sum(v["rows_out"] for v in mine),
                              "tokens_out": sum(v["tokens_out"] for v in mine),
                              "quarantined": quarantined.get(source, {})}
        return {
            "rows_in": sum(rows_in.values()),
            "rows_out": sum(v["rows_out"] for v in out.values()),
            "rows_quarantined": sum(sum(v.values()) for v in quarantined.values()),
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
    tokenizer = config.tokenizer
    if tokenizer.startswith("hf:"):
        tokenizer = "hf:" + shipped.ship(spark, tokenizer[3:])
    parsed, rows_in = None, {}
    for spec in config.inputs:
        raw, n = _read_raw(spark, spec)
        rows_in[spec.source] = rows_in.get(spec.source, 0) + n
        part = raw.mapInArrow(parse_batches(spec, config.max_doc_bytes, tokenizer), from_arrow_schema(PARSED_SCHEMA))
        parsed = part if parsed is None else parsed.unionByName(part)
    # One Python pass over the input feeds both outputs: the parsed rows are kept on disk between the writes.
    parsed = parsed.persist(StorageLevel.DISK_ONLY)
    try:
        good = parsed.where(F.col("reason").isNull()).select(*BASE_SCHEMA.names)
        bad = parsed.where(F.col("reason").isNotNull()).select(*QUARANTINE_SCHEMA.names)
        return job.write(good, bad, stats=ingest_stats(rows_in), max_records_per_file=config.max_records_per_file,
                         extra={"tokenizer": config.tokenizer})
    finally:
        parsed.unpersist()
