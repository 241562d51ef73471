"""The data contract where Spark jobs write and read: JobOutput.commit checks every staged part file (and the
quarantine's) before anything is committed; finished_manifest refuses another major contract version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spark_jobs.dataset import JobOutput, open_dataset, parts_glob
from spark_jobs.select import SelectConfig, run_select
from trait.config import from_dict
from trait.contract import CONTRACT_VERSION, QUARANTINE_DIR, ContractError, write_text_dataset


@pytest.fixture
def dataset(tmp_path) -> str:
    return write_text_dataset(tmp_path / "in", "test/contract", [f"document number {i}" for i in range(20)])


def test_a_job_that_writes_a_column_of_the_wrong_type_commits_nothing(spark, dataset, tmp_path):
    from pyspark.sql import functions as F

    out = tmp_path / "out"
    job = JobOutput(spark, str(out), "test_job", {}, [parts_glob(dataset)])
    df, _ = open_dataset(spark, dataset)
    with pytest.raises(ContractError, match=r"test_job wrote .*part-00000\.parquet, which breaks the data contract: "
                                            r"column 'n_tokens' has type string, the contract says int64"):
        job.write(df.withColumn("n_tokens", F.col("n_tokens").cast("string")))
    assert not out.exists() and Path(f"{out}._staging").exists()  # left for a look; the rerun replaces it


def test_a_quarantine_of_the_wrong_shape_commits_nothing(spark, dataset, tmp_path):
    out = tmp_path / "out"
    job = JobOutput(spark, str(out), "test_job", {}, [parts_glob(dataset)])
    df, _ = open_dataset(spark, dataset)
    with pytest.raises(ContractError, match=f"{QUARANTINE_DIR}/part-00000.parquet, which breaks the data contract: "
                                            "quarantine column 'input_file' not found"):
        job.write(df, quarantine=df.select("source", "text"))
    assert not out.exists()


def test_a_contract_dataset_commits_with_its_version(spark, dataset, tmp_path):
    out = tmp_path / "out"
    df, _ = open_dataset(spark, dataset)
    manifest = JobOutput(spark, str(out), "test_job", {}, [parts_glob(dataset)]).write(df)
    assert manifest["contract_version"] == CONTRACT_VERSION
    assert json.loads((out / "manifest.json").read_text())["contract_version"] == CONTRACT_VERSION


def test_a_job_refuses_an_input_of_another_contract_version(spark, dataset, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(dataset, newer)
    (newer / "manifest.json").write_text(json.dumps({"contract_version": "2.1"}))
    config = from_dict(SelectConfig, {"domain": {"column": "n_tokens", "min": 0.5}})
    with pytest.raises(ContractError, match="written under data contract version '2.1'; this TRAIT reads version 1"):
        run_select(spark, config, str(newer), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
