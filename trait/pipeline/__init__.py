"""``trait pipeline``: the TRAIT experiment as one resumable job.

One config (``PipelineConfig``, composed of the stage configs that already exist) takes a corpus, a seed and
downstream tasks to trained arms and the paper's ablation table. The pipeline declares stages and fingerprints
them (``graph``); the local executor runs what must run in order (``run``), the Slurm executor submits each stage
as a job chained on its inputs (``slurm``); Spark and Slurm schedule. Outputs: ``ablation.{json,csv,md}`` and
``index.html`` in the run folder (``report``).
"""

from __future__ import annotations


def plan_text(config, run_dir: str | None = None) -> str:
    """The stage graph with run or skip for each stage and the reason, as printed by ``trait pipeline plan``."""
    from .run import load_run, plan

    stages, ctx = load_run(config, run_dir)
    decisions = plan(stages, ctx)
    width = max(len(d.stage.name) for d in decisions)
    lines = [f"run folder: {ctx.run_dir}"]
    for d in decisions:
        inputs = f" <- {', '.join(d.stage.inputs)}" if d.stage.inputs else ""
        lines.append(f"{'run ' if d.run else 'skip'}  {d.stage.name:<{width}}  {d.reason}{inputs}")
    n = sum(d.run for d in decisions)
    lines.append(f"{n} of {len(decisions)} stages to run")
    return "\n".join(lines)


def run_command(config, args) -> None:
    """``trait pipeline run``: the local executor, or submission to Slurm (``--wait``: until the jobs end)."""
    from pathlib import Path

    from trait import UserError

    if args.executor == "slurm":
        from .slurm import submit, wait

        if args.only:
            raise UserError("--only runs stages here; with --executor slurm every stage that must run is submitted")
        jobs = submit(config)
        for stage, job in jobs.items():
            print(f"submitted {stage}: job {job}")
        if not jobs:
            print("every stage is finished; nothing to submit")
        if args.wait and jobs:
            states = wait(jobs, args.wait_timeout)
            failed = {n: st for n, st in states.items() if st != "COMPLETED"}
            if failed:
                logs = Path(config.run_dir).resolve() / "_pipeline" / "slurm"
                raise UserError(f"Slurm jobs did not complete: {', '.join(f'{n} {st}' for n, st in failed.items())}"
                                f"; logs in {logs}")
    else:
        from .run import run_stages

        result = run_stages(config, only=args.only)
        print(f"pipeline: {len(result['ran'])} stage(s) ran in {result['seconds']:.0f} s; {result['run_dir']}")
    ablation = Path(config.run_dir).resolve() / "ablation.md"
    if ablation.is_file() and (args.executor == "local" or args.wait):
        print(ablation.read_text(), end="")
        print(f"run page: {ablation.parent / 'index.html'}")


def plan_command(config, args) -> None:
    """``trait pipeline plan``."""
    print(plan_text(config))


def add_run_flags(p) -> None:
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: the stages in order in this process (default); slurm: one sbatch job a stage, "
                   "chained on its inputs")
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (their inputs must be "
                   "finished; 'ablation' writes the table and page): what a Slurm job runs")
    p.add_argument("--wait", action="store_true", help="slurm: wait until every job ended; exit 2 if one failed")
    p.add_argument("--wait-timeout", type=float, default=86400.0, help="slurm --wait: give up after this many "
                   "seconds (default one day)")
