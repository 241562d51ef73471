"""The two Python pieces of ``infra/slurm/train.sbatch``: the rendezvous store, and one node's torchrun agent.

``store HOST PORT READY_FILE``: a c10d TCPStore server for torchrun's rendezvous, run by the batch script on the
first node of the allocation; it listens on HOST's address only (trainer.rendezvous.store_server: TCPStore's own
server would listen on every interface). torchrun's own way is to let the agent on the endpoint's host serve the
store, but then the store dies with that agent: when every rank stops together (a pre-emption checkpoint, exit 75),
the agent whose workers exit first tears it down, and the other agents, still polling it (``num_nodes_waiting``
every monitor interval) while their workers finish, crash with RendezvousConnectionError, SIGTERM their workers and
exit 1 (measured here: a worker exiting 3 s after its peer on the other node). A store that lives as long as the
batch script has no such race; the agents use it as clients (``--rdzv-conf=is_host=0``).

``agent TORCHRUN_ARGS...``: ``torchrun TORCHRUN_ARGS`` (in this process), started by srun once per node, under
trainer.rendezvous.TORCHRUN_ENV (no agent serves a store for its workers: rank 0 of the workers does, on its node's
address), with two changes that Slurm needs:

- Exit status: torchrun exits 1 whenever a worker fails, whatever the worker's code. Here, when every failed
  worker exited with 75 (trainer.train's PREEMPTED_EXIT: the stop checkpoint is complete), the agent exits 75 too,
  so srun's status (the highest of its tasks') tells the batch script to requeue.
- SIGUSR1 (the pre-emption warning) is ignored by the agent. Slurm delivers a step's signals to every process of
  the step (proctrack/cgroup and proctrack/linuxproc signal the whole process tree), so the workers get it
  directly and checkpoint. Were USR1 one of torchrun's ``--signals-to-handle``, the agent would treat it as its
  death signal: forward it, wait, and exit 1 without the workers' codes; left at the default action, USR1 would
  kill the agent and Slurm would then kill its workers mid-checkpoint. SIG_IGN is inherited by the workers until
  trainer.train installs its handler, so a USR1 in their first seconds is lost, not fatal.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

# The repository root, for trainer.rendezvous (a few lines over torch) when the trainer is not installed in this
# Python: run as a script, this module's own folder is on sys.path, not the root.
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
PREEMPTED_EXIT = 75  # trainer.train.PREEMPTED_EXIT; not imported, to keep this launcher free of the trainer's imports


def serve_store(host: str, port: int, ready_file: str) -> int:
    from datetime import timedelta

    from trainer.rendezvous import store_server

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # `scancel --full --signal=USR1` must not stop the rendezvous
    store = store_server(host, port, timedelta(seconds=60))
    with open(ready_file, "w") as fh:
        fh.write(f"{socket.gethostname()}:{store.port}\n")
    print(f"torchrun_node: rendezvous store listening on {host}:{store.port} (pid {os.getpid()})", file=sys.stderr,
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the batch script stops it once srun has exited
    while True:
        time.sleep(3600)


def run_agent(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from trainer.rendezvous import TORCHRUN_ENV

    os.environ.update(TORCHRUN_ENV)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
    try:
        # torchrun's agent keeps its per-run folders here (by default in a torchelastic_* folder it never removes)
        with tempfile.TemporaryDirectory(prefix="trait-torchrun-") as log_dir:
            torchrun([f"--log-dir={log_dir}", *argv])
    except ChildFailedError as exc:
        codes = sorted({f.exitcode for f in exc.failures.values()})
        code = PREEMPTED_EXIT if codes == [PREEMPTED_EXIT] else 1
        print(f"torchrun_node: {node}: worker exit codes {codes}; exiting {code}", file=sys.stderr, flush=True)
        return code
    except SignalException as exc:
        # SIGTERM (scancel, the time limit, Slurm's own pre-emption): torchrun has forwarded it to the workers,
        # which checkpoint, and waited for them up to --shutdown-timeout.
        print(f"torchrun_node: {node}: stopped by {exc.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    print(f"torchrun_node: {node}: workers finished", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["store"] and len(argv) == 4:
        return serve_store(argv[1], int(argv[2]), argv[3])
    if argv[:1] == ["agent"]:
        return run_agent(argv[1:])
    print("usage: torchrun_node.py store HOST PORT READY_FILE | agent TORCHRUN_ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
