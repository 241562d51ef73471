"""``ColumnAppender``: row groups copied chunk by chunk with new columns appended read back, with pyarrow and with
Spark (whose reader uses the page index and bloom filters), as the input plus the new columns."""

from __future__ import annotations

import io
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from spark_jobs.parquet_append import ColumnAppender, ParquetAppendError, encode, read_footer, read_struct

ADDED = pa.schema([pa.field("score_a", pa.float32()), pa.field("score_b", pa.float32())])


def _footer(path) -> bytes:
    data = path.read_bytes()
    return data[-8 - struct.unpack("<I", data[-8:-4])[0]:-8]


def _spark_file(spark, tmp_path, rows: int = 3000):
    """One part file written by Spark: row groups of 64 kB with pages of 4 kB (so ``id`` and ``text`` have several
    per chunk), page index, a bloom filter on ``id``, dictionaries on ``n`` and ``meta.b``, a nested column."""
    df = spark.range(rows).selectExpr(
        "concat('doc-', id) AS id", "IF(id % 7 = 0, NULL, id % 100) AS n", "named_struct('a', id, 'b', 'x') AS meta",
        "concat_ws(' ', sha2(CAST(id AS STRING), 256), sha2(CAST(id * 7 AS STRING), 256)) AS text")
    out = str(tmp_path / "spark")
    (df.coalesce(1).write.option("parquet.block.size", 64 << 10).option("parquet.page.size", 4 << 10)
     .option("parquet.dictionary.page.size", 16 << 10).option("parquet.bloom.filter.enabled#id", "true").parquet(out))
    return next((tmp_path / "spark").glob("part-*.parquet"))


def _pyarrow_file(tmp_path):
    """A file written by pyarrow: dictionary columns, a large_string kept in ARROW:schema, page index, nulls."""
    table = pa.table({"id": [f"doc-{i}" for i in range(1000)],
                      "text": pa.array([f"text {i}" * (i % 5) for i in range(1000)], pa.large_string()),
                      "source": pa.array(["wiki", "web"] * 500).dictionary_encode(),
                      "n": pa.array([None if i % 9 == 0 else i for i in range(1000)], pa.int32())})
    path = tmp_path / "arrow.parquet"
    pq.write_table(table, path, row_group_size=300, write_page_index=True, compression="snappy")
    return path


def _append(src, out, groups: list[int], seed: int = 0) -> pa.Table:
    """Append ADDED to row groups ``groups`` of ``src``; the added table (random scores, some null)."""
    meta = pq.ParquetFile(src).metadata
    schema = pa.schema(list(pq.ParquetFile(src).schema_arrow) + list(ADDED))
    rng = np.random.default_rng(seed)
    added = []
    with pa.OSFile(str(src)) as source, open(out, "wb") as sink:
        appender = ColumnAppender(source, sink, ADDED, schema)
        for g in groups:
            rows = meta.row_group(g).num_rows
            table = pa.table({"score_a": pa.array(rng.random(rows, dtype=np.float32)),
                              "score_b": pa.array(rng.random(rows, dtype=np.float32), mask=rng.random(rows) < 0.1)})
            appender.write_row_group(g, table)
            added.append(table)
        appender.close()
    return pa.concat_tables(added)


@pytest.mark.parametrize("writer", ["spark", "pyarrow"])
def test_footers_round_trip_byte_for_byte(spark, tmp_path, writer):
    path = _spark_file(spark, tmp_path) if writer == "spark" else _pyarrow_file(tmp_path)
    raw = _footer(path)
    decoded, end = read_struct(raw)
    assert end == len(raw) and encode(decoded) == raw


@pytest.mark.parametrize("writer", ["spark", "pyarrow"])
def test_the_output_is_the_kept_row_groups_plus_the_new_columns(spark, tmp_path, writer):
    src = _spark_file(spark, tmp_path) if writer == "spark" else _pyarrow_file(tmp_path)
    source = pq.ParquetFile(src)
    assert source.metadata.num_row_groups >= 3
    groups = [0, 2, source.metadata.num_row_groups - 1]
    added = _append(src, tmp_path / "out.parquet", groups)
    out = pq.ParquetFile(tmp_path / "out.parquet")
    expected = pa.concat_tables([source.read_row_group(g) for g in groups])
    assert out.schema_arrow.equals(pa.schema(list(source.schema_arrow) + list(ADDED)))
    for field in ADDED:
        expected = expected.append_column(field, added[field.name])
    assert out.read().equals(expected)
    assert out.metadata.num_rows == expected.num_rows and out.metadata.created_by == source.metadata.created_by
    for new, old in enumerate(groups):
        for c in range(source.metadata.num_columns):  # the copied chunks keep their encodings and statistics
            a, b = out.metadata.row_group(new).column(c), source.metadata.row_group(old).column(c)
            assert (a.encodings, a.compression, a.statistics, a.total_compressed_size) == \
                (b.encodings, b.compression, b.statistics, b.total_compressed_size)


