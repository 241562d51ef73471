"""The ``trait`` front door: help, clear errors, the whole chain through subprocesses, and the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO, SHARED_DATA, read_jsonl, write_jsonl


def trait(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "trait.cli", *args], capture_output=True, text=True, cwd=REPO)
    if check and proc.returncode:
        raise AssertionError(f"trait {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_help_lists_every_command():
    out = trait("--help").stdout
    for command in ("ingest", "classifier", "score", "select", "demo"):
        assert command in out
    assert "token_budget" in trait("select", "--help").stdout


def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path):
    proc = trait("select", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--domain", "score_x_v1>0.5",
                 check=False)
    assert proc.returncode == 2 and "trait: error: threshold 'score_x_v1>0.5'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = trait("classifier", "train", "--name", "x", "--positives", str(tmp_path), "--negatives", str(tmp_path),
                 "--output", str(tmp_path / "m"), check=False)
    assert proc.returncode == 2 and "not a finished dataset" in proc.stderr


def test_the_chain_through_the_command_line(tmp_path):
    seed = write_jsonl(tmp_path / "seed.jsonl",
                       read_jsonl(SHARED_DATA / "corpora/math/planetmath/planetmath_entries.jsonl.gz", 300))
    pool = write_jsonl(tmp_path / "pool.jsonl",
                       read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 300, start=1000))
    trait("ingest", "--input", str(seed), "--source", "math/planetmath", "--url-field", "none",
          "--output", str(tmp_path / "seed"))
    proc = trait("ingest", "--input", str(pool), "--source", "wiki", "--output", str(tmp_path / "pool"))
    out = json.loads(proc.stdout)
    assert out["rows_in"] == 300 == out["rows_out"] + out["rows_quarantined"]
    # The statistics read the quarantine by its part files: Spark warns about a root path named `_quarantine`.
    assert "All paths were ignored" not in proc.stderr
    metrics = json.loads(trait("classifier", "train", "--name", "domain_math", "--positives", str(tmp_path / "seed"),
                               "--negatives", str(tmp_path / "pool"), "--output", str(tmp_path / "dm")).stdout)
    assert metrics["roc_auc"] > 0.9
    trait("score", "--input", str(tmp_path / "pool"), "--model", str(tmp_path / "dm"), "--output",
          str(tmp_path / "scored"))
    counts = json.loads(trait("select", "--input", str(tmp_path / "scored"), "--domain",
                              "score_domain_math_v1:percentile=80", "--output", str(tmp_path / "sel")).stdout)
    assert counts["rows_in"] == 300 and 55 <= counts["rows_out"] <= 65


@pytest.mark.demo
def test_the_demo_prints_its_tables(tmp_path):
    proc = trait("demo", "--data", str(SHARED_DATA), "--workdir", str(tmp_path / "demo"))
    work = tmp_path / "demo"
    summary = (work / "summary.md").read_text()
    assert summary in proc.stdout

    def manifest(name):
        return json.loads((work / name / "manifest.json").read_text())

    # Dedup and decontamination run before selection, and what they removed is what the scorer did not see.
    dedup, pool = manifest("dedup_pool"), manifest("pool")
    assert dedup["counts"]["rows_in"] == 16_114 and pool["counts"]["rows_in"] == dedup["counts"]["rows_out"]
    assert f"| dedup | pool | 16,114 | {dedup['counts']['rows_out']:,} |" in summary
    assert manifest("scored")["counts"]["rows_in"] == pool["counts"]["rows_out"]
    selected = manifest("selected")
    assert selected["counts"]["tokens_out"] >= 150_000 and selected["thresholds"]["domain"]["budget_reached"]
    for needle in ("score_domain_math_v1", "score_quality_edu_v1", "token_budget", "| trait & random |",
                   "| trait & dsir |", "| random & dsir |"):
        assert needle in summary
    # Random and DSIR are drawn to the budget the TRAIT selection reached, overshooting by one document at most.
    budget = selected["counts"]["tokens_out"]
    for name in ("random", "dsir"):
        m = manifest(name)
        assert m["budget"]["tokens"] == budget and budget <= m["counts"]["tokens_out"] < budget + 50_000
    assert (work / "report" / "report.html").stat().st_size > 10_000
