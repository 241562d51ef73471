"""A real Slurm cluster on localhost for tests: munged, slurmctld and N slurmd daemons ("virtual nodes" n1..nN).

Debian's ``slurm-wlm`` and ``munge`` (``infra/slurm/install_local_slurm.sh`` installs them when absent) run as root
with no systemd and no cgroups: ``proctrack/linuxproc`` tracks a job's processes by parent pid and
``task/none`` binds nothing. Every virtual node is its own ``slurmd -N nK`` on its own port. Config, state and
logs live under ``root``; the munge key and socket and slurmd's spool in a short private directory under /tmp
(removed at the end); so several clusters (parallel test sessions) never meet, and nothing under /etc or /run is
touched. Start: ~2 s.

Use it as a context manager or a pytest fixture::

    with slurm_cluster(tmp_path, nodes=2) as cluster:
        job = cluster.submit(script, "arg", sbatch_args=["--array=0-1"])
        tasks = cluster.wait(job, timeout=600)         # polls `scontrol show job` every 0.25 s
        assert all(t.ok for t in tasks), cluster.describe(job)

``wait`` polls ``scontrol`` itself because ``sbatch --wait`` polls at 2 s, 10 s, 42 s, ... Teardown cancels every
job, stops the daemons, and then SIGKILLs any process left that carries this cluster's marker in its environment
(the daemons hand it to slurmstepd, and jobs inherit it from ``submit``): no daemon and no job outlives the
cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO
from trait.net import free_port

INSTALL_SCRIPT = REPO / "infra" / "slurm" / "install_local_slurm.sh"
# munged, slurmctld and slurmd live in /usr/sbin, which a non-login shell's PATH may lack.
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = "TRAIT_SLURM_CLUSTER"  # environment variable naming the cluster root; see ``leftover_pids``
# States after which a job (or array task) does nothing more unless requeued (squeue(1), JOB STATE CODES).
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                             "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"})
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=SBIN_PATH)


def ensure_slurm_installed() -> None:
    """Install slurm-wlm and munge through apt when a daemon or client is missing (CI starts on a clean machine)."""
    if all(_which(t) for t in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel", "srun")):
        return
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{INSTALL_SCRIPT} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")


def parse_records(text: str) -> list[dict[str, str]]:
    """``scontrol -o show ...`` output -> one dict per line. Values may hold spaces (``Reason=Not responding``):
    a value runs up to the next `` Key=``."""
    records = []
    for line in text.splitlines():
        marks = list(_FIELD.finditer(line))
        if not marks:
            continue
        records.append({m.group(1): line[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(line)].strip()
                        for i, m in enumerate(marks)})
    return records


@dataclass(frozen=True)
class Job:
    """One job, or one task of an array (``job_id`` is then ``<array job>_<task>``), as scontrol reports it."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ... (scontrol's JobState)
    exit_code: str  # "status:signal" of the batch script, e.g. "0:0", "3:0", "0:15"
    reason: str
    nodes: str  # NodeList, e.g. "n1" ("(null)" while pending)
    restarts: int  # how often the job was requeued
    stdout: Path | None
    stderr: Path | None
    fields: dict[str, str] = field(repr=False)

    @classmethod
    def from_record(cls, r: dict[str, str]) -> Job:
        task = r.get("ArrayTaskId")
        job_id = f"{r['ArrayJobId']}_{task}" if task and r.get("ArrayJobId") else r["JobId"]
        return cls(job_id=job_id, state=r.get("JobState", "?"), exit_code=r.get("ExitCode", "?"),
                   reason=r.get("Reason", ""), nodes=r.get("NodeList", ""), restarts=int(r.get("Restarts", 0)),
                   stdout=Path(r["StdOut"]) if r.get("StdOut") else None,
                   stderr=Path(r["StdErr"]) if r.get("StdErr") else None, fields=r)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == "0:0"


