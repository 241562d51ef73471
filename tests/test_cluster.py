"""The score job through ``infra/spark/submit.sh`` on a real standalone cluster (master + 2 workers, loopback),
including a worker SIGKILLed mid-job. Executors get the project as --py-files and its dependencies as the
packed environment that ``infra/spark/package.sh`` builds, as on a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from spark_jobs.ingest import IngestConfig, run_ingest
from spark_jobs.score import ATTEMPTS_DIR, ScoreConfig, run_score
from trait.config import from_dict
from trait.contract import finished_dataset

from .conftest import REPO, SHARED_DATA, read_jsonl, write_jsonl
from .support.cluster import StandaloneCluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = StandaloneCluster(tmp_path_factory.mktemp("standalone")).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """Build the --py-files zip and the packed environment once for this module."""
    build = tmp_path_factory.mktemp("build")
    subprocess.run([str(REPO / "infra/spark/package.sh"), str(build)], check=True, cwd=REPO,
                   capture_output=True)
    return build


def submit(cluster, package, *trait_args, wait=True):
    cmd = [str(REPO / "infra/spark/submit.sh"), "--master", cluster.url, "--conf", "spark.ui.enabled=false",
           "--conf", "spark.executor.memory=1g", "--conf", "spark.task.maxFailures=4", "--", *trait_args]
    env = {**os.environ, "TRAIT_SPARK_BUILD": str(package)}
    env.pop("TRAIT_SPARK_PYTHON", None)
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def scores_by_id(path) -> dict[str, tuple]:
    table = finished_dataset(str(path)).to_table()
    columns = [c for c in table.column_names if c.startswith("score_")]
    return {r["id"]: tuple(r[c] for c in columns) for r in table.to_pylist()}


def test_score_job_through_spark_submit_matches_a_local_run(cluster, package, small_corpus, classifiers, scored,
                                                            tmp_path):
    out = tmp_path / "scored"
    submit(cluster, package, "score", "--input", small_corpus["pool"], "--model", *classifiers, "--output", str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spark_master"] == cluster.url
    assert manifest["counts"]["rows_in"] == manifest["counts"]["rows_out"]
    assert scores_by_id(out) == scores_by_id(scored)  # the local[2] run of the same job, id for id, bit for bit
    apps = cluster.state()["completedapps"]
    assert apps and apps[-1]["name"] == "trait-score"


def test_a_worker_killed_mid_job_does_not_lose_or_duplicate_rows(cluster, package, classifiers, spark, tmp_path):
    wiki = read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 3000, start=3000)
    write_jsonl(tmp_path / "wiki.jsonl", wiki)
    # 150 rows per file: 20 files, 20 tasks, so both workers are busy when one dies.
    run_ingest(spark, from_dict(IngestConfig, {"inputs": [{"path": str(tmp_path / "wiki.jsonl"), "source": "w"}],
                                               "max_records_per_file": 150}), str(tmp_path / "pool"))

    run_score(spark, from_dict(ScoreConfig, {"models": classifiers}), str(tmp_path / "pool"), str(tmp_path / "ref"))

    proc = submit(cluster, package, "score", "--input", str(tmp_path / "pool"), "--model", *classifiers,
                  "--output", str(tmp_path / "out"), wait=False)
    attempts = tmp_path / "out._staging" / ATTEMPTS_DIR
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline and not any(attempts.glob("*.parquet")):
        time.sleep(0.1)
    assert proc.poll() is None, f"the job ended before a worker could be killed:\n{proc.stdout.read()[-3000:]}"
    cluster.kill_worker(0)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-5000:]
    assert "Lost executor" in output  # the driver saw the kill while the job ran, and carried on
    assert scores_by_id(tmp_path / "out") == scores_by_id(tmp_path / "ref")
    assert finished_dataset(str(tmp_path / "out")).count_rows() == 3000
