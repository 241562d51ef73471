"""Append columns to the row groups of a Parquet file without decoding or re-compressing the existing ones.

``trait score`` adds a few float columns to documents whose ``text`` is most of the bytes. Re-encoding the text
(zstd) cost ~5 % of the job, more than the scoring can spare; here each output row group is the input's column
chunks, copied byte for byte, followed by the new columns' chunks, encoded by pyarrow in a small file of their
own and copied the same way. parquet-java's ``ParquetRewriter`` joins columns the same way; this is the part of
it a Python worker needs.

What changes in the copy is only where things are: every file offset in the column metadata (data, dictionary
and index pages, bloom filters), the page index (column index copied, offset index re-encoded with the page
offsets moved) and the footer (the new columns appended to the schema, the row groups and the column orders).
Statistics, encodings, compression and the writer's ``created_by`` (which readers consult for known writer bugs)
are the input's. The footer is Thrift in the compact protocol, decoded and re-encoded generically, so fields
this module does not know survive the copy. Encrypted files and column chunks kept in other files are refused.
"""

from __future__ import annotations

import base64
import io
import struct

import pyarrow as pa

MAGIC = b"PAR1"

# Thrift compact protocol type ids.
TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)


class ParquetAppendError(ValueError):
    """The input cannot be copied column chunk by column chunk."""


# --- Thrift compact protocol, generic: a struct is {field id: [type, value]} in field order; a list or set is
# [element type, [values]]; a map [key type, value type, [(key, value)]]. Unknown fields round-trip unchanged.

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _read_value(buf: bytes, pos: int, kind: int):
    if kind in (TRUE, FALSE):  # only list elements get here: a byte each
        return buf[pos] == TRUE, pos + 1
    if kind == BYTE:
        return struct.unpack_from("<b", buf, pos)[0], pos + 1
    if kind in (I16, I32, I64):
        value, pos = _varint(buf, pos)
        return _unzigzag(value), pos
    if kind == DOUBLE:
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if kind == BINARY:
        size, pos = _varint(buf, pos)
        return bytes(buf[pos:pos + size]), pos + size
    if kind in (LIST, SET):
        header = buf[pos]
        pos += 1
        size, elem = header >> 4, header & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        values = []
        for _ in range(size):
            value, pos = _read_value(buf, pos, elem)
            values.append(value)
        return [elem, values], pos
    if kind == MAP:
        size, pos = _varint(buf, pos)
        if not size:
            return [0, 0, []], pos
        key_kind, value_kind = buf[pos] >> 4, buf[pos] & 0x0F
        pos += 1
        entries = []
        for _ in range(size):
            key, pos = _read_value(buf, pos, key_kind)
            value, pos = _read_value(buf, pos, value_kind)
            entries.append((key, value))
        return [key_kind, value_kind, entries], pos
    if kind == STRUCT:
        return read_struct(buf, pos)
    raise ParquetAppendError(f"corrupt Thrift: unknown compact type {kind} at byte {pos}")


def read_struct(buf: bytes, pos: int = 0) -> tuple[dict, int]:
    """Decode one compact-protocol struct at ``pos``; the struct and the position after it."""
    fields: dict[int, list] = {}
    last = 0
    while True:
        header = buf[pos]
        pos += 1
        if header == 0:
            return fields, pos
        delta, kind = header >> 4, header & 0x0F
        if delta:
            last += delta
        else:
            raw, pos = _varint(buf, pos)
            last = _unzigzag(raw)
        if kind in (TRUE, FALSE):
            fields[last] = [kind, kind == TRUE]
        else:
            value, pos = _read_value(buf, pos, kind)
            fields[last] = [kind, value]


def _put_varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _write_value(out: bytearray, kind: int, value) -> None:
    if kind in (TRUE, FALSE):
        out.append(TRUE if value else FALSE)
    elif kind == BYTE:
        out += struct.pack("<b", value)
    elif kind in (I16, I32, I64):
        _put_varint(out, _zigzag(value))
    elif kind == DOUBLE:
        out += struct.pack("<d", value)
    elif kind == BINARY:
        _put_varint(out, len(value))
        out += value
    elif kind in (LIST, SET):
        elem, values = value
        if len(values) < 15:
            out.append(len(values) << 4 | elem)
        else:
            out.append(0xF0 | elem)
            _put_varint(out, len(values))
        for v in values:
            _write_value(out, elem, v)
    elif kind == MAP:
        key_kind, value_kind, entries = value
        _put_varint(out, len(entries))
        if entries:
            out.append(key_kind << 4 | value_kind)
        for key, v in entries:
            _write_value(out, key_kind, key)
            _write_value(out, value_kind, v)
    elif kind == STRUCT:
        write_struct(out, value)
    else:
        raise ValueError(f"unknown compact type {kind}")


