"""``benchmarks.gates``: the line each gate prints, the result files, and the summary table and JSON that ``make
bench`` ends with (this run's results only; a missing benchmark is a FAIL row). No benchmark runs here."""

from __future__ import annotations

import json

import pytest

from benchmarks.gates import Gate, main, record


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIT_BENCH_RESULTS", str(tmp_path))
    return tmp_path


def test_gate_verdicts_and_line():
    assert Gate("b", "speed", 3.0, 3.0).passed  # the goal itself passes
    assert Gate("b", "speed", 2.999, 3.0).verdict == "FAIL"
    assert Gate("b", "speed", None, 1.0).line() == "speed: no result (FAIL, goal >= 1)"
    assert Gate("b", "agreement", 0.9612, 0.95).line() == "agreement: 0.961 (PASS, goal >= 0.95)"


def test_summary_table_and_json(results, capsys):
    assert main(["begin", "--expect", "fast", "slow", "crashed"]) == 0
    record("fast", [Gate("fast", "ours / theirs", 3.25, 3.0), Gate("fast", "agreement", 0.97, 0.95)], quick=False,
           details={"seconds": [1.0]})
    record("slow", [Gate("slow", "ours / theirs", 0.8, 0.9)], quick=False)
    written = json.loads((results / "fast.json").read_text())
    assert written["details"] == {"seconds": [1.0]} and written["gates"][0]["ratio"] == 3.25
    capsys.readouterr()

    assert main(["summary"]) == 1  # one gate fails and one benchmark left no result
    out = capsys.readouterr().out
    assert "| fast | ours / theirs | 3.250 | >= 3 | PASS |" in out
    assert "| slow | ours / theirs | 0.800 | >= 0.9 | FAIL |" in out
    assert "| crashed | no result from this run (see its output above) | - | >= 1 | FAIL |" in out
    assert "2 of 4 gates pass" in out
    summary = json.loads((results / "summary.json").read_text())
    assert [(g["benchmark"], g["result"]) for g in summary["gates"]] == [
        ("fast", "PASS"), ("fast", "PASS"), ("slow", "FAIL"), ("crashed", "FAIL")]


def test_an_older_runs_result_does_not_count(results, capsys):
    main(["begin", "--expect", "fast"])
    record("fast", [Gate("fast", "ours / theirs", 5.0, 3.0)], quick=False)
    main(["begin", "--expect", "fast"])  # a new run in which "fast" crashed before recording
    assert main(["summary"]) == 1
    assert "| fast | no result from this run" in capsys.readouterr().out


def test_all_pass_exits_zero_and_quick_has_its_own_results(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRAIT_BENCH_RESULTS", raising=False)
    monkeypatch.setattr("benchmarks.gates.REPO", tmp_path)
    main(["begin", "--quick", "--expect", "fast"])
    record("fast", [Gate("fast", "ours / theirs", 5.0, 3.0)], quick=True)
    assert main(["summary", "--quick"]) == 0
    assert (tmp_path / "runs" / "bench-quick" / "summary.json").exists()
    assert not (tmp_path / "runs" / "bench").exists()
