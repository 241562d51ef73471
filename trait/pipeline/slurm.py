"""The Slurm executor: each stage that must run becomes an sbatch job, chained on its inputs' jobs with
``--dependency=afterok``. Slurm schedules; the pipeline only declares and submits.

- A stage's job runs ``trait pipeline run CONFIG --only STAGE`` on its node (the same code as the local
  executor, which writes the stage's record); a Spark stage goes through ``spark-submit`` when
  ``slurm.spark_submit`` is set, else it is a pyspark client of ``spark_master``.
- Synth with ``synth_chunks`` > 1 is the existing job array (``infra/slurm/synth_array.sbatch``), one chunk a
  task, followed by the synth stage's job, which joins the chunks.
- Training with ``training.nodes`` > 1 is ``infra/slurm/train.sbatch`` on that many nodes (requeue-safe), followed
  by the stage's job, which finds every stage finished and records it.
- A last job writes the ablation table and the run's page once every other job succeeded.
Job scripts and logs live in ``<run>/_pipeline/slurm``; ``jobs.json`` lists the job ids.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from trait import UserError
from trait.config import to_dict

from .graph import REPO
from .run import PIPELINE_DIR, check_run_dir, load_run, plan

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE"}


class Submitter:
    def __init__(self, config, run_dir: Path):
        self.config, self.run_dir = config, run_dir
        self.dir = run_dir / PIPELINE_DIR / "slurm"
        self.dir.mkdir(parents=True, exist_ok=True)
        # The jobs read the config as resolved here (templates filled, overrides applied): what they run is what
        # was planned, whatever changes in the environment of the nodes.
        self.config_path = self.write_yaml("pipeline", {**to_dict(config), "run_dir": str(run_dir)})
        self.python = config.slurm.python or sys.executable

    def trait_command(self, *args: str) -> list[str]:
        return [self.python, "-m", "trait.cli", *args]

    def sbatch(self, name: str, command: list[str] | None, deps: list[str], extra: list[str] = (),
               script: str | None = None, args: list[str] = ()) -> str:
        """Submit ``command`` as a job script written for it (or an existing ``script`` with ``args``)."""
        if script is None:
            script = str(self.dir / f"{name}.sbatch")
            # spark-submit runs its script with $PYSPARK_PYTHON (else the python3 on PATH): the pipeline's.
            python = shlex.quote(self.python)
            Path(script).write_text("#!/usr/bin/env bash\nset -euo pipefail\n"
                                    f"export PYSPARK_PYTHON={python} PYSPARK_DRIVER_PYTHON={python}\n"
                                    f"cd {shlex.quote(str(REPO))}\n" + "exec " + shlex.join(command) + "\n")
        cmd = ["sbatch", "--parsable", f"--job-name=trait-{name}", f"--output={self.dir}/{name}-%j.out",
               f"--chdir={REPO}", *self.config.slurm.sbatch_args, *extra]
        if deps:
            cmd.append("--dependency=afterok:" + ":".join(deps))
        try:
            out = subprocess.run([*cmd, script, *args], capture_output=True, text=True, check=True)
        except FileNotFoundError:
            raise UserError("--executor slurm: no sbatch on PATH; run on a Slurm login node") from None
        except subprocess.CalledProcessError as exc:
            raise UserError(f"sbatch refused stage {name}: {exc.stderr.strip() or exc.stdout.strip()}") from None
        return out.stdout.strip().split(";")[0]

    def write_yaml(self, name: str, body: dict) -> str:
        path = self.run_dir / PIPELINE_DIR / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return str(path)


def submit(config, run_dir: str | None = None) -> dict:
    """Submit every stage that must run; returns ``{stage: job id}`` (and writes it to jobs.json)."""
    stages, ctx = load_run(config, run_dir)
    check_run_dir(ctx.run_dir)
    s = Submitter(config, ctx.run_dir)
    jobs: dict[str, str] = {}
    for d in plan(stages, ctx):
        if not d.run:
            continue
        stage = d.stage
        deps = [jobs[n] for n in stage.inputs if n in jobs]
        only = s.trait_command("pipeline", "run", "--config", s.config_path, "--only", stage.name)
        if stage.spark and config.slurm.spark_submit:
            master = ["--master", config.spark_master] if config.spark_master else []
            only = [config.slurm.spark_submit, *master, str(REPO / "infra" / "spark" / "entry.py"), *only[3:]]
        extra: list[str] = []
        if stage.kind == "synth" and config.synth_chunks > 1:
            n = config.synth_chunks
            body = stage.config["job"]
            array = s.sbatch(f"{stage.name}-array", None, deps, [f"--array=0-{n - 1}", *config.slurm.synth_args],
                             script=str(REPO / "infra" / "slurm" / "synth_array.sbatch"),
                             args=[s.write_yaml("synth", body), stage.outputs["chunks"], str(n)])
            deps = [array]
        elif stage.kind == "synth":
            extra = list(config.slurm.synth_args)
        elif stage.kind in ("train", "base_model"):
            extra = list(config.slurm.train_args)
            if config.training.nodes > 1 and stage.kind == "train":
                trained = s.sbatch(f"{stage.name}-nodes", None, deps, [f"--nodes={config.training.nodes}", *extra],
                                   script=str(REPO / "infra" / "slurm" / "train.sbatch"),
                                   args=[s.write_yaml(stage.name, stage.config)])
                deps, extra = [trained], []
        jobs[stage.name] = s.sbatch(stage.name, only, deps, extra)
    if jobs:
        final = s.trait_command("pipeline", "run", "--config", s.config_path, "--only", "ablation")
        jobs["ablation"] = s.sbatch("ablation", final, list(jobs.values()))
    (s.dir / "jobs.json").write_text(json.dumps(jobs, indent=1))
    return jobs


# Reasons a pending job can never start for: the job, not the queue, is wrong (e.g. more CPUs than a node has).
NEVER_STARTS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
                "DependencyNeverSatisfied"}


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job (``scontrol show job``); a pending job that can never start is NEVER_STARTS."""
    states = {}
    for job in job_ids:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
        fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
        state = fields.get("JobState", "UNKNOWN")  # an array's first task stands for it
        states[job] = "NEVER_STARTS" if state == "PENDING" and fields.get("Reason") in NEVER_STARTS else state
    return states


def wait(jobs: dict[str, str], timeout_s: float, poll_s: float = 2.0) -> dict[str, str]:
    """Poll until every job ended (or one failed and the rest can never start); stage -> state."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = dict(zip(jobs, job_states(list(jobs.values())).values()))
        failed = [n for n, st in states.items() if st != "COMPLETED" and (st in TERMINAL or st == "NEVER_STARTS")]
        stuck = failed and all(st in TERMINAL or st in ("PENDING", "NEVER_STARTS") for st in states.values())
        if all(st in TERMINAL for st in states.values()) or stuck:
            if stuck:
                subprocess.run(["scancel", *[jobs[n] for n, st in states.items() if st not in TERMINAL]])
            return states
        if time.monotonic() > deadline:
            raise UserError(f"--wait: jobs still running after {timeout_s:.0f} s: "
                            f"{', '.join(f'{n}={st}' for n, st in states.items() if st not in TERMINAL)}")
        time.sleep(poll_s)
