"""``trait decontaminate`` and ``trait.decontam``: planted contamination found exactly, nothing else; bad input.

The expected quarantine is computed independently of the hashed index: a plain Python set of the benchmarks'
13-word strings, looked up word by word over every document.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from spark_jobs.decontaminate import run_decontaminate
from spark_jobs.text import TokenCounter
from trait.benchmarks import BENCHMARKS, BenchmarkError, BenchmarkFile, read_problems
from trait.cli import main
from trait.config import from_dict
from trait.contract import QUARANTINE_DIR, doc_id, finished_dataset, part_name, validate_table
from trait.decontam import DecontamConfig, NgramIndex, build_index, ngram_hashes, words

from .conftest import REPO, SHARED_DATA, read_jsonl

BENCH = SHARED_DATA / "benchmarks"


def _first(path: Path, key: str, min_words: int = 0, skip: int = 0) -> str:
    """The ``key`` text of the first record (after ``skip``) with at least ``min_words`` words."""
    with open(path, encoding="utf-8") as fh:
        texts = [json.loads(line)[key] for line in fh]
    return next(t for t in texts[skip:] if len(words(t)) >= min_words)


def _write_dataset(path: Path, tables: list[pa.Table]) -> str:
    """A finished contract dataset written with pyarrow (parts, manifest, _SUCCESS)."""
    path.mkdir(parents=True)
    for i, table in enumerate(tables):
        pq.write_table(table, path / part_name(i))
    (path / "manifest.json").write_text(json.dumps({"job": "test", "tokenizer": "words"}))
    (path / "_SUCCESS").write_text("")
    return str(path)


@pytest.fixture(scope="module")
def planted(small_corpus, tmp_path_factory):
    """The pool plus four documents built from unseen Wikipedia articles: one embeds a GSM8K test question,
    one a MATH test problem, one only the first 12 words of a GSM8K test question, one a GSM8K train question."""
    pool = finished_dataset(small_corpus["pool"]).to_table()
    wiki = [r["text"] for r in read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 8, 700)]
    gsm_test = _first(BENCH / "gsm8k/test.jsonl", "question", skip=5)
    math_test = _first(BENCH / "math/test_5000_harness.jsonl", "problem", min_words=25)
    twelve = " ".join(words(gsm_test)[:12])
    gsm_train = _first(BENCH / "gsm8k/train.jsonl", "question")
    inserts = {"gsm8k": gsm_test, "math": math_test, "twelve": twelve, "train": gsm_train}
    texts = {k: f"{wiki[2 * i][:1500]}\n\n{v}\n\n{wiki[2 * i + 1][:1500]}" for i, (k, v) in enumerate(inserts.items())}
    counter = TokenCounter("words")
    rows = [{"id": doc_id("test/planted", k), "source": "test/planted", "text": t, "url": None,
             "n_tokens": counter.count([t])[0]} for k, t in texts.items()]
    extra = pa.Table.from_pylist(rows, schema=pool.schema)
    root = tmp_path_factory.mktemp("decontam")
    path = _write_dataset(root / "planted", [pool.slice(0, 400), pool.slice(400), extra])
    return {"path": path, "root": root, "schema": pool.schema, "ids": {k: r["id"] for k, r in zip(texts, rows)},
            "inserts": inserts, "table": pa.concat_tables([pool, extra]).to_pandas()}


def _oracle(table, config: DecontamConfig) -> dict[str, set[str]]:
    """id -> names of the benchmarks sharing a word n-gram with it, by plain string sets (no hashing)."""
    grams = {}
    for name, files in config.sources().items():
        for spec in files:
            for segments in read_problems(spec)[0]:
                for s in segments:
                    w = words(s)
                    grams.update({" ".join(w[i:i + config.n]): grams.get(" ".join(w[i:i + config.n]), set()) | {name}
                                  for i in range(len(w) - config.n + 1)})
    found = {}
    for doc, text in zip(table["id"], table["text"]):
        w = words(text)
        hits = set().union(*[grams.get(" ".join(w[i:i + config.n]), set()) for i in range(len(w) - config.n + 1)])
        if hits:
            found[doc] = hits
    return found


@pytest.fixture(scope="module")
def decontaminated(spark, planted):
    out = str(planted["root"] / "out")
    config = from_dict(DecontamConfig, {"shared_data": str(SHARED_DATA)})
    return run_decontaminate(spark, config, planted["path"], out), out, config


def test_exactly_the_planted_documents_are_quarantined(planted, decontaminated):
    manifest, out, config = decontaminated
    table, ids = planted["table"], planted["ids"]
    expected = _oracle(table, config)
    assert expected == {ids["gsm8k"]: {"gsm8k"}, ids["math"]: {"math"}}  # the pool itself is clean
    bad = pq.read_table(f"{out}/{QUARANTINE_DIR}").to_pandas()
    rows = [json.loads(raw) for raw in bad["raw"]]
    assert {r["id"]: set(d.split(";")[0].removeprefix("benchmarks=").split(","))
            for r, d in zip(rows, bad["detail"])} == expected
    assert set(bad["reason"]) == {"contaminated"}
    for r, d in zip(rows, bad["detail"]):  # the whole row is kept, and the first shared 13-gram is the insert's
        assert r == table[table["id"] == r["id"]].iloc[0].to_dict()
        first = d.split("first='")[1].split("'")[0]
        assert len(first.split()) == 13 and first in " ".join(words(planted["inserts"][
            "gsm8k" if r["id"] == ids["gsm8k"] else "math"]))
    kept = finished_dataset(out).to_table()
    validate_table(kept)
    assert kept.schema.names == list(table.columns)
    assert sorted(kept.column("id").to_pylist()) == sorted(set(table["id"]) - set(expected))
    c = manifest["counts"]
    tokens = dict(zip(table["id"], table["n_tokens"]))
    assert c["rows_in"] == len(table) == c["rows_out"] + c["rows_quarantined"] and c["rows_quarantined"] == 2
    assert c["tokens_in"] == int(table["n_tokens"].sum()) == c["tokens_out"] + c["tokens_quarantined"]
    assert c["quarantined_by_benchmark"] == {
        name: {"rows": 1, "tokens": int(tokens[ids[name]])} if name in ("gsm8k", "math") else {"rows": 0, "tokens": 0}
        for name in BENCHMARKS}
    assert c["by_source"]["test/planted"]["rows_quarantined"] == 2
    index = manifest["index"]
    assert index["n"] == 13 and index["bytes"] == index["ngrams"] * 10  # uint64 key + uint16 mask per n-gram
    assert sum(b["malformed"] for b in manifest["benchmarks"].values()) == 0


def test_rerun_with_same_config_and_inputs_is_a_noop(spark, planted, decontaminated):
    manifest, out, config = decontaminated
    before = {p: os.stat(p).st_mtime_ns for p in map(str, Path(out).rglob("*"))}
    again = run_decontaminate(spark, config, planted["path"], out)
    assert again == manifest
    assert {p: os.stat(p).st_mtime_ns for p in map(str, Path(out).rglob("*"))} == before


def test_twelve_words_match_only_at_n_12():
    problems, _ = read_problems(BenchmarkFile(str(BENCH / "gsm8k/test.jsonl"), ("question",)))
    gsm = {"gsm8k": [segments[0] for segments in problems]}
    question = _first(BENCH / "gsm8k/test.jsonl", "question", skip=5)
    twelve = "Some text before. " + " ".join(words(question)[:12]) + ". And after."
    assert NgramIndex.from_texts(gsm, 13).matches(twelve) == set()
    assert NgramIndex.from_texts(gsm, 12).matches(twelve) == {"gsm8k"}


def _reference_hash(ngram: list[str]) -> int:
    """The documented hash in plain Python integers: xxh3-64 per word, polynomial mod 2^64, fmix64."""
    mask, acc = (1 << 64) - 1, 0
    for w in ngram:
        h = xxhash.xxh3_64_intdigest(w.encode())
        acc = (acc * 0x9E3779B97F4A7C15 + h) & mask
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        acc = ((acc ^ (acc >> 33)) * mult) & mask
    return acc ^ (acc >> 33)


def test_index_hash_is_pinned_and_lookups_respect_document_boundaries(tmp_path):
    # Golden value: changing normalisation or hashing changes it (and must bump HASH_VERSION).
    hashes = ngram_hashes(["The quick, brown FOX jumps"], 3)
    assert [int(h) for h in hashes] == [_reference_hash(g) for g in (["the", "quick", "brown"],
                                                                     ["quick", "brown", "fox"],
                                                                     ["brown", "fox", "jumps"])]
    assert int(hashes[0]) == 244214131492077962
    assert len(ngram_hashes(["two words"], 3)) == 0
    index = NgramIndex.from_texts({"a": ["one two three four", "x y z"], "b": ["two three four five"]}, 3)
    assert len(index.keys) == 4 and index.masks.dtype == np.uint8
    assert index.ngrams_per_name() == {"a": 3, "b": 2}
    assert [m.benchmarks for m in index.match_many(["ONE, two... three!", "xx two three four", "one two",
                                                    "three five", "x y", "z and"])] == [("a",), ("a", "b"), (), (),
                                                                                      (), ()]
    index.save(tmp_path / "i.npz")
    loaded = NgramIndex.load(tmp_path / "i.npz")
    assert loaded.names == ["a", "b"] and loaded.n == 3 and np.array_equal(loaded.keys, index.keys)
    assert loaded.match_many(["a b two three four"])[0].first_ngram == "two three four"


def test_registry_reads_every_test_split_without_malformed_lines():
    index, report = build_index(DecontamConfig(shared_data=str(SHARED_DATA)))
    # Problem counts from each benchmark's SOURCE.md (MATH: 5,000 + the 500 of MATH500).
    assert {k: r["problems"] for k, r in report.items()} == {
        "gsm8k": 1319, "math": 5500, "svamp": 1000, "asdiv": 2215, "mawps": 2065, "tabmwp": 1000,
        "mathqa": 1000, "mmlu": 3018, "sat_math": 32, "sat_math_agieval": 220}
    assert all(r["malformed"] == 0 for r in report.values())
    assert len(index.keys) == len(np.unique(index.keys)) and np.all(np.diff(index.keys) > 0)


def test_eval_file_with_malformed_lines_through_the_cli(planted, tmp_path):
    table = planted["table"]
    victim = table[table["text"].str.split().str.len() > 300].iloc[0]
    lines = [json.dumps({"question": " ".join(victim["text"].split()[100:140]), "answer": "x"}),
             '{"question": "truncated',
             json.dumps({"answer": "no question field"}),
             json.dumps(["not", "an", "object"]),
             "",
             json.dumps({"question": "A short one.", "answer": None})]
    (tmp_path / "my_eval.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = main(["decontaminate", "--input", planted["path"], "--output", str(out), "--data", str(SHARED_DATA),
               "--benchmarks", "sat_math", "--eval-file", f"my_eval={tmp_path / 'my_eval.jsonl'}:question"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    report = manifest["benchmarks"]["my_eval"]
    assert report["problems"] == 2 and report["malformed"] == 3
    assert report["files"][0]["malformed"] == {"invalid_json": 1, "missing_field": 1, "not_an_object": 1}
    assert report["files"][0]["blank_lines"] == 1 and report["files"][0]["records"] == 5
    assert [e.split(":")[0] for e in report["files"][0]["malformed_examples"]] == ["line 2", "line 3", "line 4"]
    bad = pq.read_table(out / QUARANTINE_DIR).to_pandas()
    assert [json.loads(r)["id"] for r in bad["raw"]] == [victim["id"]]
    assert manifest["counts"]["quarantined_by_benchmark"] == {"sat_math": {"rows": 0, "tokens": 0},
                                                              "my_eval": {"rows": 1, "tokens": int(victim["n_tokens"])}}


def test_empty_corpus_gives_an_empty_finished_dataset(spark, planted, tmp_path):
    path = _write_dataset(tmp_path / "empty", [pa.Table.from_pylist([], schema=planted["schema"])])
    out = str(tmp_path / "out")
    manifest = run_decontaminate(spark, DecontamConfig(shared_data=str(SHARED_DATA), benchmarks=["gsm8k"]), path, out)
    c = manifest["counts"]
    assert (c["rows_in"], c["rows_out"], c["rows_quarantined"], c["tokens_in"]) == (0, 0, 0, 0)
    written = finished_dataset(out).to_table()
    assert written.num_rows == 0 and written.schema.names == planted["schema"].names
    assert (Path(out) / part_name(0)).is_file()  # Spark readers need a file to take the schema from


def test_unknown_benchmark_and_missing_eval_file_are_clear_errors(tmp_path, capsys):
    with pytest.raises(BenchmarkError, match="unknown benchmark 'gsm8'; did you mean 'gsm8k'"):
        from_dict(DecontamConfig, {"shared_data": str(SHARED_DATA), "benchmarks": ["gsm8k", "gsm8"]})
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(BenchmarkError, match=f"not found: {missing}"):
        from_dict(DecontamConfig, {"shared_data": str(SHARED_DATA),
                                   "eval_files": [{"name": "mine", "path": str(missing), "fields": ["q"]}]})
    assert main(["decontaminate", "--input", "x", "--output", "y", "--benchmarks", "mathqaa"]) == 2
    assert "did you mean 'mathqa'" in capsys.readouterr().err
    with pytest.raises(BenchmarkError, match="NAME=PATH:FIELD"):
        from_dict(DecontamConfig, {"shared_data": str(SHARED_DATA), "eval_files": ["just/a/path.jsonl"]})


def test_the_shipped_index_is_removed_when_the_driver_exits(tmp_path):
    """The index file a run ships stays while the session may need it, and is gone once the driver exits (in a
    temporary folder of its own, so that nothing else there is looked at)."""
    script = ("import os; from spark_jobs.session import get_spark; from spark_jobs.decontaminate import _ship_index; "
              "from trait.decontam import NgramIndex; "
              "s = get_spark('t', 'local[1]', scheduler_only=True); "
              "name, _, _ = _ship_index(s, NgramIndex.from_texts({'gsm8k': ['one two three four']}, 2)); "
              "from pyspark import SparkFiles; "
              "print(s.sparkContext.parallelize([name], 1).map(lambda n: os.path.getsize(SparkFiles.get(n))).first())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 0  # an executor fetched the file
    assert not list(tmp_path.glob("trait-decontam-*"))
