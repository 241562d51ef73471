"""Ingest's reader: the input files as positioned records, read in the Python workers.

The files are read here, not by Spark's text and Parquet readers, for two reasons. A file that cannot be decoded
(a truncated or corrupt ``.gz``/``.zst``, a file that is not Parquet, a 0-byte ``.parquet``) becomes one
``CorruptFile`` for the caller to quarantine, and the rest of the corpus goes on. And every record carries its
position in its file (the byte offset of a JSONL line in the uncompressed stream, the row number in a Parquet
file), so "the first" of two rows with one id depends on the inputs alone, not on how Spark split the work.

Work is planned as splits ``(input index, uri, start, end)``: byte ranges of uncompressed JSONL and of Parquet
(by row group), whole files for compressed JSONL (a compressed stream cannot be entered in the middle).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pyarrow as pa

from .dataset import DatasetError
from .fs import arrow_filesystem

SPLIT_BYTES = 64 << 20  # the largest split (half Spark's default partition); small inputs get smaller ones
CODECS = {".gz": "gzip", ".zst": "zstd"}  # by file suffix; anything else is read as plain text
PARQUET_BATCH_ROWS = 1024
# A read that meets a truncated or corrupt stream fails whole: lines in its buffer are lost with it.
DECOMPRESSED_BUFFER = 64 << 10


class CorruptFile(Exception):
    """A file whose bytes cannot be decoded past some point (``str``: the decoder's message)."""


def _codec(uri: str) -> str | None:
    return CODECS.get(os.path.splitext(uri)[1].lower())


def plan_splits(files: list[tuple[int, str, int]], fmt: list[str],
                split_bytes: int) -> list[tuple[int, int, str, int, int]]:
    """``(split index, input index, uri, start, end)`` covering every ``(input index, uri, bytes)`` file, in
    order; ``fmt[input index]`` is 'jsonl' or 'parquet'. Compressed JSONL files are one split each."""
    splits = []
    for index, uri, size in files:
        step = max(size if fmt[index] == "jsonl" and _codec(uri) else split_bytes, 1)
        for start in range(0, max(size, 1), step):  # an empty file is one empty split
            splits.append((len(splits), index, uri, start, min(start + step, size)))
    return splits


def check_readable(uri: str) -> None:
    """Raise DatasetError when a local input cannot be opened (a permission error would otherwise fail a
    Spark task with a trace). Remote files are not opened here: one round trip each, in series, on the driver."""
    fs, path = arrow_filesystem(uri)
    if fs.type_name != "local":
        return
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # non-blocking: a named pipe must not hang the job
    except PermissionError:
        raise DatasetError(f"permission denied: cannot read input file {path}; make it readable "
                           "(chmod a+r) or leave it out of the input glob") from None


def read_split(fmt: str, uri: str, start: int, end: int, max_bytes: int, columns: list[str]) -> Iterator:
    """Records of one split: ``(position, raw line)`` for JSONL (a line over ``max_bytes`` is cut to
    ``max_bytes + 1`` bytes), ``(position, {column: value})`` for Parquet (``columns``: top-level names wanted;
    those a file lacks are left out). Raises CorruptFile after the last record that could be decoded."""
    fs, path = arrow_filesystem(uri)
    if fmt == "parquet":
        with fs.open_input_file(path) as source:
            yield from _parquet_rows(source, start, end, columns)
    elif (codec := _codec(uri)) is not None:
        with fs.open_input_stream(path, compression=codec) as source:
            try:
                yield from _lines(io.BufferedReader(source, DECOMPRESSED_BUFFER), 0, None, max_bytes)
            except OSError as exc:  # pyarrow's decompressors report a truncated or corrupt stream as an OSError
                raise CorruptFile(f"{codec} stream cannot be decompressed: {exc or 'read error'}") from None
    else:
        with fs.open_input_file(path) as source:
            yield from _lines(io.BufferedReader(source, 1 << 20), start, end, max_bytes)


def _read_line(stream, limit: int) -> tuple[bytes, int]:
    """The next line without its end, cut to ``limit + 1`` bytes, and how many bytes it took in the stream."""
    line = stream.readline(limit + 1)
    taken = len(line)
    if line.endswith(b"\n"):
        return line[:-1], taken
    if taken > limit:  # longer than the limit: skip the rest of it without holding it in memory
        while rest := stream.readline(1 << 20):
            taken += len(rest)
            if rest.endswith(b"\n"):
                break
    return line, taken


def _lines(stream, start: int, end: int | None, limit: int) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` for each line that starts in ``[start, end)`` (``end`` None: to the end of the
    stream). The line that crosses ``start`` belongs to the split before: a split starting past 0 skips to the
    first line start at or after ``start``, and reads on past ``end`` to finish its last line."""
    offset = start
    if start > 0:
        stream.seek(start - 1)
        offset += _read_line(stream, limit)[1] - 1
    while end is None or offset < end:
        line, taken = _read_line(stream, limit)
        if not taken:
            return
        yield offset, line
        offset += taken


def _parquet_rows(source, start: int, end: int, columns: list[str]) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    from .score import _row_groups_in

    try:
        reader = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        if start == 0:  # the file's first split speaks for the file; the others read nothing
            raise CorruptFile(f"not a readable Parquet file: {exc}") from None
        return
    metadata = reader.metadata
    first_rows = [0]
    for i in range(metadata.num_row_groups):
        first_rows.append(first_rows[-1] + metadata.row_group(i).num_rows)
    present = [c for c in dict.fromkeys(columns) if c in reader.schema_arrow.names]
    position = None
    try:
        for group in _row_groups_in(metadata, start, end):
            position = first_rows[group]
            for batch in reader.iter_batches(PARQUET_BATCH_ROWS, row_groups=[group], columns=present,
                                             use_threads=False):
                for row in batch.to_pylist():
                    yield position, row
                    position += 1
    except (pa.ArrowException, OSError) as exc:
        raise CorruptFile(f"Parquet data cannot be decoded (row {position}): {exc}") from None