def write_struct(out: bytearray, fields: dict) -> None:
    """Encode ``fields`` (as :func:`read_struct` returns them) onto ``out``, in field id order."""
    last = 0
    for field_id in sorted(fields):
        kind, value = fields[field_id]
        if kind in (TRUE, FALSE):
            kind = TRUE if value else FALSE
        if 0 < field_id - last <= 15:
            out.append((field_id - last) << 4 | kind)
        else:
            out.append(kind)
            _put_varint(out, _zigzag(field_id))
        last = field_id
        if kind not in (TRUE, FALSE):
            _write_value(out, kind, value)
    out.append(0)


def encode(fields: dict) -> bytes:
    out = bytearray()
    write_struct(out, fields)
    return bytes(out)


# --- Parquet (field ids from parquet.thrift)

# FileMetaData
FM_SCHEMA, FM_NUM_ROWS, FM_ROW_GROUPS, FM_KV, FM_COLUMN_ORDERS, FM_ENCRYPTION = 2, 3, 4, 5, 7, 8
# RowGroup
RG_COLUMNS, RG_BYTES, RG_ROWS, RG_OFFSET, RG_COMPRESSED, RG_ORDINAL = 1, 2, 3, 5, 6, 7
# ColumnChunk
CC_PATH, CC_OFFSET, CC_META, CC_OI_OFFSET, CC_OI_LENGTH, CC_CI_OFFSET, CC_CI_LENGTH, CC_CRYPTO, CC_ENC_META = (
    1, 2, 3, 4, 5, 6, 7, 8, 9)
# ColumnMetaData
CM_UNCOMPRESSED, CM_COMPRESSED, CM_DATA, CM_INDEX, CM_DICT, CM_BLOOM_OFFSET, CM_BLOOM_LENGTH = 6, 7, 9, 10, 11, 14, 15
# SchemaElement.num_children; OffsetIndex.page_locations; PageLocation.offset
SE_CHILDREN, OI_PAGES, PL_OFFSET = 5, 1, 1


def read_footer(source) -> dict:
    """The decoded FileMetaData of the Parquet file open as ``source`` (an Arrow random-access file)."""
    size = source.size()
    tail = source.read_at(8, size - 8) if size >= 12 else b""
    if tail[4:] == b"PARE":
        raise ParquetAppendError("encrypted Parquet (footer magic PARE) cannot be copied")
    if tail[4:] != MAGIC:
        raise ParquetAppendError("not a Parquet file (no PAR1 magic at its end)")
    length = struct.unpack("<I", tail[:4])[0]
    meta, _ = read_struct(source.read_at(length, size - 8 - length))
    if FM_ENCRYPTION in meta:
        raise ParquetAppendError("encrypted Parquet (plaintext footer) cannot be copied")
    return meta


def _value(fields: dict, field_id: int, default=None):
    return fields[field_id][1] if field_id in fields else default


def _chunk_start(meta: dict) -> int:
    """First byte of a column chunk: its dictionary page if it has one, else its first data page."""
    dictionary = _value(meta, CM_DICT)
    return dictionary if dictionary else _value(meta, CM_DATA)


