"""Plan and run the pipeline's stages: skip what is finished with the same fingerprint, run the rest in order.

Each stage leaves a record in ``<run>/_pipeline/state/<stage>.json``: its fingerprint, status (running, done,
failed), times and a summary. A record marks the stage's outputs as the pipeline's own: only outputs with a record
are ever cleared (when the fingerprint changed, or a stage that cannot continue was interrupted); anything else in
the way is refused by the job's own output check. Interrupted resumable stages (Spark jobs redo their staging,
synth keeps its committed batches, the trainer its checkpoints) continue in place.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from trait import UserError
from trait.config import to_dict

from .config import PipelineConfig
from .graph import Stage, build_stages, code_version

log = logging.getLogger(__name__)
PIPELINE_DIR = "_pipeline"


@dataclass
class Decision:
    stage: Stage
    run: bool
    reason: str


class Context:
    """What a stage runner needs besides its stage: the config, the run's folders and one Spark session."""

    def __init__(self, config: PipelineConfig, run_dir: Path):
        self.config, self.run_dir = config, run_dir
        self.state_dir = run_dir / PIPELINE_DIR / "state"
        self._spark = None

    def spark(self, scheduler_only: bool = False):
        if self._spark is None:
            from spark_jobs.session import get_spark

            self._spark = get_spark("trait-pipeline", self.config.spark_master, scheduler_only=scheduler_only)
        return self._spark

    def record(self, stage: Stage) -> dict | None:
        path = self.state_dir / f"{stage.name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def write_record(self, stage: Stage, **fields) -> dict:
        record = {"stage": stage.name, "kind": stage.kind, "fingerprint": stage.fingerprint,
                  "code": code_version(stage.kind), "config": stage.config, "inputs": stage.inputs,
                  "input_fingerprints": stage.input_fingerprints, "outputs": stage.outputs, **fields}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f"{stage.name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=str))
        tmp.replace(self.state_dir / f"{stage.name}.json")
        return record

    def close(self) -> None:
        if self._spark is not None:
            self._spark.stop()
            self._spark = None


