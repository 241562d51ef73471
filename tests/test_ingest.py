"""``trait ingest``: formats, field mapping, ids, token counts, quarantine of each kind of bad row, reruns."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from spark_jobs.dataset import DatasetError
from spark_jobs.ingest import IngestConfig, run_ingest
from trait.config import ConfigError, from_dict
from trait.contract import QUARANTINE_DIR, doc_id, finished_dataset, validate_table

from .conftest import write_jsonl

GOOD = [
    {"id": "a1", "text": "Hello, world!", "meta": {"url": "http://x/1"}},
    {"id": 2, "text": "Zwei Wörter\nund mehr", "meta": {"url": None}},
    {"text": "no id, no url: the id comes from the content"},
]
# (raw line, expected quarantine reason)
BAD = [
    (b'{"id": "j", "text": "unterminated', "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"id": "m", "body": "text under another field"}', "null_text"),
    (b'{"id": "n", "text": null}', "null_text"),
    (b'{"id": "t", "text": 42}', "text_not_string"),
    (b'{"id": "u", "text": "caf\xe9 latin-1"}', "invalid_utf8"),
    (b'{"id": "e", "text": "  \\n\\t "}', "empty_text"),
    (b'{"id": "s", "text": "lone \\ud800 surrogate"}', "invalid_unicode"),
    (b"[" * 3000, "invalid_json"),  # nested deeper than Python's recursion limit
    (b"", "blank_line"),
    (json.dumps({"id": "big", "text": "x" * 5000}).encode(), "too_large"),
]


def _lines() -> bytes:
    good = [json.dumps(r).encode() for r in GOOD]
    return b"\n".join(good[:2] + [raw for raw, _ in BAD] + good[2:]) + b"\n"


def _config(path, **extra):
    spec = {"path": str(path), "source": "test/src", "url_field": "meta.url", **extra}
    return from_dict(IngestConfig, {"inputs": [spec], "max_doc_bytes": 4096})


def _read(path):
    return finished_dataset(str(path)).to_table()


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_every_bad_row_is_quarantined_with_its_reason_and_the_rest_follow_the_contract(spark, tmp_path, suffix):
    data = _lines()
    raw = {".jsonl": data, ".jsonl.gz": gzip.compress(data), ".jsonl.zst": zstandard.compress(data)}[suffix]
    (tmp_path / f"in{suffix}").write_bytes(raw)
    manifest = run_ingest(spark, _config(tmp_path / f"in{suffix}"), str(tmp_path / "out"))

    table = _read(tmp_path / "out")
    validate_table(table)
    rows = {r["text"]: r for r in table.to_pylist()}
    assert set(rows) == {r["text"] for r in GOOD}
    assert rows["Hello, world!"]["id"] == doc_id("test/src", "id:a1")
    assert rows["Hello, world!"]["url"] == "http://x/1"
    assert rows["Hello, world!"]["n_tokens"] == 4  # Hello , world !
    assert rows["Zwei Wörter\nund mehr"]["id"] == doc_id("test/src", "id:2")
    content = GOOD[2]["text"]
    assert rows[content]["id"] == doc_id("test/src", f"text:{content}")

    quarantine = pq.read_table(tmp_path / "out" / QUARANTINE_DIR).to_pylist()
    assert sorted(q["reason"] for q in quarantine) == sorted(reason for _, reason in BAD)
    assert all(q["input_file"].endswith(suffix) for q in quarantine)
    bad_utf8 = next(q for q in quarantine if q["reason"] == "invalid_utf8")
    assert b"caf\xe9" in bad_utf8["raw"]

    counts = manifest["counts"]
    assert counts["rows_in"] == len(GOOD) + len(BAD) == counts["rows_out"] + counts["rows_quarantined"]
    assert counts["by_input_source"]["test/src"]["quarantined"]["null_text"] == 2
    assert counts["tokens_out"] == sum(table.column("n_tokens").to_pylist())
    assert manifest["tokenizer"] == "words" and manifest["versions"]["spark"]
    assert manifest["inputs"][0]["bytes"] == len(raw)


def test_parquet_input_with_other_field_names_and_sub_sources(spark, tmp_path):
    pq.write_table(pa.table({"body": ["first doc", None, "third doc"], "key": [10, 11, 12],
                             "link": ["u1", "u2", None]}), tmp_path / "in.parquet")
    cfg = from_dict(IngestConfig, {"inputs": [{"path": str(tmp_path / "in.parquet"), "source": "pq",
                                               "text_field": "body", "id_field": "key", "url_field": "link"}]})
    manifest = run_ingest(spark, cfg, str(tmp_path / "out"))
    rows = sorted(_read(tmp_path / "out").to_pylist(), key=lambda r: r["text"])
    assert [(r["text"], r["id"], r["url"]) for r in rows] == [
        ("first doc", doc_id("pq", "id:10"), "u1"), ("third doc", doc_id("pq", "id:12"), None)]
    assert manifest["counts"]["by_input_source"]["pq"]["quarantined"] == {"null_text": 1}

    (tmp_path / "mixed.jsonl").write_text('{"text": "a b", "meta": {"set": "Books"}}\n{"text": "c", "meta": {}}\n')
    cfg = from_dict(IngestConfig, {"inputs": [{"path": str(tmp_path / "mixed.jsonl"), "source": "pile",
                                               "source_field": "meta.set"}]})
    manifest = run_ingest(spark, cfg, str(tmp_path / "out2"))
    assert sorted(manifest["counts"]["by_source"]) == ["pile", "pile/Books"]
    assert manifest["counts"]["by_input_source"]["pile"]["rows_out"] == 2


def test_missing_parquet_column_is_a_clear_error(spark, tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "in.parquet")
    with pytest.raises(ConfigError, match=r"column\(s\) \['text'\] not found; columns are: body"):
        run_ingest(spark, _config(tmp_path / "in.parquet", url_field=None, id_field=None), str(tmp_path / "out"))


def test_rerun_is_a_no_op_and_a_changed_config_needs_overwrite(spark, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(_lines())
    first = run_ingest(spark, _config(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    stamp = {p: os.stat(tmp_path / "out" / p).st_mtime_ns for p in os.listdir(tmp_path / "out")}
    again = run_ingest(spark, _config(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    assert again == first
    assert stamp == {p: os.stat(tmp_path / "out" / p).st_mtime_ns for p in os.listdir(tmp_path / "out")}

    changed = _config(tmp_path / "in.jsonl")
    changed.max_doc_bytes = 100_000
    with pytest.raises(DatasetError, match="another config or other inputs"):
        run_ingest(spark, changed, str(tmp_path / "out"))
    redone = run_ingest(spark, changed, str(tmp_path / "out"), overwrite=True)
    assert redone["counts"]["rows_out"] == first["counts"]["rows_out"] + 1  # the 5 KB document now fits


def test_leftovers_of_a_killed_run_are_replaced(spark, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(_lines())
    staging = tmp_path / "out._staging"
    staging.mkdir()
    (staging / "part-00000.parquet").write_bytes(b"half-written")
    run_ingest(spark, _config(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    assert not staging.exists()
    validate_table(_read(tmp_path / "out"))


def test_an_input_glob_matching_nothing_is_an_error(spark, tmp_path):
    with pytest.raises(DatasetError, match="matches no files"):
        run_ingest(spark, _config(tmp_path / "nothing-*.jsonl"), str(tmp_path / "out"))


def test_token_counts_with_a_hugging_face_tokenizer(spark, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([r["text"] for r in GOOD] * 20, trainers.BpeTrainer(vocab_size=60,
                                                                                special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "in.jsonl").write_bytes(_lines())
    cfg = _config(tmp_path / "in.jsonl")
    cfg.tokenizer = f"hf:{tmp_path / 'tokenizer.json'}"
    manifest = run_ingest(spark, cfg, str(tmp_path / "out"))
    rows = _read(tmp_path / "out").to_pylist()
    assert [r["n_tokens"] for r in rows] == [len(tok.encode(r["text"], add_special_tokens=False).ids) for r in rows]
    assert manifest["tokenizer"] == cfg.tokenizer


def test_repeated_ids_keep_their_first_row_by_input_order_then_file_then_position(spark, tmp_path, monkeypatch):
    """The issue's probe: two inputs sharing 100 ids and a file repeating 50 lines. The second input's file name
    sorts first, so input order must win over file order; splits of 2 KB put repeats of one file in other
    tasks, so position in the file (not task timing) must decide."""
    monkeypatch.setattr("spark_jobs.ingest.SPLIT_BYTES", 2048)
    first = write_jsonl(tmp_path / "z_first.jsonl", [{"id": i, "text": f"first input {i}"} for i in range(200)])
    second = write_jsonl(tmp_path / "a_second.jsonl", [{"id": i, "text": f"second input {i}"}
                                                        for i in range(100, 300)])
    lines = [{"id": i, "text": f"line {i}"} for i in range(300, 350)]
    repeats = write_jsonl(tmp_path / "repeats.jsonl", lines
                          + [{"id": i, "text": f"again {i}"} for i in range(300, 350)])
    pq.write_table(pa.table({"id": [400, 401, 400, 401], "text": ["pq a", "pq b", "pq c", "pq d"]}),
                   tmp_path / "rows.parquet", row_group_size=1)
    inputs = [{"path": str(p), "source": "web"} for p in (first, second, repeats)]
    inputs.append({"path": str(tmp_path / "rows.parquet"), "source": "web", "url_field": None})
    manifest = run_ingest(spark, from_dict(IngestConfig, {"inputs": inputs}), str(tmp_path / "out"))

    rows = _read(tmp_path / "out").to_pylist()
    assert len(rows) == len({r["id"] for r in rows}) == 352
    kept = {r["id"]: r["text"] for r in rows}
    assert all(kept[doc_id("web", f"id:{i}")] == f"first input {i}" for i in range(200))
    assert all(kept[doc_id("web", f"id:{i}")] == f"second input {i}" for i in range(200, 300))
    assert all(kept[doc_id("web", f"id:{i}")] == f"line {i}" for i in range(300, 350))
    assert {kept[doc_id("web", "id:400")], kept[doc_id("web", "id:401")]} == {"pq a", "pq b"}

    quarantine = pq.read_table(tmp_path / "out" / QUARANTINE_DIR).to_pylist()
    assert {q["reason"] for q in quarantine} == {"duplicate_id"}
    assert sorted(q["raw"].decode() for q in quarantine) == sorted(
        [f"second input {i}" for i in range(100, 200)] + [f"again {i}" for i in range(300, 350)] + ["pq c", "pq d"])
    moved = next(q for q in quarantine if q["raw"] == b"second input 150")
    assert moved["input_file"].endswith("a_second.jsonl") and "z_first.jsonl" in moved["detail"]
    counts = manifest["counts"]
    assert counts["rows_in"] == 200 + 200 + 100 + 4 == counts["rows_out"] + counts["rows_quarantined"]
    assert counts["quarantined_by_reason"]["duplicate_id"] == 152
    assert counts["by_input_source"]["web"]["quarantined"] == {"duplicate_id": 152}
    assert manifest["splits"] >= 10


def test_repeated_ids_of_a_sub_source_are_counted_under_their_input(spark, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a", "set": "x"}, {"id": 1, "text": "b", "set": "x"},
                                        {"id": 1, "text": "c", "set": "y"}])
    with open(tmp_path / "in.jsonl", "ab") as fh:
        fh.write(b'{"id": 2, "text": "d", "set": "lone \\udc00 surrogate"}\n')
    cfg = from_dict(IngestConfig, {"inputs": [{"path": str(tmp_path / "in.jsonl"), "source": "pile",
                                               "source_field": "set"}]})
    counts = run_ingest(spark, cfg, str(tmp_path / "out"))["counts"]
    assert counts["by_source"] == {"pile/x": {"rows_out": 1, "tokens_out": 1}, "pile/y": {"rows_out": 1,
                                                                                         "tokens_out": 1}}
    assert counts["by_input_source"]["pile"] == {"rows_in": 4, "rows_out": 2, "tokens_out": 2,
                                                 "quarantined": {"duplicate_id": 1, "invalid_unicode": 1}}
