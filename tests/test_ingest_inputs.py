"""``trait ingest`` on inputs that are wrong: split boundaries, corrupt and truncated compressed files, Parquet files
that are not Parquet or hold the wrong types, names Hadoop cannot say, unreadable files and folders, bad configs.
Each is a quarantine row with a reason or one clear error, never a trace."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from spark_jobs.ingest import IngestConfig, run_ingest
from spark_jobs.ingest_read import CorruptFile, plan_splits, read_split
from trait import UserError
from trait.config import ConfigError, from_dict
from trait.contract import QUARANTINE_DIR, finished_dataset, validate_table

from .conftest import REPO
from .support.privileges import unprivileged

RECORDS = [{"id": i, "text": f"document number {i} " + "word " * (i % 7)} for i in range(400)]
DATA = b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS)


def _ingest(spark, tmp_path, inputs: list[dict], **config):
    manifest = run_ingest(spark, from_dict(IngestConfig, {"inputs": inputs, **config}), str(tmp_path / "out"))
    table = finished_dataset(str(tmp_path / "out")).to_table()
    validate_table(table)
    quarantine = pq.read_table(tmp_path / "out" / QUARANTINE_DIR).to_pylist()
    counts = manifest["counts"]
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_quarantined"] == table.num_rows + len(quarantine)
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    return table, quarantine, counts


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_byte_range_splits_read_every_line_once_at_its_offset(tmp_path, ending):
    lines = [b'{"a": 1}', b"", b"x" * 30, b"\xff\xfe not utf-8", b"", b'{"last": "no newline after me"}']
    data = ending.join(lines)
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    offsets, at = [], 0
    for line in lines:
        offsets.append(at)
        at += len(line) + len(ending)
    expected = [(o, line + (ending[:-1] if i < len(lines) - 1 else b"")) for i, (o, line) in
                enumerate(zip(offsets, lines))]
    for split_bytes in (1, 2, 3, 7, 8, 9, 31, 32, 33, 1000):
        got = [rec for _, _, uri, start, end in plan_splits([(0, str(path), len(data))], ["jsonl"], split_bytes)
               for rec in read_split("jsonl", uri, start, end, 4096, [])]
        assert got == expected, split_bytes


def test_a_line_over_the_limit_is_cut_and_the_next_line_still_read(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"a" * 5000 + b"\nshort\n" + b"b" * 11 + b"\n")
    got = list(read_split("jsonl", str(path), 0, path.stat().st_size, 10, []))
    assert got == [(0, b"a" * 11), (5001, b"short"), (5007, b"b" * 11)]


def test_a_truncated_gzip_keeps_the_lines_before_the_break_and_then_says_so(tmp_path):
    data = DATA * 25  # 10,000 lines, 500 KB: the reader decompresses 64 KB at a time
    path = tmp_path / "in.jsonl.gz"
    packed = gzip.compress(data)
    path.write_bytes(packed[: len(packed) // 2])
    got = []
    with pytest.raises(CorruptFile, match="gzip stream cannot be decompressed"):
        for record in read_split("jsonl", str(path), 0, path.stat().st_size, 4096, []):
            got.append(record)
    assert 0 < len(got) < data.count(b"\n")
    assert got == [(o, data[o:data.index(b"\n", o)]) for o, _ in got] and got[0][0] == 0


def test_corrupt_and_truncated_compressed_files_are_quarantined_by_name_and_the_rest_goes_on(spark, tmp_path):
    many = [{"id": 1000 + i, "text": f"another document, number {i}"} for i in range(10_000)]
    others = b"".join(json.dumps(r).encode() + b"\n" for r in many)  # 500 KB: several reads before the break
    truncated_gz, truncated_zst = gzip.compress(others), zstandard.compress(others)
    (tmp_path / "in").mkdir()
    for name, data in {"good.jsonl.gz": gzip.compress(DATA),
                       "truncated.jsonl.gz": truncated_gz[: len(truncated_gz) // 2],
                       "truncated.jsonl.zst": truncated_zst[: len(truncated_zst) // 2],
                       "junk.jsonl.zst": b"this was never zstd\n" * 50,
                       "junk.jsonl.gz": b"nor gzip\n"}.items():
        (tmp_path / "in" / name).write_bytes(data)
    inputs = [{"path": str(tmp_path / "in" / "*.jsonl.gz"), "source": "gz"},
              {"path": str(tmp_path / "in" / "*.jsonl.zst"), "source": "zst"}]
    table, quarantine, counts = _ingest(spark, tmp_path, inputs)

    corrupt = {os.path.basename(q["input_file"]): q["detail"] for q in quarantine if q["reason"] == "corrupt_file"}
    assert sorted(corrupt) == ["junk.jsonl.gz", "junk.jsonl.zst", "truncated.jsonl.gz", "truncated.jsonl.zst"]
    assert "zstd stream cannot be decompressed" in corrupt["junk.jsonl.zst"]
    assert "gzip stream cannot be decompressed" in corrupt["truncated.jsonl.gz"]
    assert "Destination buffer" not in " ".join(corrupt.values())
    assert counts["quarantined_by_reason"]["corrupt_file"] == counts["rows_quarantined"] == 4
    # good.jsonl.gz in full, the truncated files up to their break
    gz, zst = counts["by_input_source"]["gz"], counts["by_input_source"]["zst"]
    assert len(RECORDS) < gz["rows_out"] < len(RECORDS) + len(many) and 0 < zst["rows_out"] < len(many)
    assert gz["rows_in"] == gz["rows_out"] + 2 and zst["rows_in"] == zst["rows_out"] + 2


def test_parquet_with_int_text_is_quarantined_and_non_parquet_and_empty_files_are_named(spark, tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one doc", "two docs"]}), tmp_path / "in" / "1-good.parquet")
    pq.write_table(pa.table({"id": ["c", "d"], "text": pa.array([7, 8], pa.int64())}),
                   tmp_path / "in" / "2-int.parquet")
    (tmp_path / "in" / "3-empty.parquet").write_bytes(b"")
    (tmp_path / "in" / "4-csv.parquet").write_text("id,text\ne,not parquet at all\n")
    table, quarantine, counts = _ingest(spark, tmp_path, [{"path": str(tmp_path / "in"), "source": "pq",
                                                           "format": "parquet", "url_field": None}])
    assert sorted(table.column("text").to_pylist()) == ["one doc", "two docs"]
    reasons = sorted((os.path.basename(q["input_file"]), q["reason"], q["raw"]) for q in quarantine)
    assert reasons == [("2-int.parquet", "text_not_string", b"7"), ("2-int.parquet", "text_not_string", b"8"),
                       ("3-empty.parquet", "corrupt_file", None), ("4-csv.parquet", "corrupt_file", None)]
    assert counts["rows_in"] == 6


def test_a_colon_in_a_file_name_is_one_clear_error(spark, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "2024-01-01T10:00.jsonl").write_bytes(DATA)
    with pytest.raises(UserError, match=r"cannot name a file with ':' in its name \(2024-01-01T10:00.jsonl\)"):
        run_ingest(spark, from_dict(IngestConfig, {"inputs": [{"path": str(tmp_path / "in" / "*.jsonl"),
                                                               "source": "s"}]}), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"max_records_per_file": -5}, "max_records_per_file must be positive, got -5"),
    ({"max_records_per_file": 0}, "max_records_per_file must be positive, got 0"),
    ({"tokenizer": "hf:/nope/tokenizer.json"}, "tokenizer file /nope/tokenizer.json not found"),
    ({"tokenizer": "gpt2"}, "use 'words' or 'hf:<path to tokenizer.json>'"),
])
def test_config_values_that_make_no_sense_are_refused(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(IngestConfig, {"inputs": [{"path": str(tmp_path / "x.jsonl"), "source": "s"}], **change})


def test_a_tokenizer_file_that_does_not_load_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="tokenizer file .*tokenizer.json cannot be loaded"):
        from_dict(IngestConfig, {"inputs": [{"path": "x.jsonl", "source": "s"}],
                                 "tokenizer": f"hf:{tmp_path / 'tokenizer.json'}"})


def test_unreadable_file_and_unlistable_folder_say_permission_denied_and_name_the_path(tmp_path):
    prefix = unprivileged(tmp_path)
    (tmp_path / "closed").mkdir()
    (tmp_path / "closed" / "a.jsonl").write_bytes(DATA)
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "b.jsonl").write_bytes(DATA)
    (tmp_path / "open" / "b.jsonl").chmod(0)
    (tmp_path / "closed").chmod(0)
    cases = [str(tmp_path / "open" / "b.jsonl"), str(tmp_path / "open" / "*.jsonl"),
             str(tmp_path / "closed" / "a.jsonl"), str(tmp_path / "closed" / "*.jsonl")]
    # One process, one Spark session, the CLI's own entry point for each case.
    script = textwrap.dedent(f"""
        import sys
        from trait.cli import main
        for i, path in enumerate({cases!r}):
            print("exit", main(["ingest", "--input", path, "--source", "s", "--output", f"{tmp_path}/out{{i}}"]),
                  file=sys.stderr, flush=True)
    """)
    try:
        run = subprocess.run([*prefix, sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "TRAIT_SPARK_LOG_LEVEL": "ERROR"})
    finally:
        (tmp_path / "closed").chmod(0o755)
        (tmp_path / "open" / "b.jsonl").chmod(0o644)
    errors = [line for line in run.stderr.splitlines() if line.startswith("trait: error:")]
    assert [line for line in run.stderr.splitlines() if line.startswith("exit")] == ["exit 2"] * 4, run.stderr
    assert "Traceback" not in run.stderr and "\tat " not in run.stderr, run.stderr
    assert errors == [
        f"trait: error: permission denied: cannot read input file {tmp_path}/open/b.jsonl; make it readable "
        "(chmod a+r) or leave it out of the input glob"] * 2 + [
        f"trait: error: permission denied: cannot enter folder {tmp_path}/closed (input '{cases[2]}')",
        f"trait: error: permission denied: cannot list folder {tmp_path}/closed (input '{cases[3]}')"]
    assert not any((tmp_path / f"out{i}").exists() for i in range(4))
