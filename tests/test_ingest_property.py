"""Property test: whatever JSONL lines come in (bad JSON, wrong types, missing or null text, huge or unicode or
control-character text, repeated ids and lines), ingest finishes without raising, rows in = rows out + quarantined,
the ids out are unique, and each kept row is the first good row of its id in input order."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_jobs.ingest import IngestConfig, _parse_jsonl, run_ingest
from trait.config import from_dict
from trait.contract import INGEST_QUARANTINE_REASONS, QUARANTINE_DIR, finished_dataset, validate_table

MAX_DOC_BYTES = 6000  # room for a 5,000-digit id (over int() limit of 4,300) and JSON nested 2,500 deep

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["a", "é", "", " ", "\u2028", "\x00"]))
texts = st.one_of(
    st.text(max_size=40),  # any unicode, control characters included
    st.text(st.characters(max_codepoint=0x1F), max_size=10),  # control characters only
    st.builds(lambda n, c: c * n, st.integers(MAX_DOC_BYTES - 5, 3 * MAX_DOC_BYTES), st.sampled_from("xé€𝔸")),
    scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=2))
records = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(0, 4), st.sampled_from(["k", "K", "é"]), scalars),  # a small pool: ids repeat
    "text": texts,
    "url": st.one_of(st.none(), st.sampled_from(["http://x/1", "http://x/2"]), st.integers(0, 2)),
    "meta": st.dictionaries(st.sampled_from(["url", "set"]), scalars, max_size=2)})
record_lines = st.builds(lambda r, ascii_only: json.dumps(r, ensure_ascii=ascii_only).encode(), records,
                         st.booleans())
malformed_lines = st.one_of(
    st.binary(max_size=40),  # random bytes: invalid UTF-8, invalid JSON, blank
    record_lines.flatmap(lambda line: st.integers(0, max(len(line) - 1, 0)).map(lambda k: line[:k])),  # truncated
    st.sampled_from([b"[]", b"1", b'"s"', b"null", b"  ", b"\t", b'{"text": "lone \\udc00"}', b'{"text": "\xff\xfe"}',
                     b'{"text": "dup", "text": 5}', b"{'text': 'single quotes'}", b'{"text": "a"} trailing',
                     b"\xef\xbb\xbf" + b'{"text": "after a byte order mark"}', b"[" * 2500,
                     b'{"text": "x", "meta": {"set": "lone \\ud800"}}', b'{"text": "x", "id": ' + b"9" * 5000 + b"}"]))
lines = st.lists(st.one_of(record_lines, malformed_lines).map(lambda b: b.replace(b"\n", b" ")), min_size=1,
                 max_size=60).flatmap(  # and whole lines repeated
    lambda ls: st.lists(st.sampled_from(ls), max_size=5).map(lambda extra: ls + extra))


# Each example is a whole ingest (~7 Spark jobs: 4-5 s warm on a busy 2-core machine): few examples, each of up
# to 65 lines.
@settings(max_examples=8, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=lines, cut=st.integers(0, 70), compress=st.booleans())
def test_ingest_never_raises_balances_and_keeps_ids_unique(spark, tmp_path_factory, lines, cut, compress):
    root = tmp_path_factory.mktemp("prop")
    first, second = lines[:cut], lines[cut:]  # two inputs of one source: ids repeat across them too
    (root / "1.jsonl").write_bytes(b"".join(line + b"\n" for line in first))
    data = b"".join(line + b"\n" for line in second)
    (root / "2.jsonl.gz").write_bytes(gzip.compress(data)) if compress else (root / "2.jsonl").write_bytes(data)
    inputs = [{"path": str(root / "1.jsonl"), "source": "p", "url_field": "meta.url", "source_field": "meta.set"},
              {"path": str(root / "2.jsonl*"), "source": "p", "url_field": "meta.url", "source_field": "meta.set"}]
    cfg = from_dict(IngestConfig, {"inputs": inputs, "max_doc_bytes": MAX_DOC_BYTES})

    counts = run_ingest(spark, cfg, str(root / "out"))["counts"]

    table = finished_dataset(str(root / "out")).to_table()
    validate_table(table)
    quarantine = pq.read_table(root / "out" / QUARANTINE_DIR).to_pylist()
    assert counts["rows_in"] == len(lines) == table.num_rows + len(quarantine)
    assert counts["rows_out"] == table.num_rows and counts["rows_quarantined"] == len(quarantine)
    assert {q["reason"] for q in quarantine} <= set(INGEST_QUARANTINE_REASONS)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    # the row kept for an id is its first good line, in input order
    first_good: dict[str, str] = {}
    for line in lines:
        row = _parse_jsonl(cfg.inputs[0], MAX_DOC_BYTES, line)
        if "reason" not in row:
            first_good.setdefault(row["id"], row["text"])
    assert dict(zip(ids, table.column("text").to_pylist())) == first_good
    assert counts["quarantined_by_reason"]["duplicate_id"] == len(lines) - len(first_good) - sum(
        n for reason, n in counts["quarantined_by_reason"].items() if reason != "duplicate_id")