class ColumnAppender:
    """Write to ``sink`` row groups of the Parquet file ``source`` with ``added`` columns appended to each.

    ``added`` is the schema of the new columns; ``arrow_schema`` the Arrow schema of the whole output, stored as
    ``ARROW:schema`` as pyarrow stores it (without it, readers map Parquet types back to Arrow on their own).
    Call :meth:`write_row_group` for each input row group to keep, in output order, then :meth:`close`."""

    def __init__(self, source, sink, added: pa.Schema, arrow_schema: pa.Schema, compression: str = "zstd"):
        self.source, self.sink, self.added, self.compression = source, sink, added, compression
        self.meta = read_footer(source)
        self.arrow_schema = arrow_schema
        self.row_groups: list[dict] = []
        self.indexes: list[tuple[dict, bytes | None, bytes | None]] = []  # (chunk, column index, offset index)
        # from no batches, not added.empty_table(), which imports pandas (~0.2 s of a Python worker's first task)
        empty = read_footer(pa.BufferReader(self._encode_added(pa.Table.from_batches([], added))))
        self.added_schema = empty[FM_SCHEMA][1][1][1:]  # the new columns' schema elements, without the root
        self.added_orders = _value(empty, FM_COLUMN_ORDERS)
        self.position = 0
        self._write(MAGIC)

    def _encode_added(self, table: pa.Table) -> bytes:
        """``table`` of the new columns as a Parquet file of one row group (none if it has no rows)."""
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        with pq.ParquetWriter(buffer, self.added, compression=self.compression, write_page_index=True) as writer:
            if table.num_rows:
                writer.write_table(table, row_group_size=table.num_rows)
        return buffer.getvalue()

    def _write(self, data) -> None:
        self.sink.write(data)
        self.position += len(data)

    def _copy_chunk(self, chunk: dict, read_at) -> dict:
        """Copy one column chunk (and its bloom filter) from ``read_at`` to the sink; its metadata, moved."""
        if CC_PATH in chunk:
            raise ParquetAppendError(f"column chunk kept in another file ({_value(chunk, CC_PATH)!r})")
        if CC_CRYPTO in chunk or CC_ENC_META in chunk:
            raise ParquetAppendError("encrypted column chunks cannot be copied")
        chunk = {k: list(v) for k, v in chunk.items()}
        meta = {k: list(v) for k, v in _value(chunk, CC_META).items()}
        chunk[CC_META][1] = meta
        start, size = _chunk_start(meta), _value(meta, CM_COMPRESSED)
        delta = self.position - start
        self._write(read_at(size, start))
        for field_id in (CM_DATA, CM_INDEX, CM_DICT):
            if _value(meta, field_id):
                meta[field_id][1] += delta
        if _value(chunk, CC_OFFSET):
            chunk[CC_OFFSET][1] += delta
        if CM_BLOOM_OFFSET in meta:
            offset = _value(meta, CM_BLOOM_OFFSET)
            length = _value(meta, CM_BLOOM_LENGTH)
            if length is None:  # older writers: the header (Thrift) says how many bitset bytes follow it
                header = read_at(64, offset)
                fields, header_length = read_struct(header)
                length = header_length + _value(fields, 1)
            meta[CM_BLOOM_OFFSET][1] = self.position
            self._write(read_at(length, offset))
        column_index = offset_index = None
        if CC_CI_OFFSET in chunk:
            column_index = read_at(_value(chunk, CC_CI_LENGTH), _value(chunk, CC_CI_OFFSET))
        if CC_OI_OFFSET in chunk:
            index, _ = read_struct(read_at(_value(chunk, CC_OI_LENGTH), _value(chunk, CC_OI_OFFSET)))
            for location in index[OI_PAGES][1][1]:
                location[PL_OFFSET][1] += delta
            offset_index = encode(index)
        self.indexes.append((chunk, column_index, offset_index))
        return chunk

    def write_row_group(self, index: int, added: pa.Table) -> None:
        """Copy row group ``index`` of the input, with ``added`` (its rows, in order) as the new columns."""
        group = self.meta[FM_ROW_GROUPS][1][1][index]
        rows = _value(group, RG_ROWS)
        if added.num_rows != rows:
            raise ValueError(f"row group {index} has {rows} rows; the added columns have {added.num_rows}")
        small = pa.BufferReader(self._encode_added(added.select(self.added.names).cast(self.added)))
        small_groups = _value(read_footer(small), FM_ROW_GROUPS)[1]
        offset = self.position
        chunks = [self._copy_chunk(c, self.source.read_at) for c in _value(group, RG_COLUMNS)[1]]
        for small_group in small_groups:  # one, or none when the row group is empty
            chunks += [self._copy_chunk(c, small.read_at) for c in _value(small_group, RG_COLUMNS)[1]]
        metas = [_value(c, CC_META) for c in chunks]
        self.row_groups.append({
            **{k: list(v) for k, v in group.items()},
            RG_COLUMNS: [LIST, [STRUCT, chunks]],
            RG_BYTES: [I64, sum(_value(m, CM_UNCOMPRESSED) for m in metas)],
            RG_OFFSET: [I64, offset],
            RG_COMPRESSED: [I64, self.position - offset],
            RG_ORDINAL: [I16, len(self.row_groups)],
        })

    def close(self) -> None:
        """Write the page indexes and the footer."""
        for chunk, column_index, _ in self.indexes:
            if column_index is not None:
                chunk[CC_CI_OFFSET][1] = self.position
                self._write(column_index)
        for chunk, _, offset_index in self.indexes:
            if offset_index is not None:
                chunk[CC_OI_OFFSET] = [I64, self.position]
                chunk[CC_OI_LENGTH] = [I32, len(offset_index)]
                self._write(offset_index)
        meta = {k: list(v) for k, v in self.meta.items()}
        schema = [dict(e) for e in meta[FM_SCHEMA][1][1]]
        schema[0][SE_CHILDREN] = [I32, _value(schema[0], SE_CHILDREN) + len(self.added_schema)]
        meta[FM_SCHEMA] = [LIST, [STRUCT, schema + self.added_schema]]
        meta[FM_NUM_ROWS] = [I64, sum(_value(g, RG_ROWS) for g in self.row_groups)]
        meta[FM_ROW_GROUPS] = [LIST, [STRUCT, self.row_groups]]
        orders = _value(self.meta, FM_COLUMN_ORDERS)
        if orders is not None and self.added_orders is not None:
            meta[FM_COLUMN_ORDERS] = [LIST, [STRUCT, orders[1] + self.added_orders[1]]]
        else:  # both or neither: readers expect one order per leaf column
            meta.pop(FM_COLUMN_ORDERS, None)
        schema_b64 = base64.b64encode(self.arrow_schema.serialize().to_pybytes())
        meta[FM_KV] = [LIST, [STRUCT, [{1: [BINARY, b"ARROW:schema"], 2: [BINARY, schema_b64]}]]]
        footer = encode(meta)
        self._write(footer)
        self._write(struct.pack("<I", len(footer)) + MAGIC)
