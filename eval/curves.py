"""Training curves (the TRAIT paper's Figure 4): every export of a trainer run, both stages in order, evaluated on
chosen tasks, with the score and the training loss against tokens seen and the stage boundary marked.

The points are the exports the trainer wrote (``<run>/<stage>/exports/step_<NNNNNNNN>`` every ``export_every``
steps, then ``<run>/<stage>/final``); each export's ``trait_export.json`` says its stage, step and tokens seen in
the stage and across stages. The loss comes from each stage's ``metrics.jsonl`` (``event: "train"`` lines), put on
the same token axis by the stage's offset (the tokens of the stages before it).

Each export's result is cached inside it, ``<export>/evals/<key>.json``, key = sha1 of (tasks, limit, backend, eval
options, the export's file hashes): a rerun evaluates only new exports, and an export the trainer replaces takes its
cache along.
Writes ``curves.json`` (points, loss, boundaries), ``curves.csv`` (one row per export, task and metric) and
``curves.png`` to the output directory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from trainer.model import step_exports, verified_export
from trait.config import ConfigError
from trait.outputs import check_output

log = logging.getLogger(__name__)

CACHE_DIR = "evals"
CURVES_FILES = ("curves.json", "curves.csv", "curves.png")  # what the output folder holds
# evaluate(model_dir, tasks, backend=..., limit=..., output=...) -> {"tasks": {task: {metric: {value, ci, n}}}}
Evaluate = Callable[..., dict]


def run_exports(run_dir: str | Path) -> list[dict]:
    """The run's exports in training order (stage by stage, step by step, each stage's ``final`` last), each as
    ``{stage, stage_index, step, tokens, tokens_cumulative, model_dir, files}``; markers are verified."""
    run = Path(run_dir)
    config = run / "train_config.json"
    if not config.is_file():
        raise ConfigError(f"{run} is not a trainer run (no train_config.json); give the run's output_dir")
    points = []
    for stage in json.loads(config.read_text())["stages"]:
        stage_dir = run / stage["name"]
        dirs = [path for _, path in step_exports(stage_dir)]
        dirs += [stage_dir / "final"] if (stage_dir / "final").is_dir() else []
        for path in dirs:
            marker = verified_export(path)
            if "tokens_cumulative" not in marker:
                raise ConfigError(f"{path} was exported by an older trainer (its {path.name}/trait_export.json has "
                                  "no step or token counts); retrain the run to plot its curve")
            # what the export holds, as its marker's file table (sha256 of every file, sharded weights included)
            files = hashlib.sha1(json.dumps(marker["files"], sort_keys=True).encode()).hexdigest()[:16]
            points.append({**{k: marker[k] for k in ("stage", "stage_index", "step", "tokens", "tokens_cumulative")},
                           "model_dir": str(path), "files": files})
    if not points:
        raise ConfigError(f"{run} has no finished exports; train it (export_every N adds exports during a stage)")
    return points


def loss_curve(run_dir: str | Path, points: list[dict]) -> list[dict]:
    """``{stage, step, tokens_cumulative, loss}`` per logged step of every stage that has an export."""
    offsets = {p["stage"]: p["tokens_cumulative"] - p["tokens"] for p in points}
    losses = []
    for stage, offset in offsets.items():
        log_path = Path(run_dir) / stage / "metrics.jsonl"
        if not log_path.is_file():
            log.warning("no %s: stage %s has no loss curve", log_path, stage)
            continue
        for line in log_path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("event") == "train":
                losses.append({"stage": stage, "step": record["step"],
                               "tokens_cumulative": offset + record["tokens"], "loss": record["loss"]})
    return losses


def cache_key(point: dict, tasks: list[str], backend: str, limit: int | float | None, options: dict) -> str:
    settings = {"tasks": sorted(tasks), "backend": backend, "limit": limit, "files": point["files"],
                **({"options": options} if options else {})}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_points(points: list[dict], tasks: list[str], backend: str, limit: int | float | None,
                    evaluate: Evaluate, options: dict) -> int:
    """Fill ``point["scores"]`` ({task: {metric: {value, ci, n}}}) from the cache or ``evaluate``; returns how many
    exports were evaluated now."""
    fresh = 0
    for point in points:
        key = cache_key(point, tasks, backend, limit, options)
        cached = Path(point["model_dir"]) / CACHE_DIR / f"{key}.json"
        if cached.is_file():
            point["scores"] = json.loads(cached.read_text())["tasks"]
            continue
        log.info("evaluating %s (%s step %d) on %s", point["model_dir"], point["stage"], point["step"],
                 ", ".join(tasks))
        result = evaluate(point["model_dir"], tasks, backend=backend, limit=limit,
                          output=str(cached.with_suffix("")), **options)
        point["scores"] = result["tasks"]
        tmp = cached.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"tasks": result["tasks"], "settings": {"tasks": tasks, "backend": backend,
                                                                          "limit": limit, **options}}, indent=1))
        tmp.replace(cached)
        fresh += 1
    return fresh


def boundaries(points: list[dict]) -> list[dict]:
    """Where each stage after the first begins on the token axis: ``{stage, tokens_cumulative}``."""
    starts = {}
    for p in points:
        starts.setdefault(p["stage_index"], (p["stage"], p["tokens_cumulative"] - p["tokens"]))
    return [{"stage": name, "tokens_cumulative": at} for index, (name, at) in sorted(starts.items()) if index > 0]


def plot_curves(points: list[dict], losses: list[dict], path: str | Path) -> Path:
    """One panel per task (each metric a line with its CI band), one for the loss; shared token axis, dashed lines
    at the stage boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for p in points for t in p["scores"]))
    fig, axes = plt.subplots(len(tasks) + 1, 1, sharex=True, figsize=(7, 2.6 * (len(tasks) + 1)), squeeze=False)
    axes = axes[:, 0]
    x = [p["tokens_cumulative"] for p in points]
    for ax, task in zip(axes, tasks):
        for metric in dict.fromkeys(m for p in points for m in p["scores"].get(task, {})):
            rows = [(xi, p["scores"][task][metric]) for xi, p in zip(x, points)
                    if p["scores"].get(task, {}).get(metric, {}).get("value") is not None]  # None: not computed
            if not rows:
                continue
            xs, ys = [r[0] for r in rows], [r[1]["value"] for r in rows]
            line, = ax.plot(xs, ys, marker="o", label=metric)
            if all(None not in r[1]["ci"] for r in rows):
                ax.fill_between(xs, [r[1]["ci"][0] for r in rows], [r[1]["ci"][1] for r in rows],
                                color=line.get_color(), alpha=0.2)
        ax.set_ylabel(task)
        ax.legend(fontsize="small")
    for stage in dict.fromkeys(r["stage"] for r in losses):
        rows = [r for r in losses if r["stage"] == stage]
        axes[-1].plot([r["tokens_cumulative"] for r in rows], [r["loss"] for r in rows], label=stage)
    axes[-1].set_ylabel("training loss")
    axes[-1].set_xlabel("tokens seen")
    axes[-1].legend(fontsize="small")
    for b in boundaries(points):
        for ax in axes:
            ax.axvline(b["tokens_cumulative"], color="grey", linestyle="--", linewidth=1)
        axes[0].annotate(f"{b['stage']} ->", (b["tokens_cumulative"], 1.0), xycoords=("data", "axes fraction"),
                         fontsize="small", ha="left", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _write_csv(points: list[dict], path: Path) -> None:
    keys = ("stage", "stage_index", "step", "tokens", "tokens_cumulative")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow([*keys, "task", "metric", "value", "ci_low", "ci_high", "n", "model_dir"])
        for p in points:
            for task, metrics in p["scores"].items():
                for metric, s in metrics.items():
                    out.writerow([*(p[k] for k in keys), task, metric, s["value"], *s["ci"], s["n"], p["model_dir"]])


def run_curves(run_dir: str | Path, tasks: list[str], output: str | Path, backend: str = "hf",
               limit: int | float | None = None, evaluate: Evaluate | None = None, **options) -> dict:
    """Evaluate every export of the run at ``run_dir`` (cached ones are read back) and write curves.{json,csv,png}
    to ``output`` (new, empty or an earlier curves folder; not inside or around the run). ``evaluate`` defaults to
    ``eval.run.evaluate``; ``options`` (its EvalOptions: batch size, max_gen_toks, ...) go to every call and into
    the cache key."""
    if not tasks:
        raise ConfigError("no tasks given; name at least one lm-eval task (trait eval --help lists ours)")
    check_output(output, inputs=[run_dir], own=CURVES_FILES, dataset=False)
    if evaluate is None:
        from eval.run import evaluate  # the results go inside each export (its cache), which run_eval refuses
    points = run_exports(run_dir)
    fresh = evaluate_points(points, tasks, backend, limit, evaluate, options)
    losses = loss_curve(run_dir, points)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    result = {"run": str(run_dir), "tasks": tasks, "backend": backend, "limit": limit, "points": points,
              "loss": losses, "boundaries": boundaries(points),
              "counts": {"exports": len(points), "evaluated": fresh, "cached": len(points) - fresh}}
    json_file, csv_file, png_file = (out / name for name in CURVES_FILES)
    json_file.write_text(json.dumps(result, indent=1))
    _write_csv(points, csv_file)
    plot_curves(points, losses, png_file)
    log.info("curves: %d exports (%d evaluated now, %d cached) -> %s", len(points), fresh, len(points) - fresh,
             png_file)
    return result
