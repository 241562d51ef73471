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
