"""The Parquet data contract shared by every stage. Imports nothing heavier than pyarrow.

Every dataset a TRAIT stage writes is a directory holding zero-padded ``part-NNNNN.parquet`` files, a
``manifest.json`` and, last of all, a ``_SUCCESS`` marker. Rows carry:

- ``id``: string, a stable hash of the document's source identity (its id or url in the source) or, when the
  source has neither, of its content. Never a row position, never Python's salted ``hash()``.
- ``source``: string, where the row came from (``wiki/enwiki-2015``).
- ``text``: string, non-null and non-empty.
- ``url``: string or null.
- ``n_tokens``: int64, counted with the tokenizer named in the manifest.
- ``score_<name>_v<version>``: float32 per scorer; null when there was nothing to score.

Every writer checks its rows or part files against this module before it commits (``validate_table``,
``validate_schema``, ``validate_quarantine_schema``) and writes ``contract_version`` into the manifest; every reader
refuses a dataset of another major version (``parse_manifest``; a manifest without the key is version 1).
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa

from trait import UserError

CONTRACT_VERSION = 1

SUCCESS_MARKER = "_SUCCESS"
MANIFEST_NAME = "manifest.json"
QUARANTINE_DIR = "_quarantine"

BASE_FIELDS = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=True),
    pa.field("n_tokens", pa.int64(), nullable=False),
)
BASE_SCHEMA = pa.schema(BASE_FIELDS)

# Quarantined rows keep whatever could be recovered of the input, plus where it came from and why.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("input_file", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),
        pa.field("raw", pa.binary(), nullable=True),
    ]
)
# Why ingest quarantines a row (`reason`; `detail` says more). `corrupt_file`: one row for a file that cannot be
# decoded past some point; `duplicate_id`: a row whose id an earlier row (input order, file, position) has.
INGEST_QUARANTINE_REASONS = ("blank_line", "invalid_utf8", "invalid_json", "not_an_object", "null_text",
                             "text_not_string", "empty_text", "too_large", "invalid_unicode", "corrupt_file",
                             "duplicate_id")

_SCORE_COLUMN = re.compile(r"^score_[a-z0-9_]+_v[0-9]+$")


class ContractError(UserError, ValueError):
    """A dataset or table does not follow the data contract."""


def doc_id(source: str, key: str) -> str:
    """Stable document id: sha1 over ``source`` and the source-side key (id, url or text), hex, 40 chars."""
    h = hashlib.sha1(source.encode("utf-8"))
    h.update(b"\x00")
    h.update(key.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def score_column(name: str, version: int) -> str:
    """Column name of a scorer's output, e.g. ``score_domain_math_v1``."""
    column = f"score_{name}_v{version}"
    if not _SCORE_COLUMN.match(column):
        raise ContractError(
            f"scorer name {name!r} gives column {column!r}; names use lower-case letters, digits and '_'"
        )
    return column


def part_name(index: int) -> str:
    """File name of the ``index``-th part of a dataset: ``part-00000.parquet``."""
    return f"part-{index:05d}.parquet"


def _require(schema: pa.Schema, fields, what: str = "column") -> None:
    names = schema.names
    for field in fields:
        if field.name not in names:
            raise ContractError(f"{what} {field.name!r} not found; columns are: {', '.join(names)}")
        actual = schema.field(field.name).type
        if actual != field.type:
            raise ContractError(f"{what} {field.name!r} has type {actual}, the contract says {field.type}")


def validate_schema(schema: pa.Schema) -> None:
    """Raise ContractError unless ``schema`` has the base columns with their types, and well-named scores."""
    _require(schema, BASE_FIELDS)
    for name in schema.names:
        if name.startswith("score_"):
            if not _SCORE_COLUMN.match(name):
                raise ContractError(f"score column {name!r} is not named score_<name>_v<version>")
            if schema.field(name).type != pa.float32():
                raise ContractError(f"score column {name!r} has type {schema.field(name).type}, expected float")


