"""Resumable, traceable output of a generation run: deterministic ids, atomic chunks, a contract dataset at the end.

Generation is slow and may be killed at any moment (SIGKILL, pre-emption, a lost node), so work is cut into
numbered batches of groups whose composition depends only on the config, and each finished batch is committed as
one Parquet file by an atomic rename (``<output>._chunks/batch-NNNNNNNN.parquet``). A rerun skips every committed
batch and regenerates the rest, so every passage appears exactly once, however often the run was interrupted.
``finish`` then writes the contract dataset, its rows checked against ``trait.contract`` first: accepted passages
(and, when validation flags rather than drops, flagged ones) as ``part-NNNNN.parquet``; rejected outputs in
``_quarantine`` with their reason and the whole row as JSON; ``manifest.json`` with counts by reason, the run's
fingerprint and the contract version; ``_SUCCESS`` last, through staging and a move. A finished output of another
fingerprint is refused, never replaced.

``<output>._chunks`` stays after ``finish``, on purpose: it is the run's journal, every batch as it was committed,
with each passage's raw generator reply (the dataset keeps raw replies only for quarantined rows), for audits of
what the generator said, and so that a rerun of the same config rebuilds the dataset without a generator. The
dataset does not need it: delete it once the replies are no longer wanted (a rerun of the same config then
generates again). What the store deletes is only ever its own staging and a TRAIT dataset at ``output``
(``trait.outputs`` refuses any other folder, and an output that overlaps an input).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trait.config import ConfigError
from trait.contract import (
    BASE_FIELDS,
    CONTRACT_VERSION,
    MANIFEST_NAME,
    QUARANTINE_DIR,
    QUARANTINE_SCHEMA,
    SUCCESS_MARKER,
    part_name,
    validate_table,
)
from trait.outputs import STAGING_ENTRIES, check_folder, check_output

# Every generated row: the contract's base columns, the provenance, and the validation verdict.
ROW_SCHEMA = pa.schema([
    *BASE_FIELDS,
    pa.field("problem_ids", pa.list_(pa.string())),
    pa.field("tasks", pa.list_(pa.string())),
    pa.field("template_version", pa.string()),
    pa.field("model", pa.string()),
    pa.field("sampling", pa.string()),  # the sampling parameters as sorted JSON
    pa.field("finish_reason", pa.string()),
    pa.field("reject_reason", pa.string()),  # null: accepted
    pa.field("reject_detail", pa.string()),
    pa.field("enlightenment", pa.string()),  # the passage's closing paragraph (null: the output never parsed)
    pa.field("raw_output", pa.string()),  # what the generator returned, for rejected rows and audits
])
PART_ROWS = 100_000  # passages per part file (~2 KB each: ~200 MB)
RUN_MARKER = "run.json"
# What <output>._chunks holds: the run's marker, committed batches, and temporary files of unfinished commits.
CHUNK_ENTRIES = (RUN_MARKER, "batch-*.parquet", ".*")


def passage_id(problem_ids: list[str], template_version: str, model: str, sampling: dict) -> str:
    """Stable id of a passage: sha1 over its problems (in order), the template version, the model and sampling."""
    blob = json.dumps({"problems": list(problem_ids), "template": template_version, "model": model,
                       "sampling": sampling}, sort_keys=True)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


class ChunkStore:
    """Committed batches of one run under ``<output>._chunks``; ``finish`` turns them into the dataset."""

    def __init__(self, output: str | Path, fingerprint: str, schema: pa.Schema = ROW_SCHEMA,
                 inputs: Iterable[str | Path] = ()):
        """``fingerprint``: what fixes the batches' composition and content (the config, minus knobs that only
        change how fast it runs). Batches committed under another fingerprint are refused, never mixed in, and so
        is a finished output of another fingerprint. ``schema``: the rows' columns (default: passages); it needs
        ``id``, ``source``, ``text``, ``n_tokens``, ``reject_reason``, ``reject_detail``, and every column but
        ``raw_output`` goes to the dataset. ``inputs``: the paths or globs the run reads, which ``output`` may not
        overlap. Nothing is written until the first ``commit``."""
        self.output = Path(output)
        self.fingerprint = fingerprint
        self.schema = schema
        self.output_columns = [n for n in schema.names if n != "raw_output"]
        self.chunks = Path(f"{self.output}._chunks")
        self.staging = Path(f"{self.output}._staging")
        check_output(self.output, inputs=inputs)
        check_folder(self.chunks, CHUNK_ENTRIES, dataset=False, name="chunks folder")
        check_folder(self.staging, STAGING_ENTRIES, dataset=False, name="staging folder")
        # A ConfigError (a ValueError too): the CLI prints what to do instead of a traceback.
        marker = self.chunks / RUN_MARKER
        found = json.loads(marker.read_text())["fingerprint"] if marker.exists() else None
        if found not in (None, fingerprint):
            raise ConfigError(f"{self.chunks} holds batches of a run with another config (fingerprint {found}, "
                              f"this run {fingerprint}): write to another output, or delete it to start over")
        # Outputs made before manifests carried the fingerprint have none: their batches' marker decides.
        found = (self._manifest() or {}).get("fingerprint")
        if found not in (None, fingerprint):
            raise ConfigError(f"{self.output} holds a finished run with another config (fingerprint {found}, "
                              f"this run {fingerprint}): write to another output, or delete it to start over")

    def _manifest(self) -> dict | None:
        """The manifest of the finished dataset at ``output``, or None."""
        if not (self.output / SUCCESS_MARKER).exists():
            return None
        return json.loads((self.output / MANIFEST_NAME).read_text())

    def _path(self, batch: int) -> Path:
        return self.chunks / f"batch-{batch:08d}.parquet"

    def committed(self) -> set[int]:
        """Numbers of the batches already committed (a killed run's temporary files are not batches)."""
        return {int(p.stem.split("-")[1]) for p in self.chunks.glob("batch-*.parquet")}

    def commit(self, batch: int, rows: list[dict]) -> None:
        """Write ``rows`` (dicts with the schema's keys) as batch ``batch``, atomically: temp file, then rename."""
        table = pa.Table.from_pylist(rows, schema=self.schema)
        marker = self.chunks / RUN_MARKER
        if not marker.exists():
            self.chunks.mkdir(parents=True, exist_ok=True)
            tmp = self.chunks / f".run-{uuid.uuid4().hex}.json"
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint}))
            os.replace(tmp, marker)
        tmp = self.chunks / f".tmp-{batch:08d}-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, self._path(batch))

    def rows(self) -> pa.Table:
        """Every committed row, in batch order."""
        tables = [pq.read_table(self._path(b)) for b in sorted(self.committed())]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()

    def finish(self, manifest: dict, keep_flagged: bool, rows: pa.Table | None = None) -> dict:
        """Write the dataset from every committed batch (in batch order); returns the manifest with its counts.

        Accepted rows (and, when ``keep_flagged``, rejected ones that have text, their reason in
        ``reject_reason``) go to the data; the other rejected rows go to ``_quarantine``. Checks rows in = out +
        quarantined. ``rows``: the committed rows as the caller amended them (e.g. run-wide dedup verdicts)."""
        rows = self.rows() if rows is None else rows
        ids = rows.column("id").to_pylist()
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"{self.chunks}: a passage id appears twice; the batches overlap")
        rejected_mask = [r is not None for r in rows.column("reject_reason").to_pylist()]
        # Flagging keeps a rejected passage that has text; one that never parsed has none and is quarantined.
        has_text = [bool(t) for t in rows.column("text").to_pylist()]
        keep = [not r or (keep_flagged and t) for r, t in zip(rejected_mask, has_text)]
        data = rows.filter(pa.array(keep)).select(self.output_columns)
        bad = rows.filter(pa.array([not k for k in keep]))
        quarantine = pa.table({
            "source": bad.column("source"),
            "input_file": pa.array([str(self.chunks)] * bad.num_rows, pa.string()),
            "reason": bad.column("reject_reason"),
            "detail": pa.array([f"{i}: {d}" if d else i for i, d in
                                zip(bad.column("id").to_pylist(), bad.column("reject_detail").to_pylist())]),
            "raw": pa.array([json.dumps(r, default=str).encode() for r in bad.to_pylist()], pa.binary()),
        }, schema=QUARANTINE_SCHEMA)
        by_reason: dict[str, int] = {}
        for reason, rejected in zip(rows.column("reject_reason").to_pylist(), rejected_mask):
            if rejected:
                by_reason[reason] = by_reason.get(reason, 0) + 1
        counts = {"rows_in": rows.num_rows, "rows_out": data.num_rows, "rows_quarantined": quarantine.num_rows,
                  "rows_flagged": sum(r and k for r, k in zip(rejected_mask, keep)),
                  "tokens_out": sum(data.column("n_tokens").to_pylist()), "rejected_by_reason": by_reason,
                  "batches": len(self.committed())}
        if counts["rows_in"] != counts["rows_out"] + counts["rows_quarantined"]:
            raise RuntimeError(f"rows in {counts['rows_in']} != out {counts['rows_out']} + quarantined "
                               f"{counts['rows_quarantined']}")
        validate_table(data)  # the quarantine is built with the contract's schema above
        staging = self.staging
        check_folder(staging, STAGING_ENTRIES, dataset=False, name="staging folder")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / QUARANTINE_DIR).mkdir(parents=True)
        for index, start in enumerate(range(0, max(data.num_rows, 1), PART_ROWS)):
            pq.write_table(data.slice(start, PART_ROWS), staging / part_name(index), compression="zstd")
        pq.write_table(quarantine, staging / QUARANTINE_DIR / part_name(0), compression="zstd")
        manifest = {**manifest, "contract_version": CONTRACT_VERSION, "fingerprint": self.fingerprint,
                    "counts": counts}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        (staging / SUCCESS_MARKER).write_text("")
        check_folder(self.output)  # still new, empty or a TRAIT dataset after the hours the run may have taken
        shutil.rmtree(self.output, ignore_errors=True)
        os.replace(staging, self.output)
        return manifest
