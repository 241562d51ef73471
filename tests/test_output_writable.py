"""An output folder this process cannot write is one line and exit 2 (``trait.outputs.check_writable``), for a
Spark job and a job without Spark, run as the user runs them. Root writes through permission bits, so the commands
run without the capabilities that allow that (``support.privileges``)."""

from __future__ import annotations

import json
import os

import pytest

from trait.outputs import check_output

from .support.cli import trait
from .support.privileges import unprivileged


def _refused(run, folder, output) -> None:
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "\tat " not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("trait: error:")]
    assert errors == [f"trait: error: permission denied: cannot write to {folder} (--output {output}); choose an "
                      "output you can write, or fix its permissions"], run.stderr[-3000:]


@pytest.fixture
def closed(tmp_path):
    """An empty folder nobody may write (mode 555), made writable again after the test so it can be removed."""
    folder = tmp_path / "closed"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_a_spark_job_refuses_an_output_it_cannot_write_in_one_line(tmp_path, closed):
    prefix = unprivileged(tmp_path)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5)))
    trait("ingest", "--input", str(tmp_path / "a.jsonl"), "--source", "s", "--output", str(tmp_path / "data"),
          check=True)
    env = {**os.environ, "TRAIT_SPARK_LOG_LEVEL": "ERROR"}
    # A new output under a folder it cannot write (the nearest existing folder is named), then that folder itself.
    for output in (closed / "deduped", closed):
        run = trait("dedup", "--input", str(tmp_path / "data"), "--output", str(output), env=env, prefix=prefix)
        _refused(run, closed, output)
    assert list(closed.iterdir()) == []


def test_a_job_without_spark_refuses_an_output_it_cannot_write_in_one_line(tmp_path, closed):
    prefix = unprivileged(tmp_path)
    for output in (closed / "results" / "run1", closed):
        run = trait("eval", "--model", str(tmp_path / "model"), "--tasks", "gsm8k", "--output", str(output),
                    prefix=prefix)
        _refused(run, closed, output)
    assert list(closed.iterdir()) == []


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    (tmp_path / "out").mkdir()
    for output in (tmp_path / "out", tmp_path / "new" / "deeper"):
        check_output(output, dataset=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert list((tmp_path / "out").iterdir()) == []
