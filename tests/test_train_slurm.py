"""``infra/slurm/train.sbatch`` under a real Slurm (tests/support/slurm.py: munged, slurmctld, two slurmd virtual
nodes): 2-node DeepSpeed ZeRO-1 training on CPU, one torchrun agent per node and one worker each (world size 2).

Both jobs train the same config (the tiny Llama, stage 1 only, 150 steps of 8 x 64 tokens). The first runs to the
end. The second gets the pre-emption warning mid-run, the way ``#SBATCH --signal=B:USR1@N`` delivers it (SIGUSR1 to
the batch shell only: ``scancel --batch --signal=USR1``), checkpoints, requeues itself, and resumes; its loss curve
must be the first job's. Both virtual nodes are 127.0.0.1, so the jobs get TRAIT_RDZV_HOST=127.0.0.1 and a free
TRAIT_RDZV_PORT each (other test sessions may run clusters on this machine). About 2.5 min on 2 cores: ~30 s a
run, plus the requeued job's wait for its begin time (the cluster's 15 s credential lifetime).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from trainer import checkpoint
from trait.net import free_port

from .conftest import REPO
from .support.slurm import slurm_cluster
from .support.training import events, tiny_config, write_config

pytestmark = pytest.mark.slurm
SBATCH = REPO / "infra" / "slurm" / "train.sbatch"
STEPS = 150  # ~0.1 s a step here: the signal (sent after step 3) lands long before the end even on a busy machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), nodes=2) as c:
        yield c


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, tiny_model, datasets) -> dict:
    """Stage 1 only; micro-batch 2 so that 8 sequences = 2 micro x 2 ranks x 2 accumulation steps."""
    cfg = tiny_config(tmp_path_factory.mktemp("train"), tiny_model, datasets)  # one token cache for both jobs
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update(micro_batch_size=2, token_budget=STEPS * 8 * 64, checkpoint_every=0)
    return cfg


def submit(cluster, root: Path, cfg: dict) -> str:
    cfg = {**cfg, "output_dir": str(root / "out")}
    env = {"OMP_NUM_THREADS": "1",  # one intra-op thread per worker (tests/support/training.py says why)
           "TRAIT_PYTHON": sys.executable, "TRAIT_RDZV_HOST": "127.0.0.1", "TRAIT_RDZV_PORT": str(free_port())}
    return cluster.submit(SBATCH, write_config(root, cfg), cwd=REPO, env=env,
                          sbatch_args=["--nodes=2", "--cpus-per-task=1", "--time=30", f"--output={root}/job-%j.out"])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200].decode(errors="replace")
    except OSError:
        return "(gone)"


@pytest.fixture(scope="module")
def uninterrupted(cluster, base_config, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    # Every 100 steps: one checkpoint, to look at both ranks' shares of it (changes nothing in the loss curve).
    cfg = {**base_config, "stages": [{**base_config["stages"][0], "checkpoint_every": 100}]}
    job = submit(cluster, root, cfg)
    (done,) = cluster.wait(job, timeout=600, poll_s=0.5)
    report = cluster.describe(job)
    # The batch script stopped its rendezvous store, the agents and workers exited: only the daemons are left
    # (slurmstepd may take a moment to exit after reporting).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and cluster.job_pids():
        time.sleep(0.2)
    return {"job": done, "out": root / "out", "log": done.stdout.read_text(), "report": report,
            "left": {pid: cmdline(pid) for pid in cluster.job_pids()}}


def test_two_node_job_trains_with_one_rank_per_node_and_exports(uninterrupted):
    job, out, log, report = (uninterrupted[k] for k in ("job", "out", "log", "report"))
    assert job.ok and job.restarts == 0, report
    assert job.nodes == "n[1-2]", report
    # srun started one agent per node; each agent's worker finished.
    assert "torchrun_node: n1: workers finished" in log and "torchrun_node: n2: workers finished" in log, report
    assert "train.sbatch: job" in log and "2 nodes x 1 processes, rendezvous 127.0.0.1:" in log
    assert not uninterrupted["left"], f"{uninterrupted['left']}\n{report}"
    start = events(out, "knowledge", "start")[0]
    assert start["world_size"] == 2 and start["deepspeed"]["gradient_accumulation_steps"] == 2
    assert [r["step"] for r in events(out, "knowledge")] == list(range(1, STEPS + 1))
    # Both ranks saved their ZeRO-1 optimizer partition and their data position into the step-100 checkpoint.
    ckpt = out / "knowledge" / "checkpoints" / "step_00000100"
    assert checkpoint.check(ckpt) is None
    assert sorted(p.name for p in ckpt.glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    import torch

    states = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")
    assert len(states["ranks"]) == 2
    # The export is a Hugging Face directory that loads.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "knowledge" / "final")
    assert model.config.model_type == "llama"
    assert (out / "summary.json").exists()


def test_preempted_job_checkpoints_requeues_itself_and_resumes(cluster, base_config, uninterrupted, tmp_path):
    job = submit(cluster, tmp_path, base_config)
    out = tmp_path / "out"
    metrics = out / "knowledge" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().count('"event": "train"') >= 3):
        state = cluster.job(job)
        assert not state.done and time.monotonic() < deadline, cluster.describe(job)
        time.sleep(0.2)
    # What `#SBATCH --signal=B:USR1@300` does 300 s before the time limit: SIGUSR1 to the batch shell alone.
    cluster.cancel(job, "USR1", batch_only=True)
    while cluster.job(job).restarts < 1:  # the script saw exit 75 and ran `scontrol requeue`
        state = cluster.job(job)
        assert not state.done and time.monotonic() < deadline, cluster.describe(job)
        time.sleep(0.2)
    # The stop checkpoint is complete (every file's size and sha256 as its marker says) before the job runs again.
    found = checkpoint.latest(out / "knowledge" / "checkpoints")
    assert found is not None, cluster.describe(job)
    stop_step, path = found
    assert 3 <= stop_step < STEPS and checkpoint.check(path) is None
    assert len(list(path.glob("zero_pp_rank_*_optim_states.pt"))) == 2  # both ranks' partitions

    (done,) = cluster.wait(job, timeout=600, poll_s=0.5)
    report = cluster.describe(job, lines=80)
    assert done.ok and done.restarts == 1, report
    log = done.stdout.read_text()  # --open-mode=append: both runs
    assert log.count("train.sbatch: job") == 2 and f"job {job} run 2 on" in log, report
    assert "train.sbatch: got SIGUSR1" in log
    for rank in (0, 1):  # the signal reached both workers, through srun, on both nodes
        assert f"[rank {rank}] trainer: got SIGUSR1" in log, report
    assert f"stopped by a signal at step {stop_step} of {STEPS}" in log
    assert re.search(r"torchrun_node: n1: worker exit codes \[75\]; exiting 75", log), report
    assert re.search(r"torchrun_node: n2: worker exit codes \[75\]; exiting 75", log), report
    assert "train.sbatch: srun exited 75" in log and f"requeueing job {job}" in log
    assert f"resumed from {path} (step {stop_step} of {STEPS})" in log, report

    # The second run started at the checkpoint's step and numbered on from there: one start record each, and the
    # train records run 1..STEPS once, as if never interrupted.
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    starts = [r for r in records if r["event"] == "start"]
    assert [(s["step"], s["resumed_from"]) for s in starts] == [(0, None), (stop_step, str(path))]
    after = records[records.index(starts[1]) + 1:]
    assert [r["step"] for r in after if r["event"] == "train"][0] == stop_step + 1
    resumed = [(r["step"], r["loss"], r["lr"]) for r in events(out, "knowledge")]
    straight = [(r["step"], r["loss"], r["lr"]) for r in events(uninterrupted["out"], "knowledge")]
    assert [s for s, *_ in resumed] == list(range(1, STEPS + 1))
    # Same data position, optimizer and RNG state at the stop step, fp32 on CPU, two ranks both times: the same
    # losses, exactly.
    assert resumed == straight
    assert (out / "knowledge" / "final" / "model.safetensors").exists()
