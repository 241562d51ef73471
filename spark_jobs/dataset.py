"""Contract datasets on any Hadoop-reachable URI: read only what is finished, write through staging.

A job's output appears all at once: Spark writes into ``<output>._staging``; the part files are renamed to
``part-NNNNN.parquet``; every part's schema is checked against the data contract (``trait.contract``); statistics
are aggregated from the written files (never from accumulators); the manifest and ``_SUCCESS`` are written; then
the staging directory is moved into place. A killed job leaves only staging, which the rerun deletes. A finished
output whose fingerprint (config + inputs) matches is skipped. A dataset of another contract version is not read.

What is deleted is only ever a TRAIT dataset or this job's own staging: before it reads its inputs' rows, a job
refuses an output folder holding anything else, and an output that overlaps an input (``trait.outputs``); the
check is repeated just before staging and the old output are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

import pyarrow as pa

from trait import UserError, __version__
from trait.contract import (
    CONTRACT_VERSION,
    MANIFEST_NAME,
    QUARANTINE_DIR,
    QUARANTINE_SCHEMA,
    SUCCESS_MARKER,
    ContractError,
    parse_manifest,
    part_name,
    validate_quarantine_schema,
    validate_schema,
)
from trait.outputs import DATASET_ENTRIES, PART_FILES, STAGING_ENTRIES, check_folder, check_output

from .fs import HadoopFS, arrow_filesystem

log = logging.getLogger(__name__)

# Row groups are the unit Spark splits Parquet into tasks by. 16 MiB (~1,000 Wikipedia articles) gives a 2-core
# machine several tasks per file; Parquet's 128 MiB default would make a 100 MB file a single task.
ROW_GROUP_BYTES = 16 << 20


class DatasetError(UserError, RuntimeError):
    """An input dataset is unfinished or an output conflicts with an earlier run."""


def _versions(spark) -> dict[str, str]:
    out = {"trait": __version__, "python": platform.python_version(), "spark": spark.version,
           "java": str(spark._jvm.java.lang.System.getProperty("java.version"))}
    for dist in ("pyarrow", "fasttext-community", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def parts_glob(path: str) -> str:
    """The data files of a dataset directory (its manifest, marker and quarantine are not data)."""
    return f"{path.rstrip('/')}/{PART_FILES}"


def _read_path(pattern: str) -> str:
    """What an input glob reads as a whole: the dataset directory of a ``parts_glob``, else the glob itself."""
    return pattern[:-len(PART_FILES) - 1] if pattern.endswith(f"/{PART_FILES}") else pattern


def read_parts(spark, path: str):
    """DataFrame over a dataset directory's part files, finished or (for a job's own statistics) staging.
    A filter rather than a glob path: Spark probes a glob path as a file and logs a stack trace when it is not one;
    ``_quarantine`` and other ``_`` directories are skipped by Spark's file listing."""
    return spark.read.option("pathGlobFilter", PART_FILES).parquet(path.rstrip("/"))