def check_run_dir(run_dir: Path) -> None:
    """A run folder is new, empty, or one this pipeline made (it holds ``_pipeline``); anything else is refused."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run_dir {run_dir} is a file; choose a folder for the run")
    if run_dir.is_dir() and not (run_dir / PIPELINE_DIR).is_dir():
        found = sorted(p.name for p in run_dir.iterdir())
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise UserError(f"run_dir {run_dir} holds files that are not a TRAIT pipeline run ({shown}); choose "
                            "an empty or new folder")


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def plan(stages: list[Stage], ctx: Context) -> list[Decision]:
    """Run or skip for every stage, and why."""
    decisions = []
    for stage in stages:
        record = ctx.record(stage)
        if record is None:
            d = Decision(stage, True, "not run yet")
        elif record.get("fingerprint") == stage.fingerprint and record.get("status") == "done":
            missing = [p for p in stage.outputs.values() if not Path(p).exists()]
            d = Decision(stage, bool(missing), f"output missing: {missing[0]}" if missing else
                         f"finished {record.get('finished_at', '')} with the same fingerprint")
        elif record.get("fingerprint") == stage.fingerprint:
            d = Decision(stage, True, f"interrupted ({record.get('status')}); "
                         + ("continues" if _resumable(stage) else "starts again"))
        else:
            before = record.get("input_fingerprints", {})
            upstream = [n for n in stage.inputs if before.get(n) != stage.input_fingerprints[n]]
            changed = _changed(record.get("config", {}), stage.config)
            if changed:
                why = "config changed: " + ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
            elif upstream:
                why = "input changed: " + ", ".join(upstream)
            elif record.get("code") != code_version(stage.kind):
                why = "code changed"
            else:
                why = "input files changed"
            d = Decision(stage, True, f"fingerprint changed ({why})")
        decisions.append(d)
    return decisions


def _resumable(stage: Stage) -> bool:
    from .steps import RESUMABLE

    return stage.kind in RESUMABLE


def _clear(stage: Stage, run_dir: Path) -> None:
    """Remove a stage's earlier outputs: only called for stages with a record (the pipeline's own outputs)."""
    for path in stage.outputs.values():
        p = Path(path)
        if run_dir not in p.parents:
            raise UserError(f"stage {stage.name}: refusing to clear {p}, outside the run folder {run_dir}")
        for target in (p, Path(f"{p}._staging"), Path(f"{p}._chunks")):
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def load_run(config: PipelineConfig, run_dir: str | None = None) -> tuple[list[Stage], Context]:
    run = Path(run_dir or config.run_dir).resolve()
    return build_stages(config, run), Context(config, run)


def run_stages(config: PipelineConfig, run_dir: str | None = None, only: list[str] | None = None) -> dict:
    """The local executor: every stage that must run, in order, in this process; then the ablation table and the
    run's page. ``only``: run just these stages, as a Slurm job does (each one's inputs must be finished, or be
    among them)."""
    from .report import write_outputs

    stages, ctx = load_run(config, run_dir)
    check_run_dir(ctx.run_dir)
    names = {s.name for s in stages}
    for name in only or ():
        if name not in names and name != "ablation":
            raise UserError(f"--only {name}: no such stage; stages: {', '.join(sorted(names))}")
    (ctx.run_dir / PIPELINE_DIR).mkdir(parents=True, exist_ok=True)
    (ctx.run_dir / PIPELINE_DIR / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    decisions = plan(stages, ctx)
    started = time.time()
    chosen = [d for d in decisions if only is None or d.stage.name in only]
    todo = [d for d in chosen if d.run]
    for n, d in enumerate(chosen):
        if only is not None:  # an input runs earlier in this call, or has finished
            _check_inputs_done(d.stage, ctx, {e.stage.name for e in chosen[:n] if e.run})
        if not d.run:
            log.info("pipeline: %s: skip (%s)", d.stage.name, d.reason)
    try:
        for n, d in enumerate(todo):
            if not any(t.stage.spark for t in todo[n:]):
                ctx.close()  # no Spark stage left: the JVM's memory goes back to training and evaluation
            run_one(d, ctx)
    finally:
        ctx.close()
        if only is None or "ablation" in only:
            write_outputs(ctx, stages)
    return {"run_dir": str(ctx.run_dir), "seconds": round(time.time() - started, 1),
            "ran": [d.stage.name for d in decisions if d.run and (only is None or d.stage.name in only)]}


def _check_inputs_done(stage: Stage, ctx: Context, running_before: set[str]) -> None:
    by_name = {s.name: s for s in build_stages(ctx.config, ctx.run_dir)}
    for name in set(stage.inputs) - running_before:
        record = ctx.record(by_name[name])
        if not record or record.get("status") != "done" or record.get("fingerprint") != by_name[name].fingerprint:
            raise UserError(f"stage {stage.name} needs {name}, which has not finished with the current config; "
                            "run the pipeline (or that stage) first")


def run_one(d: Decision, ctx: Context) -> dict:
    from .steps import RUNNERS

    stage = d.stage
    record = ctx.record(stage)
    if record is not None and (record.get("fingerprint") != stage.fingerprint or not _resumable(stage)):
        _clear(stage, ctx.run_dir)
    log.info("pipeline: %s: run (%s)", stage.name, d.reason)
    started = time.time()
    ctx.write_record(stage, status="running", reason=d.reason, started_at=_now())
    try:
        summary = RUNNERS[stage.kind](ctx, stage)
    except BaseException as exc:
        ctx.write_record(stage, status="failed", reason=d.reason, started_at=_now(started),
                         wall_s=round(time.time() - started, 1), error=f"{type(exc).__name__}: {exc}")
        raise
    log.info("pipeline: %s: done in %.1f s", stage.name, time.time() - started)
    return ctx.write_record(stage, status="done", reason=d.reason, started_at=_now(started), finished_at=_now(),
                            wall_s=round(time.time() - started, 1), summary=summary)


def _now(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
