"""How ``trait train`` runs a TrainConfig: in this process, or as N local processes under torchrun.

``trait train --nproc N`` (N > 1) writes the config as resolved by the command line to a temporary file and runs
torchrun with ``python -m trainer.train --config FILE --resume R`` as every worker's command line: the same
``trait train`` parser (``python -m trainer.train`` is ``trait train``). Everything such a run listens on is on
127.0.0.1. One process, or one worker, runs ``trainer.train.run_training``. Across the nodes of a Slurm allocation,
``infra/slurm/train.sbatch`` starts one torchrun per node instead, with the same worker command line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from trainer import checkpoint
from trainer.config import TrainConfig, check_inputs
from trainer.engine import accumulation_steps
from trait.config import ConfigError, load, to_dict


def run_train(config: TrainConfig, nproc: int = 1, resume: str = "auto") -> dict | None:
    """``trait train``: train every stage of ``config`` with ``nproc`` local processes. Returns the run summary
    (``{"stages": ..., "counts": ...}``), or None on a worker of rank > 0 (rank 0 prints it). A run stopped by
    SIGTERM/SIGUSR1 after its checkpoint exits with ``PREEMPTED_EXIT`` (75); rerunning resumes it."""
    from trainer.train import PREEMPTED_EXIT, Preempted, run_training

    if nproc > 1:
        with tempfile.TemporaryDirectory(prefix="trait-train-") as tmp:
            resolved = Path(tmp, "train_config.yaml")  # the workers read the config as resolved here (JSON is YAML)
            resolved.write_text(json.dumps(to_dict(config)))
            code = launch_local(str(resolved), nproc, resume)
        if code:
            print(f"trait: training stopped (torchrun exit {code}); rerun with --resume auto to continue from the "
                  "newest complete checkpoint", file=sys.stderr)
            sys.exit(code)
        return json.loads(Path(config.output_dir, "summary.json").read_text(encoding="utf-8"))
    rank = _log_by_rank()
    try:
        result = run_training(config, resume)
    except Preempted as exc:
        print(f"trait: {exc}; rerun to resume", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    return result if rank == 0 else None


def _log_by_rank() -> int:
    """This process's rank (0 outside torchrun and srun). In a distributed run only rank 0 logs below WARNING, and
    every line names its rank."""
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))
    if rank is None:
        return 0
    root = logging.getLogger()
    if int(rank) != 0:
        root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
                                               datefmt="%H:%M:%S"))
    return int(rank)


def torchrun_command(config_path: str, nproc: int, resume: str, rdzv_port: int, log_dir: str) -> list[str]:
    """torchrun for ``nproc`` local processes with ``trainer.train`` as the entry point, meeting at the rendezvous
    store on 127.0.0.1:``rdzv_port`` as a client (``launch_local`` serves it: torchrun's own would listen on every
    interface); run it with ``trainer.rendezvous.TORCHRUN_ENV``. SIGUSR1 is forwarded like SIGTERM. torchrun's
    agent keeps its per-run folders in ``log_dir`` (without one it makes a ``torchelastic_*`` folder in the
    temporary folder, and never removes it)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
            f"--log-dir={log_dir}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{rdzv_port}", f"--rdzv-id={uuid.uuid4()}",
            "--rdzv-conf=is_host=0", "--local-addr=127.0.0.1",  # the workers' MASTER_ADDR
            "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
            # after forwarding a signal torchrun waits this long before SIGKILL: time for the stop checkpoint
            # (a 1B model's ZeRO-1 checkpoint is ~13 GB: tens of seconds to write and hash)
            "--shutdown-timeout=300",
            "-m", "trainer.train", "--config", str(config_path), "--resume", resume]


def launch_local(config_path: str, nproc: int, resume: str) -> int:
    """Run torchrun with ``nproc`` processes and wait; SIGTERM/SIGUSR1 sent to this process reach the workers
    (through torchrun). Returns torchrun's exit code. Everything the run listens on is on 127.0.0.1: the
    rendezvous store (served here, on a free port), the workers' process group store and their collectives."""
    from trainer.rendezvous import TORCHRUN_ENV, store_server

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give the number of local processes, >= 1")
    config = load(TrainConfig, config_path)
    check_inputs(config)  # a config or input error is reported here, once, not by N workers
    checkpoint.check_output_dir(config)
    for stage in config.stages:
        accumulation_steps(stage, nproc)  # global_batch_size divisible by micro_batch_size x nproc
    store = store_server("127.0.0.1", 0, timedelta(seconds=60))  # held open while torchrun runs
    with tempfile.TemporaryDirectory(prefix="trait-torchrun-") as log_dir:
        proc = subprocess.Popen(torchrun_command(config_path, nproc, resume, store.port, log_dir),
                                env={**os.environ, **TORCHRUN_ENV})
        forward = {sig: signal.signal(sig, lambda s, f: proc.send_signal(s))
                   for sig in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            return proc.wait()
        finally:
            for sig, handler in forward.items():
                signal.signal(sig, handler)