def read_quarantine(spark, path: str):
    """DataFrame over the quarantine of the dataset (finished or staging) at ``path``, read with the contract's
    quarantine schema: a run without bad rows may leave no file to infer it from. The part files are named one by
    one: Spark takes a root path whose name starts with ``_`` for a hidden one and warns "All paths were ignored"
    (it reads it all the same)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = from_arrow_schema(QUARANTINE_SCHEMA)
    parts = [uri for uri, _, _ in HadoopFS(spark).glob(parts_glob(f"{path.rstrip('/')}/{QUARANTINE_DIR}"))]
    return spark.read.schema(schema).parquet(*parts) if parts else spark.createDataFrame([], schema)


def finished_manifest(spark, path: str) -> dict:
    """The manifest of a finished dataset; raises DatasetError when ``path`` has no ``_SUCCESS``, ContractError
    when it was written under another major contract version."""
    fs = HadoopFS(spark)
    base = path.rstrip("/")
    if not fs.exists(f"{base}/{SUCCESS_MARKER}"):
        raise DatasetError(f"{path} is not a finished dataset (no {SUCCESS_MARKER}); run the job that makes it")
    return parse_manifest(fs.read_text(f"{base}/{MANIFEST_NAME}"), path)


def read_footer(uri: str):
    """The Parquet footer (``pyarrow.parquet.FileMetaData``) of one file."""
    import pyarrow.parquet as pq

    fs, path = arrow_filesystem(uri)
    with fs.open_input_file(path) as source:
        return pq.ParquetFile(source).metadata


def footer_schema(footer) -> pa.Schema:
    """Arrow schema of a Parquet footer, without Spark's schema metadata (which describes the columns Spark wrote,
    not ones added after: Spark would read a scored file without its scores)."""
    return pa.schema(list(footer.schema.to_arrow_schema()))


def read_schema(uri: str) -> pa.Schema:
    """``footer_schema`` of one Parquet file."""
    return footer_schema(read_footer(uri))


def open_dataset(spark, path: str):
    """(DataFrame, manifest) of a finished dataset; raises DatasetError when ``path`` has no ``_SUCCESS``."""
    manifest = finished_manifest(spark, path)
    return read_parts(spark, path.rstrip("/")), manifest


def fingerprint(spark, job: str, config: dict, input_globs: list[str]) -> tuple[str, list[dict]]:
    """Hash of the job, its resolved config and its input files (uri, size, mtime); also the file list."""
    fs = HadoopFS(spark)
    files = []
    for pattern in input_globs:
        matched = fs.glob(pattern)
        if not matched:
            raise DatasetError(f"input {pattern!r} matches no files")
        files.extend({"path": uri, "bytes": size, "mtime_ms": mtime} for uri, size, mtime in matched)
    blob = json.dumps({"job": job, "config": config, "inputs": files}, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest(), files


@dataclass
class JobOutput:
    """Where a job writes, and what it needs to decide whether its work is already done."""

    spark: object
    path: str
    job: str
    config: dict
    input_globs: list[str]
    overwrite: bool = False
    own: tuple[str, ...] = ()  # names the job writes into its dataset besides parts, manifest and `_` entries
    writes_rows: bool = True  # False: the job writes only its `own` files (a report), no part files to check
    started: float = field(default_factory=time.time)

    def __post_init__(self):
        self.fs = HadoopFS(self.spark)
        self.path = self.fs.qualify(self.path.rstrip("/"))
        self.staging = f"{self.path}._staging"
        self.fingerprint, self.input_files = fingerprint(self.spark, self.job, self.config, self.input_globs)
        check_output(self.path, inputs=[_read_path(g) for g in self.input_globs],
                     matched=[f["path"] for f in self.input_files], own=(*DATASET_ENTRIES, *self.own), fs=self.fs)
        self._check_staging()

    def _check_staging(self) -> None:
        """Refuse a ``<output>._staging`` that holds anything a job's staging never does (it is about to go)."""
        check_folder(self.staging, (*STAGING_ENTRIES, *self.own), dataset=False, fs=self.fs, name="staging folder")

    def finished(self) -> dict | None:
        """The manifest of an identical finished run (so the caller can skip), else None.

        Raises DatasetError when a finished output came from another config or other inputs, unless overwrite.
        """
        if not self.fs.exists(f"{self.path}/{SUCCESS_MARKER}"):
            return None
        manifest = json.loads(self.fs.read_text(f"{self.path}/{MANIFEST_NAME}"))
        if manifest.get("fingerprint") == self.fingerprint:
            log.info("%s: %s is finished with the same config and inputs; nothing to do", self.job, self.path)
            return manifest
        if not self.overwrite:
            raise DatasetError(f"{self.path} holds a finished {manifest.get('job')} run with another config or "
                               "other inputs; choose a new output path or pass --overwrite")
        return None

    def write(self, data, quarantine=None, stats: Callable[[object, str], dict] | None = None,
              extra: dict | None = None, max_records_per_file: int = 0) -> dict:
        """Write DataFrame ``data`` (and ``quarantine``) through staging with Spark's writer; return the manifest."""
        self.begin()
        t0 = time.time()
        self.write_parts(data, self.staging, max_records_per_file)
        log.info("%s: data written in %.1f s", self.job, time.time() - t0)
        if quarantine is not None:
            self.write_parts(quarantine, f"{self.staging}/{QUARANTINE_DIR}")
        return self.commit(stats, extra)

    def write_parts(self, df, directory: str, max_records_per_file: int = 0) -> None:
        """Write DataFrame ``df`` into ``directory`` (inside staging) as ``part-NNNNN.parquet`` files."""
        # No dictionary for `text`: documents are unique, so Parquet would build one page per row group only to
        # discard it (3 s of 20 s when scoring 240 MB on one core); `source` and the rest keep theirs.
        writer = (df.write.mode("overwrite").option("parquet.block.size", ROW_GROUP_BYTES)
                  .option("parquet.enable.dictionary#text", "false"))
        if max_records_per_file:
            writer = writer.option("maxRecordsPerFile", max_records_per_file)
        writer.parquet(directory)
        self._rename_parts(directory)

    def begin(self) -> str:
        """Clear what a killed run left in staging; return the staging path for the job to write into."""
        self._check_staging()
        self.fs.delete(self.staging)
        return self.staging

    def commit(self, stats: Callable[[object, str], dict] | None = None, extra: dict | None = None) -> dict:
        """Aggregate ``stats`` over the staged files, check the balance, write the manifest and ``_SUCCESS``, and
        move staging into place; return the manifest.

        ``stats(spark, staging_path)`` must return a dict with ``rows_in``, ``rows_out`` and ``rows_quarantined``
        (and ``rows_rejected_by_reason`` for a selection, counted independently of the output).
        """
        if self.writes_rows:
            self._check_parts()
        t0 = time.time()
        counts = stats(self.spark, self.staging) if stats else {}
        log.info("%s: statistics aggregated over the output in %.1f s", self.job, time.time() - t0)
        if counts:
            accounted = counts["rows_out"] + counts["rows_quarantined"] + counts.get("rows_rejected_by_reason", 0)
            if counts["rows_in"] != accounted:
                raise DatasetError(
                    f"{self.job}: rows in ({counts['rows_in']}) != rows out ({counts['rows_out']}) + quarantined "
                    f"({counts['rows_quarantined']}) + rejected ({counts.get('rows_rejected_by_reason', 0)}); "
                    f"output left in {self.staging}")
        manifest = {
            "job": self.job,
            "contract_version": CONTRACT_VERSION,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "inputs": self.input_files,
            "counts": counts,
            "versions": _versions(self.spark),
            "spark_master": self.spark.sparkContext.master,
            "wall_time_s": round(time.time() - self.started, 3),
            **(extra or {}),
        }
        self.fs.write_text(f"{self.staging}/{MANIFEST_NAME}", json.dumps(manifest, indent=2, sort_keys=True))
        self.fs.write_text(f"{self.staging}/{SUCCESS_MARKER}", "")
        # The output may have changed while the job ran: replace it only if it is still a TRAIT dataset.
        check_folder(self.path, (*DATASET_ENTRIES, *self.own), fs=self.fs)
        self.fs.delete(self.path)
        self.fs.rename(self.staging, self.path)
        log.info("%s: wrote %s in %.1f s", self.job, self.path, manifest["wall_time_s"])
        return manifest

    def _check_parts(self) -> None:
        """Every staged part file follows the data contract (its schema, read from the footer), and so does the
        quarantine's: a job whose rows break the contract fails here, before anything is committed."""
        parts = [uri for uri, _, _ in self.fs.glob(parts_glob(self.staging))]
        if not parts:
            raise DatasetError(f"{self.job}: no part file in {self.staging}; a dataset holds at least one")
        quarantine = [uri for uri, _, _ in self.fs.glob(parts_glob(f"{self.staging}/{QUARANTINE_DIR}"))]
        for uri, check in [(u, validate_schema) for u in parts] + [(u, validate_quarantine_schema) for u in quarantine]:
            try:
                check(read_schema(uri))
            except ContractError as err:
                raise ContractError(f"{self.job} wrote {uri}, which breaks the data contract: {err}; output left in "
                                    f"{self.staging}") from None

    def _rename_parts(self, directory: str) -> None:
        """Spark's ``part-00003-<uuid>-c000.zstd.parquet`` become ``part-00000.parquet`` ... in Spark's order."""
        names = self.fs.list(directory)
        parts = [n for n in names if n.startswith("part-") and n.endswith(".parquet")]
        for name in names:
            if name.endswith(".crc") or name == SUCCESS_MARKER:
                self.fs.delete(f"{directory}/{name}")  # checksum side files, Spark's own marker
        for index, name in enumerate(parts):
            self.fs.rename(f"{directory}/{name}", f"{directory}/{part_name(index)}")
