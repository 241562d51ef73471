"""Package boundaries: the selection side pulls and imports no torch; models load once per Python worker."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement

HEAVY = {"torch", "transformers", "deepspeed", "vllm"}


def test_the_select_extra_pulls_no_torch():
    requirements = [Requirement(r) for r in metadata.requires("trait")]
    select = {r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "select"})}
    base = {r.name for r in requirements if not r.marker}
    assert {"pyspark", "fasttext-community"} <= select
    assert not (select | base) & HEAVY


def test_spark_jobs_and_the_cli_import_no_torch():
    code = ("import sys, trait.cli, trait.contract, spark_jobs.ingest, spark_jobs.score, spark_jobs.select, "
            "spark_jobs.classifier, spark_jobs.demo; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(HEAVY)!r}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_the_contract_module_imports_nothing_heavier_than_pyarrow():
    code = ("import sys, trait.contract; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'pyspark', 'pandas', 'fasttext', 'torch', 'yaml'}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_a_shipped_model_loads_once_per_python_worker(spark, classifiers):
    from spark_jobs import shipped
    from spark_jobs.classifier import load_card

    _, bin_path = load_card(classifiers[0])
    name = shipped.ship(spark, str(bin_path))

    def probe(_):
        import os

        from spark_jobs import shipped as worker_side

        return os.getpid(), id(worker_side.fasttext_model(name))

    seen = spark.sparkContext.parallelize(range(16), 16).map(probe).collect()
    by_pid: dict[int, set[int]] = {}
    for pid, model in seen:
        by_pid.setdefault(pid, set()).add(model)
    # 16 tasks on 2 cores run in at most a handful of reused workers; each holds one model object throughout.
    assert len(by_pid) <= 4 and all(len(models) == 1 for models in by_pid.values()), by_pid
