"""The local Slurm helper (tests/support/slurm.py) against real daemons: munged, slurmctld and two slurmd virtual nodes.

One cluster serves the module (start ~2 s); the teardown test starts its own, because stopping is what it checks.
"""

from __future__ import annotations

import time

import pytest

from .support.slurm import SlurmCluster, parse_records, slurm_cluster

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), nodes=2) as c:
        yield c


def gone(pid: int) -> bool:
    """No such process, or a zombie (ended; whether its new parent reaps it is not up to Slurm)."""
    try:
        return "\nState:\tZ" in open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return True


def script(path, body: str):
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    return path


def test_parse_records_keeps_spaces_inside_values():
    (rec,) = parse_records("JobId=7 JobName=a b JobState=PENDING Reason=Nodes required for job are DOWN "
                           "Dependency=(null)")
    assert rec == {"JobId": "7", "JobName": "a b", "JobState": "PENDING",
                   "Reason": "Nodes required for job are DOWN", "Dependency": "(null)"}


def test_two_nodes_run_one_step_across_both(cluster, tmp_path):
    assert cluster.node_states() == {"n1": "IDLE", "n2": "IDLE"}
    job = cluster.submit(script(tmp_path / "two.sh", "srun -N2 -n2 bash -c 'echo step on $SLURMD_NODENAME'\n"),
                         sbatch_args=["-N2", f"--output={tmp_path}/out-%j.txt"])
    (done,) = cluster.wait(job, timeout=60)
    assert done.ok, cluster.describe(job)
    assert done.nodes == "n[1-2]"
    assert cluster.output_path(job) == tmp_path / f"out-{job}.txt"  # %j expanded by Slurm
    lines = sorted(cluster.output_path(job).read_text().split("\n"))
    assert [x for x in lines if x] == ["step on n1", "step on n2"]
    deadline = time.monotonic() + 30  # slurmstepd may linger a moment after the job is reported done
    while time.monotonic() < deadline and cluster.job_pids():
        time.sleep(0.1)
    assert cluster.job_pids() == []


def test_failure_exit_code_and_array_tasks(cluster, tmp_path):
    failing = cluster.submit(script(tmp_path / "fail.sh", "echo about to fail\nexit 3\n"),
                             sbatch_args=[f"--output={tmp_path}/fail-%j.txt"])
    array = cluster.submit(script(tmp_path / "array.sh", 'echo "task $SLURM_ARRAY_TASK_ID of '
                                                          '$SLURM_ARRAY_TASK_COUNT"\n'),
                           sbatch_args=["--array=0-2", "--cpus-per-task=1", f"--output={tmp_path}/arr-%A_%a.txt"])
    (failed,) = cluster.wait(failing, timeout=60)
    assert (failed.state, failed.exit_code, failed.ok) == ("FAILED", "3:0", False)
    tasks = cluster.wait(array, timeout=60)
    assert sorted(t.job_id for t in tasks) == [f"{array}_{i}" for i in range(3)]
    assert all(t.ok for t in tasks), cluster.describe(array)
    for i in range(3):
        path = cluster.output_path(f"{array}_{i}")
        assert path == tmp_path / f"arr-{array}_{i}.txt"
        assert path.read_text() == f"task {i} of 3\n"


def test_wait_for_running_then_requeue_then_cancel(cluster, tmp_path):
    # Each run appends its restart count and pid, then sleeps; requeue kills the first run and starts a second.
    runs = tmp_path / "runs.txt"
    job = cluster.submit(script(tmp_path / "sleep.sh", f'echo "${{SLURM_RESTART_COUNT:-0}} $$" >> {runs}\n'
                                                       "sleep 300\n"),
                         sbatch_args=[f"--output={tmp_path}/sleep-%j.txt", "--cpus-per-task=1"])
    cluster.wait(job, timeout=60, states={"RUNNING"})
    while not runs.exists():
        time.sleep(0.1)
    cluster.requeue(job)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(runs.read_text().splitlines()) < 2:
        time.sleep(0.2)
    first, second = [line.split() for line in runs.read_text().splitlines()]
    assert (first[0], second[0]) == ("0", "1")
    assert cluster.job(job).restarts == 1
    cluster.cancel(job)
    (cancelled,) = cluster.wait(job, timeout=60)
    assert cancelled.state == "CANCELLED"
    assert gone(int(first[1])) and gone(int(second[1]))  # both runs' batch shells


def test_wait_times_out_with_the_job_state(cluster, tmp_path):
    job = cluster.submit(script(tmp_path / "long.sh", "sleep 300\n"),
                         sbatch_args=[f"--output={tmp_path}/long-%j.txt", "--cpus-per-task=1"])
    try:
        with pytest.raises(TimeoutError, match=rf"job {job} not in .*RUNNING|PENDING"):
            cluster.wait(job, timeout=1)
    finally:
        cluster.cancel(job)


def test_stop_leaves_no_daemon_and_no_job_process(tmp_path):
    cluster = SlurmCluster(tmp_path / "c", nodes=2)
    try:
        cluster.start()
        daemons = {name: p.pid for name, p in cluster.procs.items()}
        assert set(daemons) == {"munged", "slurmctld", "slurmd-n1", "slurmd-n2"}
        # A job whose child escapes Slurm's process tracking (setsid + double fork: reparented away from
        # slurmstepd), the way a careless server launcher would.
        pidfile = tmp_path / "escaped.pid"
        job = cluster.submit(script(tmp_path / "escape.sh", f"setsid bash -c 'sleep 600 & echo $! > {pidfile}' "
                                                            "</dev/null >/dev/null 2>&1 &\nsleep 600\n"),
                             sbatch_args=[f"--output={tmp_path}/escape-%j.txt"])
        cluster.wait(job, timeout=60, states={"RUNNING"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not pidfile.exists():
            time.sleep(0.1)
        escaped = int(pidfile.read_text())
        assert escaped in cluster.job_pids()
        assert not set(cluster.job_pids()) & set(daemons.values())
    finally:
        cluster.stop()
    assert cluster.leftover_pids() == []
    assert all(gone(pid) for pid in [*daemons.values(), escaped])