def test_bloom_filters_are_copied_with_the_chunks(spark, tmp_path):
    """Spark's reader ignores a bloom filter it cannot read (it only prunes with it), so compare the bytes."""
    src = _spark_file(spark, tmp_path)
    groups = [1, 2]
    _append(src, tmp_path / "out.parquet", groups)

    def blooms(path, keep):
        with pa.OSFile(str(path)) as f:
            meta = read_footer(f)
            found = []
            for g in keep:
                for chunk in meta[4][1][1][g][1][1][1]:  # FileMetaData.row_groups[g].columns
                    column = chunk[3][1]  # ColumnChunk.meta_data
                    if 14 in column:  # bloom_filter_offset: header (Thrift) and bitset
                        header, length = read_struct(f.read_at(64, column[14][1]))
                        found.append(f.read_at(length + header[1][1], column[14][1]))
            return found

    copied = blooms(tmp_path / "out.parquet", range(len(groups)))
    assert copied and copied == blooms(src, groups)


def test_spark_reads_the_output_through_its_page_index_and_bloom_filters(spark, tmp_path):
    """Filters Spark pushes down to the page index (a range of ``id``: a few of its pages) and to the bloom
    filter (``id =``) read the moved pages and filters: a wrong offset would fail to decode or drop rows."""
    src = _spark_file(spark, tmp_path)
    groups = list(range(pq.ParquetFile(src).metadata.num_row_groups))[1:]
    (tmp_path / "out").mkdir()
    _append(src, tmp_path / "out" / "part-0.parquet", groups)
    expected = pq.read_table(tmp_path / "out" / "part-0.parquet")
    df = spark.read.parquet(str(tmp_path / "out"))
    assert df.count() == expected.num_rows
    ids = expected["id"].to_pylist()
    for probe in (ids[0], ids[len(ids) // 2], ids[-1], "doc-0"):  # doc-0 is in the row group left out
        assert df.filter(df.id == probe).count() == ids.count(probe)
    for where, mask in (("id >= 'doc-1500' AND id < 'doc-1520'", (pc.field("id") >= "doc-1500") &
                         (pc.field("id") < "doc-1520")),
                        ("n = 41", pc.field("n") == 41)):
        rows = df.filter(where).select("id", "text", "score_a", "meta.a").orderBy("id").collect()
        want = expected.filter(mask).sort_by("id")
        assert len(rows) == want.num_rows > 0
        assert [tuple(r) for r in rows] == list(zip(want["id"].to_pylist(), want["text"].to_pylist(),
                                                    want["score_a"].to_pylist(),
                                                    [m["a"] for m in want["meta"].to_pylist()]))


def test_what_cannot_be_copied_is_refused(tmp_path):
    src = _pyarrow_file(tmp_path)
    data = bytearray(src.read_bytes())
    two_rows = pa.table({"score_a": pa.array([1, 2], pa.float32()), "score_b": pa.array([1, 2], pa.float32())})
    with (pytest.raises(ValueError, match="row group 0 has 300 rows; the added columns have 2"),
          pa.OSFile(str(src)) as source, open(tmp_path / "out.parquet", "wb") as sink):
        ColumnAppender(source, sink, ADDED, ADDED).write_row_group(0, two_rows)
    for tail, message in ((b"PARE", "encrypted"), (b"JUNK", "not a Parquet file")):
        bad = tmp_path / f"{tail.decode()}.parquet"
        bad.write_bytes(bytes(data[:-4]) + tail)
        with pytest.raises(ParquetAppendError, match=message), pa.OSFile(str(bad)) as source:
            ColumnAppender(source, io.BytesIO(), ADDED, ADDED)
