"""``trait score``: every row kept and scored exactly as fastText's own predict scores it, reruns, kill and rerun, bad
input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fasttext
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs import quality_signals
from spark_jobs.classifier import fasttext_probability, load_card
from spark_jobs.dataset import DatasetError
from spark_jobs.quality_signals import HEURISTIC_MATH_V1, HEURISTIC_V1
from spark_jobs.score import ATTEMPTS_DIR, SPLIT_SLOP, ScoreConfig, plan_splits, run_score, score_texts
from spark_jobs.text import normalise
from trait.config import ConfigError, from_dict
from trait.contract import finished_dataset, validate_table

from .conftest import REPO, SHARED_DATA, read_jsonl, write_jsonl
from .support.cli import trait, trait_killed_when


def test_every_row_is_scored_as_raw_fasttext_scores_it(scored, small_corpus, classifiers):
    source = finished_dataset(small_corpus["pool"]).to_table()
    out = finished_dataset(scored).to_table()
    validate_table(out)
    assert out.num_rows == source.num_rows
    assert sorted(out.column("id").to_pylist()) == sorted(source.column("id").to_pylist())
    by_id = {r["id"]: r for r in out.to_pylist()}
    texts = [normalise(t) for t in source.column("text").to_pylist()]
    for model_dir in classifiers:
        card, bin_path = load_card(model_dir)
        assert out.schema.field(card["score_column"]).type == pa.float32()
        expected = fasttext_probability(fasttext.load_model(str(bin_path)), texts)
        got = np.array([by_id[i][card["score_column"]] for i in source.column("id").to_pylist()], dtype=np.float32)
        np.testing.assert_array_equal(got, expected)


def test_manifest_counts_come_from_the_written_rows(scored, small_corpus):
    manifest = json.loads((Path(scored) / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["rows_in"] == counts["rows_out"] == finished_dataset(small_corpus["pool"]).count_rows()
    out = finished_dataset(scored).to_table()
    for source, got in counts["by_source"].items():
        rows = out.filter(pa.compute.equal(out.column("source"), source))
        assert got["rows"] == rows.num_rows and got["tokens"] == pa.compute.sum(rows.column("n_tokens")).as_py()
        for column in manifest["score_columns"]:
            assert got[f"{column}_nulls"] == rows.column(column).null_count
            mean = np.mean(rows.column(column).drop_null(), dtype=np.float64)
            assert got[f"{column}_mean"] == pytest.approx(mean, rel=1e-9)
    assert set(counts["by_source"]) == {"wiki/enwiki-2015", "web/pile"}
    assert manifest["score_columns"] == ["score_domain_math_v1", "score_quality_edu_v1"]
    assert manifest["classifiers"]["score_domain_math_v1"]["heldout_metrics"]["roc_auc"] > 0.9
    names = sorted(os.listdir(scored))
    parts = [n for n in names if n.startswith("part-")]
    assert names == ["_SUCCESS", "manifest.json", *parts]
    assert parts == [f"part-{i:05d}.parquet" for i in range(len(parts))]


def test_statistics_are_the_aggregate_of_the_tasks_totals():
    """Sums and non-null counts per task, added up on the driver: the means and null counts must be those of the
    whole output, including a source split across tasks and a score that is null for every row of a source."""
    from spark_jobs.score import score_stats, source_totals

    parts = [{"source": ["a", "a", "b"], "n_tokens": [3, 5, 7], "s": [0.5, None, None]},
             {"source": ["a", "c"], "n_tokens": [2, 4], "s": [0.25, 1.0]}]
    totals = [t for part in parts for t in source_totals(pa.table({**part, "s": pa.array(part["s"], pa.float32())}),
                                                         ["s"])]
    stats = score_stats(totals, ["s"], rows_in=5)
    assert stats["rows_in"] == stats["rows_out"] == 5 and stats["tokens_out"] == 21
    assert stats["by_source"] == {"a": {"rows": 3, "tokens": 10, "s_mean": 0.375, "s_nulls": 1},
                                  "b": {"rows": 1, "tokens": 7, "s_mean": None, "s_nulls": 1},
                                  "c": {"rows": 1, "tokens": 4, "s_mean": 1.0, "s_nulls": 0}}


def test_a_text_with_nothing_to_score_gets_a_null_score(classifiers):
    """Batches of 2: the empty texts fall in both batches, and each score stays on its own row."""
    _, bin_path = load_card(classifiers[0])
    model = fasttext.load_model(str(bin_path))
    texts = ["a theorem on groups", " \u2003\n", "x", "\n", "the Sylow theorems"]
    scores = score_texts(pa.chunked_array([texts[:3], texts[3:]]), [("score_domain_math_v1", model)], 2).column(0)
    assert scores.type == pa.float32() and scores.null_count == 2 and not scores[1].is_valid and not scores[3].is_valid
    expected = fasttext_probability(model, [normalise(texts[i]) for i in (0, 2, 4)])
    assert np.array_equal(scores.take([0, 2, 4]).to_numpy(), expected)


def test_signals_where_computes_the_signals_only_where_the_gate_passes(spark, small_corpus, classifiers, tmp_path):
    """A cascade: the heuristic signal is computed where the domain score reaches the gate, and is null elsewhere
    and where the text normalises to nothing; what it computes is the signal as computed alone."""
    _, bin_path = load_card(classifiers[0])
    model = fasttext.load_model(str(bin_path))
    math = [r["text"] for r in read_jsonl(SHARED_DATA / "corpora/math/planetmath/planetmath_entries.jsonl.gz", 4)]
    wiki = [r["text"] for r in read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 4)]
    texts = [math[0], wiki[0], "$$", math[1], wiki[1], wiki[2], math[2], math[3], wiki[3]]
    domain = fasttext_probability(model, [normalise(t) for t in texts if normalise(t)])
    gate = float(np.median(domain))
    out = score_texts(pa.chunked_array([texts[:4], texts[4:]]), [("score_domain_math_v1", model)], 3,
                      (HEURISTIC_MATH_V1,), ("score_domain_math_v1", gate))
    scores = out.column("score_domain_math_v1").to_pylist()
    assert scores[2] is None and np.allclose([s for s in scores if s is not None], domain)
    passed = [i for i, s in enumerate(scores) if s is not None and s >= np.float32(gate)]
    assert 0 < len(passed) < 8
    signal = out.column(HEURISTIC_MATH_V1).to_pylist()
    assert [i for i, v in enumerate(signal) if v is not None] == passed
    assert [signal[i] for i in passed] == quality_signals.score(HEURISTIC_MATH_V1, [texts[i] for i in passed]).tolist()

    with pytest.raises(ConfigError, match="no signal is computed"):
        from_dict(ScoreConfig, {"models": classifiers, "signals_where": "score_domain_math_v1:min=0.5"})
    with pytest.raises(ConfigError, match="give a fixed score"):
        from_dict(ScoreConfig, {"models": classifiers, "signals": [HEURISTIC_V1],
                                "signals_where": "score_domain_math_v1:percentile=90"})
    cfg = from_dict(ScoreConfig, {"models": classifiers[1:], "signals": [HEURISTIC_V1],
                                  "signals_where": "score_domain_math_v1:min=0.5"})
    with pytest.raises(ConfigError, match="not a column of the classifiers scored here"):
        run_score(spark, cfg, small_corpus["pool"], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_splits_smaller_than_row_groups_score_every_row_once(spark, scored, small_corpus, classifiers, tmp_path):
    """100 kB splits: most hold no row group midpoint and write nothing; the rest hold each row group once."""
    cfg = from_dict(ScoreConfig, {"models": classifiers, "split_bytes": 100_000, "batch_rows": 100})
    manifest = run_score(spark, cfg, small_corpus["pool"], str(tmp_path / "fine"))
    assert manifest["splits"] > 10
    fine, reference = finished_dataset(str(tmp_path / "fine")).to_table(), finished_dataset(scored).to_table()
    assert fine.num_rows == reference.num_rows
    assert fine.sort_by("id").equals(reference.sort_by("id"))


def test_an_empty_corpus_gives_an_empty_typed_dataset(spark, classifiers, tmp_path):
    from spark_jobs.ingest import IngestConfig, run_ingest

    (tmp_path / "bad.jsonl").write_text('{"text": ""}\nnot json\n')
    run_ingest(spark, from_dict(IngestConfig, {"inputs": [{"path": str(tmp_path / "bad.jsonl"), "source": "b"}]}),
               str(tmp_path / "empty"))
    manifest = run_score(spark, from_dict(ScoreConfig, {"models": classifiers}), str(tmp_path / "empty"),
                         str(tmp_path / "scored"))
    assert manifest["counts"]["rows_in"] == manifest["counts"]["rows_out"] == 0
    table = finished_dataset(str(tmp_path / "scored")).to_table()
    validate_table(table)
    assert table.num_rows == 0 and "score_quality_edu_v1" in table.column_names


def test_rerun_is_a_no_op(spark, scored, small_corpus, classifiers):
    stamp = {p: os.stat(Path(scored) / p).st_mtime_ns for p in os.listdir(scored)}
    run_score(spark, from_dict(ScoreConfig, {"models": classifiers}), small_corpus["pool"], scored)
    assert stamp == {p: os.stat(Path(scored) / p).st_mtime_ns for p in os.listdir(scored)}


def test_bad_inputs_are_refused_clearly(spark, scored, small_corpus, classifiers, tmp_path):
    cfg = from_dict(ScoreConfig, {"models": classifiers})
    (tmp_path / "half").mkdir()
    with pytest.raises(DatasetError, match="not a finished dataset"):
        run_score(spark, cfg, str(tmp_path / "half"), str(tmp_path / "o1"))
    with pytest.raises(ConfigError, match="already has column"):
        run_score(spark, cfg, scored, str(tmp_path / "o2"))
    with pytest.raises(ConfigError, match="same column"):
        run_score(spark, from_dict(ScoreConfig, {"models": classifiers[:1] * 2}), small_corpus["pool"],
                  str(tmp_path / "o3"))
    with pytest.raises(ConfigError, match="no card.json"):
        run_score(spark, from_dict(ScoreConfig, {"models": [str(tmp_path)]}), small_corpus["pool"],
                  str(tmp_path / "o4"))
    # Part files copied as they are must share one schema: a part whose n_tokens became int32 is named.
    mixed = tmp_path / "mixed"
    shutil.copytree(small_corpus["pool"], mixed)
    last = sorted(mixed.glob("part-*.parquet"))[-1]
    table = pq.read_table(last)
    pq.write_table(table.set_column(table.schema.get_field_index("n_tokens"), "n_tokens",
                                    table["n_tokens"].cast(pa.int32())), last)
    with pytest.raises(Exception, match=f"(?s){last.name} has schema .*n_tokens: int32.*a dataset's part files share"):
        run_score(spark, cfg, str(mixed), str(tmp_path / "o5"))
    assert not (tmp_path / "o5" / "_SUCCESS").exists()


def _tables(path):
    return [pq.read_table(Path(path) / n) for n in sorted(os.listdir(path)) if n.startswith("part-")]


def test_a_job_killed_half_way_and_rerun_gives_the_uninterrupted_output(spark, classifiers, tmp_path):
    """SIGKILL the whole score process group (driver JVM, Python workers) while tasks run, then rerun."""
    from spark_jobs.ingest import IngestConfig, run_ingest

    wiki = read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 2500, start=600)
    write_jsonl(tmp_path / "wiki.jsonl", wiki)
    # Several part files, so the kill lands among several tasks: ingest's output may be one partition for 40 MB.
    run_ingest(spark, from_dict(IngestConfig, {"inputs": [{"path": str(tmp_path / "wiki.jsonl"), "source": "w"}],
                                               "max_records_per_file": 600}), str(tmp_path / "pool"))
    attempts = tmp_path / "killed._staging" / ATTEMPTS_DIR
    first_seen: list[float] = []

    def under_way() -> bool:  # a second after the first task began writing
        if not first_seen and attempts.exists():
            first_seen.append(time.monotonic())
        return bool(first_seen) and time.monotonic() - first_seen[0] > 1.0

    killed = trait_killed_when(under_way, "score", "--master", "local[2]", "--input", str(tmp_path / "pool"),
                               "--model", *classifiers, "--output", str(tmp_path / "killed"), timeout=300)
    assert killed.returncode == -signal.SIGKILL, f"the job ended before it was killed: {killed.stderr[-2000:]}"
    assert not (tmp_path / "killed" / "_SUCCESS").exists()

    cfg = from_dict(ScoreConfig, {"models": classifiers})
    run_score(spark, cfg, str(tmp_path / "pool"), str(tmp_path / "killed"))
    run_score(spark, cfg, str(tmp_path / "pool"), str(tmp_path / "clean"))
    killed, clean = _tables(tmp_path / "killed"), _tables(tmp_path / "clean")
    assert len(killed) == len(clean) > 1
    assert all(a.equals(b) for a, b in zip(killed, clean))
    assert not (tmp_path / "killed._staging").exists()


def _jvm_arguments(spark) -> list[str]:
    return list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())


def test_the_score_session_runs_its_local_jvm_without_c2(spark):
    """`trait score` asks for a scheduler-only session (its JVM compiles nothing worth C2); other jobs keep C2."""
    from spark_jobs.session import SCHEDULER_ONLY_JAVA_OPTIONS

    code = ("import json; from spark_jobs.session import get_spark; from tests.test_score import _jvm_arguments; "
            "print(json.dumps(_jvm_arguments(get_spark('t', 'local[1]', scheduler_only=True))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                         cwd=REPO)
    assert SCHEDULER_ONLY_JAVA_OPTIONS in json.loads(out.stdout.strip().splitlines()[-1])
    assert SCHEDULER_ONLY_JAVA_OPTIONS not in _jvm_arguments(spark)


def test_a_corrupt_classifier_is_refused_before_it_ships(small_corpus, classifiers, tmp_path):
    """A .bin cut short (fastText hangs or dies loading one) is caught by its sha1 on the driver: one line naming the
    file, exit 2, nothing written."""
    shutil.copytree(classifiers[0], tmp_path / "model")
    bin_path = load_card(tmp_path / "model")[1]
    bin_path.write_bytes(bin_path.read_bytes()[:100])
    done = trait("score", "--master", "local[1]", "--input", small_corpus["pool"], "--model", str(tmp_path / "model"),
                 classifiers[1], "--output", str(tmp_path / "out"), timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("trait: error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and f"{bin_path} is corrupt or was replaced: its sha1 is " in errors[0], done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out._staging").exists()


def test_splits_cover_each_file_once_and_leave_no_sliver():
    """Contiguous ranges from 0 to each file's size; none longer than SPLIT_SLOP x split_bytes; a file's last range
    takes the remainder rather than leave it (a footer's bytes, no row group's midpoint) to a task of its own."""
    sizes = [0, 1, 99, 100, 105, 110, 111, 250, 1_000]
    splits = plan_splits([(f"f{k}", size) for k, size in enumerate(sizes)], 100)
    assert [s[0] for s in splits] == list(range(len(splits)))
    for k, size in enumerate(sizes):
        ranges = [(start, end) for _, uri, start, end in splits if uri == f"f{k}"]
        assert ranges[0][0] == 0 and ranges[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(end - start <= SPLIT_SLOP * 100 for start, end in ranges)
        assert all(end - start == 100 for start, end in ranges[:-1])
    assert [len([s for s in splits if s[1] == f"f{k}"]) for k in range(len(sizes))] == [1, 1, 1, 1, 1, 1, 2, 3, 10]
