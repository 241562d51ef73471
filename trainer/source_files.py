"""The documents of one finished contract dataset, as the trainer reads them: its part files, the rows that are
documents (rows with a ``reject_reason`` left out unless included), a fingerprint for the token cache, and their
text read by row number, so that a cache entry can tokenise any subset without reading the rest into Python."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trait import UserError
from trait.contract import MANIFEST_NAME, finished_dataset

REJECT_COLUMN = "reject_reason"  # non-null: a row that failed validation (synth's flagged passages)
# Text per work unit. Wikipedia articles average ~14 KB, so ~70 documents: big enough that the pickling round trip
# (~1 ms) is noise beside tokenising it (~0.5 s at ~2 MB/s per core), small enough that 20 MB makes 20 units to
# balance over the workers.
CHUNK_BYTES = 1 << 20


class DataError(UserError, ValueError):
    """Training data cannot be used as given (missing, unfinished, empty, too long); the message says what to do."""


class SourceFiles:
    """The part files of one finished dataset, the rows that are its documents, and their fingerprint (names, sizes,
    mtimes, manifest digest, rows kept). ``include_rejected``: also the rows with a ``reject_reason``."""

    def __init__(self, path: str, text_column: str, name: str, include_rejected: bool = False):
        import pyarrow.compute as pc
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        self.path, self.text_column, self.name = path, text_column, name
        fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            raise DataError(f"source '{name}': input {path} does not exist; run the stage that writes it or fix "
                            "the path in data.sources")
        try:
            dataset = finished_dataset(path, (text_column,))
        except UserError as exc:
            raise DataError(f"source '{name}': {exc}") from exc
        self.fs, self.has_id = fs, "id" in dataset.schema.names
        self.files = sorted(dataset.files)
        infos = fs.get_file_info(self.files)
        self.bytes = sum(i.size for i in infos)  # Parquet bytes, compressed
        self.metadata = []
        rejected = []
        for file in self.files:
            with fs.open_input_file(file) as fh:
                parquet = pq.ParquetFile(fh)
                self.metadata.append(parquet.metadata)
                if REJECT_COLUMN in dataset.schema.names:
                    column = parquet.read(columns=[REJECT_COLUMN]).column(0)
                    rejected.append(pc.is_valid(column).to_numpy(zero_copy_only=False))
        self.rows = sum(m.num_rows for m in self.metadata)
        text_index = dataset.schema.get_field_index(text_column)
        # Uncompressed bytes of the text column (values and offsets): sizes the first tokenising pass of a need.
        self.text_bytes = sum(m.row_group(g).column(text_index).total_uncompressed_size
                              for m in self.metadata for g in range(m.num_row_groups))
        mask = np.concatenate(rejected) if rejected else np.zeros(self.rows, bool)
        count = int(mask.sum())
        self.rejected = {"rows": count, "included": count if include_rejected else 0,
                         "excluded": 0 if include_rejected else count}
        # The documents: every row, or the accepted ones. int64 [documents], ascending.
        self.doc_rows = np.flatnonzero(~mask) if self.rejected["excluded"] else np.arange(self.rows, dtype=np.int64)
        manifest = f"{root.rstrip('/')}/{MANIFEST_NAME}"
        digest = ""
        if fs.get_file_info(manifest).type != pafs.FileType.NotFound:
            with fs.open_input_stream(manifest) as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        # The directory's own path is left out so a moved dataset keeps its cache; mtimes are in so a dataset
        # rewritten in place (same names, maybe same sizes) does not.
        self.fingerprint = {"files": [[Path(i.path).name, i.size, i.mtime_ns] for i in infos],
                            "manifest_sha256": digest, "text_column": text_column,
                            "rows": "accepted" if self.rejected["excluded"] else "all"}

    def _groups(self) -> Iterator[tuple[int, int, int, int]]:
        """(file index, row group, its first row in the dataset, its rows) of every row group, in dataset order."""
        start = 0
        for f, metadata in enumerate(self.metadata):
            for g in range(metadata.num_row_groups):
                rows = metadata.row_group(g).num_rows
                yield f, g, start, rows
                start += rows

    def chunks(self, chunk_bytes: int = CHUNK_BYTES, rows: np.ndarray | None = None
               ) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(dataset rows ``int64``, their texts) of about ``chunk_bytes`` of text each, in dataset order: the rows
        ``rows`` (ascending), or every row. Row groups holding none of them are not read."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = np.arange(self.rows, dtype=np.int64) if rows is None else rows
        kept: list[np.ndarray] = []
        texts: list[str] = []
        size = 0
        for f, group, start, count in self._groups():
            lo, hi = np.searchsorted(rows, [start, start + count])
            if lo == hi:
                continue
            wanted, offset = rows[lo:hi] - start, 0  # rows of this group, counted from its first
            with self.fs.open_input_file(self.files[f]) as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=1024, row_groups=[group],
                                                             columns=[self.text_column]):
                    a, b = np.searchsorted(wanted, [offset, offset + batch.num_rows])
                    if a < b:
                        text = batch.column(0).take(pa.array(wanted[a:b] - offset))
                        if text.null_count:
                            raise DataError(f"source '{self.name}': {self.files[f]} has {text.null_count} null "
                                            f"values in '{self.text_column}'; the contract forbids them, rerun the "
                                            "stage that wrote it")
                        kept.append(wanted[a:b] + start)
                        texts.extend(text.to_pylist())
                        size += text.nbytes
                        if size >= chunk_bytes:
                            yield np.concatenate(kept), texts
                            kept, texts, size = [], [], 0
                    offset += batch.num_rows
        if texts:
            yield np.concatenate(kept), texts

    def document_id(self, row: int) -> str:
        """The ``id`` of dataset row ``row`` (``<part file>#<row in it>`` for a dataset without ids)."""
        import pyarrow.parquet as pq

        for f, group, start, count in self._groups():
            if start <= row < start + count:
                if not self.has_id:
                    return f"{Path(self.files[f]).name}#{row - sum(m.num_rows for m in self.metadata[:f])}"
                with self.fs.open_input_file(self.files[f]) as fh:
                    return pq.ParquetFile(fh).read_row_group(group, columns=["id"]).column(0)[row - start].as_py()
        raise IndexError(f"source '{self.name}' has {self.rows} rows, asked for row {row}")
