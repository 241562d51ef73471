"""``trait pipeline run --executor slurm`` on a real Slurm (tests/support/slurm.py: munged, slurmctld, two slurmd
virtual nodes on localhost): every stage is an sbatch job chained on its inputs with --dependency=afterok, Spark
stages go through spark-submit, synth runs as the existing job array (two chunks) joined by its stage's job, and
the last job writes the ablation table. The reduced config of tests/test_pipeline_run.py, with four arms."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from .support.cli import trait
from .support.pipeline import ENV, reduced_config
from .support.slurm import slurm_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.pipeline]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), nodes=2) as c:
        yield c


def test_tiny_pipeline_end_to_end_under_slurm(cluster, tmp_path):
    config = reduced_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    spark_submit = Path(sys.executable).parent / "spark-submit"
    cfg.update(arms=["base", "seed", "seed+trait", "trait"], synth_chunks=2, spark_master="local[1]",
               slurm={"spark_submit": str(spark_submit), "synth_args": ["--cpus-per-task=1"]})
    cfg["eval"]["curves"] = []
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = trait("pipeline", "run", "--config", str(config), "--executor", "slurm", "--wait",
                 env={**ENV, **cluster.env}, timeout=2400)
    run = tmp_path / "run"
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((run / "_pipeline" / "slurm").glob("*.out")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-6000:]
    jobs = json.loads((run / "_pipeline" / "slurm" / "jobs.json").read_text())
    assert {"ingest_seed", "score", "synth", "train_trait", "eval_trait", "ablation"} <= set(jobs)
    records = {p.stem: json.loads(p.read_text()) for p in (run / "_pipeline" / "state").glob("*.json")}
    assert all(r["status"] == "done" for r in records.values()), {n: r["status"] for n, r in records.items()}
    # chained with afterok: no stage's job started before every input's job had finished
    for name, r in records.items():
        for upstream in r["inputs"]:
            assert records[upstream]["finished_at"] <= r["started_at"], (name, upstream)
    assert "spark-submit" in (run / "_pipeline" / "slurm" / "score.sbatch").read_text()
    chunks = sorted(p.name for p in (run / "data" / "passages_chunks").iterdir() if not p.name.endswith("._chunks"))
    assert chunks == ["chunk-00000", "chunk-00001"]  # the array's two tasks (each chunk's batches beside it)
    rows = {r["arm"]: r for r in json.loads((run / "ablation.json").read_text())["rows"]}
    assert list(rows) == ["base", "seed", "seed+trait", "trait"]
    assert all(r["bpb"]["in_domain"]["value"] > 0 for r in rows.values())