def validate_quarantine_schema(schema: pa.Schema) -> None:
    """Raise ContractError unless ``schema`` has the quarantine's columns with their types."""
    _require(schema, QUARANTINE_SCHEMA, "quarantine column")


def validate_table(table: pa.Table) -> None:
    """Schema check plus the row rules that a schema cannot carry: non-null, non-empty text and id."""
    validate_schema(table.schema)
    import pyarrow.compute as pc

    for column in ("id", "source", "text", "n_tokens"):
        nulls = table.column(column).null_count
        if nulls:
            raise ContractError(f"column {column!r} has {nulls} null values; the contract forbids nulls there")
    empty = pc.sum(pc.equal(pc.utf8_length(table.column("text")), 0)).as_py() or 0
    if empty:
        raise ContractError(f"column 'text' has {empty} empty strings; empty documents belong in quarantine")


def parse_manifest(text: str | bytes, where: str) -> dict:
    """The manifest of the dataset at ``where``, from its JSON text; a ContractError when it is not a JSON object or
    names a major ``contract_version`` other than this module's (a manifest without the key is version 1: manifests
    were written before it existed)."""
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise ContractError(f"{where}/{MANIFEST_NAME} is not valid JSON ({err}); the dataset is damaged") from None
    if not isinstance(manifest, dict):
        raise ContractError(f"{where}/{MANIFEST_NAME} is a JSON {type(manifest).__name__}, not an object")
    version = manifest.get("contract_version", 1)
    if isinstance(version, bool) or str(version).partition(".")[0] != str(CONTRACT_VERSION):
        raise ContractError(f"{where} was written under data contract version {version!r}; this TRAIT reads "
                            f"version {CONTRACT_VERSION}: rewrite it with this TRAIT's jobs, or read it with the TRAIT "
                            "that wrote it")
    return manifest


def finished_dataset(path: str, columns_needed: tuple[str, ...] = ("text",)):
    """A pyarrow Dataset over a finished contract directory (local or any pyarrow filesystem URI).

    Raises ContractError when the directory has no ``_SUCCESS`` (unfinished or not a dataset), its manifest is of
    another contract version, or it lacks a column.
    """
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    root = root.rstrip("/")
    if fs.get_file_info(f"{root}/{SUCCESS_MARKER}").type == pafs.FileType.NotFound:
        raise ContractError(f"{path} is not a finished dataset (no {SUCCESS_MARKER}); run the job that makes it")
    if fs.get_file_info(f"{root}/{MANIFEST_NAME}").type != pafs.FileType.NotFound:
        with fs.open_input_stream(f"{root}/{MANIFEST_NAME}") as fh:
            parse_manifest(fh.read(), path)
    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root))
                   if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    dataset = ds.dataset(parts, filesystem=fs, format="parquet")
    missing = [c for c in columns_needed if c not in dataset.schema.names]
    if missing:
        raise ContractError(f"{path}: column(s) {missing} not found; columns are: {', '.join(dataset.schema.names)}")
    return dataset


def write_text_dataset(path, source: str, texts: list[str]) -> str:
    """A small finished contract dataset of ``texts`` (one part, a manifest, ``_SUCCESS``) at the new directory
    ``path``; ids hash (source, text), ``n_tokens`` counts words, blank texts are left out. Returns the path.
    For fixtures and benchmarks; the pipeline's jobs write their datasets through Spark."""
    from pathlib import Path

    import pyarrow.parquet as pq

    path = Path(path)
    path.mkdir(parents=True)
    texts = [t for t in texts if t.strip()]
    table = pa.table({"id": [doc_id(source, t) for t in texts], "source": [source] * len(texts), "text": texts,
                      "url": pa.nulls(len(texts), pa.string()), "n_tokens": [len(t.split()) for t in texts]},
                     schema=BASE_SCHEMA)
    validate_table(table)
    pq.write_table(table, path / part_name(0))
    (path / MANIFEST_NAME).write_text(json.dumps({"contract_version": CONTRACT_VERSION, "rows": len(texts),
                                                  "tokenizer": "words"}))
    (path / SUCCESS_MARKER).write_text("")
    return str(path)