class SlurmCluster:
    """munged + slurmctld + ``nodes`` slurmd on 127.0.0.1, one partition ``debug`` holding every node.

    ``cpus_per_node`` and ``memory_mb_per_node`` are what each virtual node declares (``config_overrides``:
    slurmd does not check them against the hardware, so 2 nodes x 2 CPUs on a 2-core machine is fine).
    ``cred_expire_s``: step credential lifetime, which is also the delay before a requeued job starts again.
    ``extra_conf``: more slurm.conf lines (later lines win)."""

    def __init__(self, root: str | Path, nodes: int = 2, cpus_per_node: int = 2, memory_mb_per_node: int = 8000,
                 cred_expire_s: int = 15, extra_conf: tuple[str, ...] = ()):
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.root = Path(root).resolve()
        self.node_names = [f"n{i}" for i in range(1, nodes + 1)]
        self.cpus_per_node, self.memory_mb_per_node = cpus_per_node, memory_mb_per_node
        self.cred_expire_s = cred_expire_s
        self.extra_conf = tuple(extra_conf)
        self.conf_path = self.root / "etc" / "slurm.conf"
        self._short_dir: Path | None = None
        self.sockets_root = self.root  # where the munge socket and slurmd's spool go; see start()
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf_path), MARKER: str(self.root),
                    "PATH": f"{os.environ.get('PATH', '')}:{SBIN_PATH}"}
        for name in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if name != "SLURM_CONF":  # a test run inside a Slurm job must not leak that job's settings
                del self.env[name]

    @property
    def munge_socket(self) -> Path:
        return self.sockets_root / "munge" / "munge.socket"

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        ensure_slurm_installed()
        # The munge socket and slurmd's spool (which holds a socket per job step) go to a short directory of
        # their own: munged insists that every directory above its socket is executable by all (pytest's
        # tmp_path is 0700), and a Unix socket path holds at most 107 bytes (a tmp_path named after a long test,
        # plus <spool>/<node>/<node>_<job>.<step>, may not fit).
        if self._short_dir is None:
            self._short_dir = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
            self._short_dir.chmod(0o755)
            self.sockets_root = self._short_dir
        for sub in ("etc", "state", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("spool", "munge"):
            (self.sockets_root / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge(timeout)
            self.conf_path.write_text(self._conf())
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf_path)])
            for name in self.node_names:
                self._spawn(f"slurmd-{name}", [_which("slurmd"), "-D", "-N", name, "-f", str(self.conf_path)])
            self._wait_nodes_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self, timeout: float) -> None:
        munge = self.sockets_root / "munge"
        munge.chmod(0o755)  # munged refuses a socket directory that clients cannot traverse, or others can write
        key = munge / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))  # munge keys are 32..1024 random bytes
            key.chmod(0o600)  # munged refuses a key others can read
        self._spawn("munged", [_which("munged"), "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--log-file={self.root / 'log' / 'munged.log'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--seed-file={munge / 'munged.seed'}", "--num-threads=2"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("munged")
            if self.munge_socket.exists():
                probe = subprocess.run(f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}",
                                       shell=True, capture_output=True, env=self.env)
                if probe.returncode == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"munged did not answer in {timeout:.0f} s:\n{self.log_tail()}")

    def _conf(self) -> str:
        ports = {name: free_port() for name in self.node_names}
        lines = [
            "ClusterName=trait-test",
            # "localhost" is accepted as this machine's name whatever the hostname is.
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={ports[self.node_names[0]]}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # The socket: daemons, clients and slurmstepd all find munged through it. cred_expire: a job step's
            # credential lifetime, and also how long a requeued job waits before it may start again (default 120 s).
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire_s}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.sockets_root / 'spool' / '%n'}",  # %n: the node name, one spool per virtual node
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups and no systemd here: track processes by parent pid, bind nothing.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            # Jobs share a node by CPUs, so a 1-CPU job leaves room for another on a 2-CPU node.
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            # Scheduling passes every 2 s (defaults: 60 s main, 30 s backfill): a requeued job, or one whose
            # begin time passes, starts within seconds instead of waiting for the next periodic pass.
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "SlurmdParameters=config_overrides",  # the nodes' CPUs/RealMemory below, not the hardware's
            "ReturnToService=2",  # a node that registers is usable at once
            "MinJobAge=3600",  # keep finished jobs visible to `scontrol show job` for an hour (default 300 s)
            "KillWait=5",  # SIGTERM -> SIGKILL after 5 s on scancel or time limit (default 30 s)
            "JobRequeue=1",
            "PropagateResourceLimits=NONE",
            "InactiveLimit=0",
            "SlurmdTimeout=300",
        ]
        for name in self.node_names:
            lines.append(f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={ports[name]} "
                         f"CPUs={self.cpus_per_node} RealMemory={self.memory_mb_per_node} State=UNKNOWN")
        first, last = self.node_names[0][1:], self.node_names[-1][1:]
        nodes = f"n[{first}-{last}]" if len(self.node_names) > 1 else self.node_names[0]
        lines.append(f"PartitionName=debug Nodes={nodes} Default=YES MaxTime=INFINITE State=UP")
        return "\n".join([*lines, *self.extra_conf]) + "\n"

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - lives as long as the daemon
        # Own session: a Ctrl-C of pytest does not reach the daemons before stop() does, in order.
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, cwd=self.root, start_new_session=True)
        log.close()

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} while starting:\n{self.log_tail()}")

    def _wait_nodes_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            for name in self.procs:
                self._check_alive(name)
            with contextlib.suppress(subprocess.CalledProcessError):
                states = self.node_states()
                if len(states) == len(self.node_names) and all(s.startswith("IDLE") for s in states.values()):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"nodes not idle after {timeout:.0f} s (states {states}):\n{self.log_tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL after ``grace_s``), then
        SIGKILL whatever still carries this cluster's marker. Idempotent."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.run("scancel", "--user=root", timeout=10)
                deadline = time.monotonic() + 15  # KillWait=5 s, plus the epilog and the report to slurmctld
                while time.monotonic() < deadline and self.run("squeue", "-h", "-o", "%i", timeout=10).stdout.strip():
                    time.sleep(0.2)
        order = [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in [n for n in order if n in self.procs]:
            proc = self.procs[name]
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait_s)
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.leftover_pids():
            time.sleep(0.1)
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir, self.sockets_root = None, self.root

    def leftover_pids(self) -> list[int]:
        """Processes (not this one) whose environment carries this cluster's marker: the daemons, slurmstepd
        and every job process started through ``submit``. Empty after ``stop``."""
        marker = f"{MARKER}={self.root}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    status = (entry / "status").read_text()
                    if "\nState:\tZ" not in status:  # a zombie has already ended; only its parent can reap it
                        found.append(int(entry.name))
            except OSError:  # gone meanwhile, or a kernel thread
                continue
        return found

    def job_pids(self) -> list[int]:
        """``leftover_pids`` less the daemons themselves and slurmctld's own helper process (slurmscriptd, which
        slurmctld forks at start): what jobs left running. Empty once every job's processes have ended."""
        daemons = {p.pid for p in self.procs.values() if p.poll() is None}
        ctld = self.procs.get("slurmctld")
        return [pid for pid in self.leftover_pids()
                if pid not in daemons and not (ctld is not None and _parent(pid) == ctld.pid)]

    # --- commands ----------------------------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, scontrol, srun, ...) against this cluster."""
        return subprocess.run(list(cmd), env=kwargs.pop("env", self.env), capture_output=True, text=True,
                              check=check, timeout=timeout, **kwargs)

    def submit(self, script: str | Path, *args: str, sbatch_args: tuple[str, ...] | list[str] = (),
               cwd: str | Path | None = None, env: dict[str, str] | None = None) -> str:
        """``sbatch`` ``script`` with ``args``; returns the job id (for an array, the array's job id).

        The job inherits this process's environment plus ``env`` (sbatch's default --export=ALL), which carries
        the cluster marker, so teardown finds its processes even if they escape Slurm's process tracking."""
        proc = self.run("sbatch", "--parsable", *sbatch_args, str(script), *args, check=False,
                        env={**self.env, **(env or {})}, cwd=cwd)
        if proc.returncode:
            raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[Job]:
        """The job, or every task of an array (a not yet split pending remainder appears as one record)."""
        proc = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        if proc.returncode:
            raise RuntimeError(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
        return [Job.from_record(r) for r in parse_records(proc.stdout)]

    def job(self, job_id: str) -> Job:
        """One job (or one array task, ``<array job>_<task>``)."""
        found = self.jobs(job_id)
        if len(found) != 1:
            raise ValueError(f"job {job_id} has {len(found)} records; use jobs() for an array")
        return found[0]

    def state(self, job_id: str) -> str:
        return self.job(job_id).state

    def output_path(self, job_id: str) -> Path:
        """Where the job's (or array task's) standard output goes, with %j/%A/%a expanded by Slurm."""
        path = self.job(job_id).stdout
        if path is None:
            raise ValueError(f"job {job_id} reports no StdOut")
        return path

    def wait(self, job_id: str, timeout: float = 600.0, poll_s: float = 0.25,
             states: frozenset[str] | set[str] = TERMINAL_STATES) -> list[Job]:
        """Poll until every record of ``job_id`` is in one of ``states`` (default: finished); returns them.

        Raises TimeoutError with the records and the daemons' log tails when ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.jobs(job_id)
            if found and all(j.state in states for j in found):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout:.0f} s: "
                                   f"{[(j.job_id, j.state, j.reason) for j in found]}\n{self.log_tail()}")
            time.sleep(poll_s)

    def cancel(self, job_id: str, signal_name: str | None = None, batch_only: bool = False) -> None:
        """scancel; with ``signal_name`` (e.g. "TERM", "USR1") only send that signal, to every step, or with
        ``batch_only`` to the batch shell alone (what ``--signal=B:...`` does before a time limit)."""
        args = ["scancel"]
        if signal_name:
            args.append(f"--signal={signal_name}")
        if batch_only:
            args.append("--batch")
        self.run(*args, str(job_id))

    def requeue(self, job_id: str, hold: bool = False) -> None:
        """Put a running or finished batch job back in the queue (``scontrol requeue``; ``hold``: requeuehold)."""
        self.run("scontrol", "requeuehold" if hold else "requeue", str(job_id))

    def release(self, job_id: str) -> None:
        self.run("scontrol", "release", str(job_id))

    def node_states(self) -> dict[str, str]:
        """Node name -> state (IDLE, ALLOCATED, MIXED, DOWN*, ...)."""
        out = self.run("scontrol", "-o", "show", "node").stdout
        return {r["NodeName"]: r.get("State", "?") for r in parse_records(out) if "NodeName" in r}

    def describe(self, job_id: str, lines: int = 40) -> str:
        """The records of a job and the tail of each record's output file, for assertion messages."""
        parts = []
        for j in self.jobs(job_id):
            parts.append(f"{j.job_id}: {j.state} exit {j.exit_code} reason {j.reason} nodes {j.nodes}")
            for path in {j.stdout, j.stderr} - {None}:
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # fields after "(comm)": state, ppid, ...


@contextlib.contextmanager
def slurm_cluster(root: str | Path, nodes: int = 2, **kwargs) -> Iterator[SlurmCluster]:
    """A started ``SlurmCluster`` under ``root`` (e.g. a pytest ``tmp_path``), stopped on exit however it ends."""
    cluster = SlurmCluster(root, nodes=nodes, **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
