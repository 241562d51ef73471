"""What each stage kind runs: the existing job, called with the stage's resolved config and paths.

Every runner returns a small summary for the run's page (rows and tokens in and out, or what was trained or
measured). Heavy imports (pyspark, torch, lm-eval) happen inside the runner, so planning imports none of them.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from pathlib import Path

from trait.config import from_dict

log = logging.getLogger(__name__)


def _counts(manifest: dict) -> dict:
    c = manifest.get("counts", {})
    return {k: c[k] for k in ("rows_in", "rows_out", "rows_quarantined", "tokens_in", "tokens_out") if k in c}


def _import(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _spark_job(job: str, config: str, scheduler_only: bool = False):
    """The runner of a Spark job that reads one dataset: ``job(spark, config, input, output, overwrite)``."""
    def run(ctx, stage) -> dict:
        cfg = from_dict(_import(config), stage.config["job"])
        manifest = _import(job)(ctx.spark(scheduler_only), cfg, stage.config["input"], stage.output, overwrite=True)
        return _counts(manifest)
    return run


def ingest(ctx, stage) -> dict:
    from spark_jobs.ingest import IngestConfig, run_ingest

    return _counts(run_ingest(ctx.spark(), from_dict(IngestConfig, stage.config), stage.output, overwrite=True))


def split(ctx, stage) -> dict:
    from spark_jobs.split import run_split

    cfg = stage.config
    out = run_split(ctx.spark(), cfg["input"], stage.outputs["train"], stage.outputs["heldout"], cfg["heldout_docs"],
                    cfg["seed"], overwrite=True)
    return {"rows_in": out["train"]["counts"]["rows_in"], "rows_out": out["train"]["counts"]["rows_out"],
            "rows_heldout": out["heldout"]["counts"]["rows_out"], "tokens_out": out["train"]["counts"]["tokens_out"]}


def classifier(ctx, stage) -> dict:
    from spark_jobs.classifier import ClassifierConfig, train_classifier

    card = train_classifier(from_dict(ClassifierConfig, stage.config), stage.output)
    m = card["heldout_metrics"]
    return {"heldout_roc_auc": m["roc_auc"], "heldout_f1": m["f1"], "train_docs": card["data"]["train"]["n"]}


def validate(ctx, stage) -> dict:
    """The classifier against labelled sets it never trained on (``trait classifier evaluate``)."""
    from spark_jobs.classifier_eval import EvaluateConfig, evaluate_classifier

    result = evaluate_classifier(from_dict(EvaluateConfig, stage.config))
    recall = {name: s["recall_at_keep"] for name, s in result["sets"].items() if s["label"] == "positive"}
    return {"roc_auc": {name: round(s["roc_auc"], 4) for name, s in result["sets"].items()},
            "recall_at_keep": recall}


def select(ctx, stage) -> dict:
    from spark_jobs.select import SelectConfig, run_select

    cfg = stage.config
    manifest = run_select(ctx.spark(), from_dict(SelectConfig, cfg["job"]), cfg["input"], stage.output,
                          overwrite=True)
    return {**_counts(manifest), "thresholds": {k: t["score"] for k, t in manifest["thresholds"].items()}}


def report(ctx, stage) -> dict:
    from spark_jobs.report import ReportConfig, run_report

    cfg = stage.config
    out = run_report(ctx.spark(), from_dict(ReportConfig, cfg["job"]), cfg["input"], stage.output, overwrite=True)
    return {"html": out["report"]["html"]}


def dsir(ctx, stage) -> dict:
    from spark_jobs.dsir import DsirConfig, run_dsir

    cfg = stage.config
    return _counts(run_dsir(ctx.spark(), from_dict(DsirConfig, cfg["job"]), cfg["input"], cfg["target"],
                            stage.output, overwrite=True))


def compare(ctx, stage) -> dict:
    """The selections side by side: tokens by source, and what each pair kept in common."""
    from spark_jobs.compare import compare_selections, comparison_table

    comparison = compare_selections(ctx.spark(), stage.config["selections"])
    out = Path(stage.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selections.json").write_text(json.dumps(comparison, indent=1))
    (out / "selections.md").write_text(comparison_table(comparison) + "\n")
    return {"rows_out": sum(s["rows"] for s in comparison["selections"].values())}


def synth(ctx, stage) -> dict:
    """Passages; with ``chunks`` > 1 each chunk is its own dataset (a Slurm array task each, or here one after
    the other; finished chunks are skipped) and they are joined into the stage's output."""
    from synth.generate import SynthConfig, run_generate

    cfg = from_dict(SynthConfig, stage.config["job"])
    n = stage.config["chunks"]
    if n == 1:
        manifest = run_generate(cfg, stage.output)
    else:
        manifest = join_chunks([run_generate(cfg, stage.outputs["chunks"], i, n) for i in range(n)],
                               stage.outputs["chunks"], stage.output)
    c = manifest.get("counts", {})
    return {**{k: c.get(k) for k in ("rows_in", "rows_out", "rows_quarantined", "rows_flagged", "tokens_out")},
            "valid_fraction": manifest.get("valid_fraction")}


def join_chunks(manifests: list[dict], chunks_dir: str, output: str) -> dict:
    """One dataset of every chunk's rows; counts summed (quarantines stay in the chunks)."""
    import pyarrow as pa

    from trait.contract import finished_dataset

    # chunk-00000 ... (beside each, chunk-00000._chunks holds that chunk's committed batches: not a dataset)
    chunks = sorted(p for p in Path(chunks_dir).iterdir() if re.fullmatch(r"chunk-\d+", p.name))
    table = pa.concat_tables(finished_dataset(str(p)).to_table() for p in chunks)
    counts: dict = {}
    for m in manifests:
        for k, v in m.get("counts", {}).items():
            if isinstance(v, int):
                counts[k] = counts.get(k, 0) + v
    valid = sum(m.get("valid", 0) for m in manifests)
    manifest = {"job": "synth_join", "chunks": [str(p) for p in chunks], "counts": counts, "valid": valid,
                "valid_fraction": valid / counts["rows_in"] if counts.get("rows_in") else None}
    write_dataset(output, table, manifest)
    return manifest


def strip_enlightenment(ctx, stage) -> dict:
    """The paper's ablation of the enlightenment paragraph: the same passages with that paragraph removed."""
    import pyarrow as pa

    from synth.passage import without_enlightenment
    from trait.contract import finished_dataset

    table = finished_dataset(stage.config["input"], ("text", "enlightenment")).to_table()
    texts = [without_enlightenment(t, e) for t, e in zip(table.column("text").to_pylist(),
                                                         table.column("enlightenment").to_pylist())]
    kept = [i for i, t in enumerate(texts) if t.strip()]
    out = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string())).take(kept)
    stripped = sum(e is not None for e in table.column("enlightenment").to_pylist())
    write_dataset(stage.output, out, {"job": "strip_enlightenment", "input": stage.config["input"],
                                      "counts": {"rows_in": table.num_rows, "rows_out": out.num_rows,
                                                 "rows_quarantined": 0, "rows_stripped": stripped,
                                                 "rows_empty_after": table.num_rows - len(kept)}})
    return {"rows_in": table.num_rows, "rows_out": out.num_rows, "rows_stripped": stripped}


def write_dataset(path: str, table, manifest: dict) -> None:
    """A contract dataset from one Arrow table: validated, written to staging, moved into place."""
    import shutil

    import pyarrow.parquet as pq

    from trait.contract import MANIFEST_NAME, SUCCESS_MARKER, part_name, validate_table

    validate_table(table)
    staging = Path(f"{path}._staging")
    shutil.rmtree(staging, ignore_errors=True)  # our own staging, left by a killed run
    staging.mkdir(parents=True)
    pq.write_table(table, staging / part_name(0))
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (staging / SUCCESS_MARKER).write_text("")
    staging.rename(path)


def _write_yaml(ctx, name: str, body: dict) -> str:
    import yaml

    path = ctx.state_dir.parent / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


def _train(ctx, name: str, body: dict) -> dict:
    """The trainer in a process of its own (torchrun when nproc > 1): a distributed run's process group, its
    environment (RANK, MASTER_PORT, ...) and its memory end with it, so the next stage starts clean."""
    import subprocess
    import sys

    from trainer.launch import launch_local
    from trait import UserError

    config = _write_yaml(ctx, name, body)
    nproc = ctx.config.training.nproc
    if nproc > 1:
        code = launch_local(config, nproc, "auto")
    else:
        command = [sys.executable, "-m", "trainer.train", "--config", config, "--resume", "auto"]
        code = subprocess.run(command).returncode
    if code:
        raise UserError(f"{name}: training exited {code} (its log is above); rerun the pipeline to resume from the "
                        "newest checkpoint")
    result = json.loads((Path(body["output_dir"]) / "summary.json").read_text())
    return {"stages": {n: {"steps": s["steps"], "tokens": s["tokens"], "final_loss": s["final_loss"],
                           "tokens_by_source": tokens_by_source(s)}
                       for n, s in result["stages"].items()}}


def tokens_by_source(stage_summary: dict) -> dict:
    """Tokens trained per source in a stage: the realised mixture's shares of the stage's tokens."""
    realised = stage_summary.get("realised_mixture") or {}
    shares = {name: (r.get("share") if isinstance(r, dict) else r) for name, r in realised.items()}
    return {name: round(share * stage_summary["tokens"]) for name, share in shares.items() if share is not None}


def base_model(ctx, stage) -> dict:
    from trait.tiny_model import TinyModelConfig, build_tiny_model

    tiny = build_tiny_model(from_dict(TinyModelConfig, stage.config["tiny_model"]),
                            cache_dir=Path(stage.output).parent / "tiny")
    return {"tiny_model": str(tiny), **_train(ctx, "base_model", {**stage.config["train"], "model": str(tiny)})}


def train(ctx, stage) -> dict:
    return _train(ctx, stage.name, stage.config)


def evaluate(ctx, stage) -> dict:
    """The configured trait eval tasks, and bits per byte on the held-out in-domain and general documents."""
    from eval.bpb import bits_per_byte
    from eval.run import run_eval

    cfg = stage.config
    out = Path(stage.output)
    out.mkdir(parents=True, exist_ok=True)
    opts = dict(cfg["options"])
    result = run_eval(cfg["model"], cfg["tasks"], backend=cfg["backend"], limit=cfg["limit"],
                      output=str(out / "tasks"), **opts)
    bpb = {name: bits_per_byte(cfg["model"], path, max_docs=cfg["bpb"]["max_docs"], seq_len=cfg["bpb"]["seq_len"],
                               batch_size=cfg["bpb"]["batch_size"], device=opts.get("device"),
                               seed=opts.get("seed", 0))
           for name, path in cfg["heldout"].items()}
    metrics = {"model": cfg["model"], "tasks": result["tasks"], "bpb": bpb}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    return {"bpb_in_domain": bpb["in_domain"]["bpb"], "bpb_general": bpb["general"]["bpb"]}


def curves(ctx, stage) -> dict:
    from eval.curves import run_curves

    cfg = stage.config
    result = run_curves(cfg["run"], cfg["tasks"], stage.output, backend=cfg["backend"], limit=cfg["limit"],
                        **cfg["options"])
    return {"points": len(result.get("points", []))}


def datamap(ctx, stage) -> dict:
    from eval.datamap import run_datamap

    cfg = stage.config
    result = run_datamap([f"{n}={p}" for n, p in cfg["sources"].items()], stage.output, per_source=cfg["per_source"],
                         seed=cfg["seed"])
    return {"sources": len(cfg["sources"]), "png": result.get("png")}


RUNNERS = {"ingest": ingest, "split": split, "classifier": classifier, "validate": validate, "select": select,
           "report": report, "dsir": dsir,
           "dedup": _spark_job("spark_jobs.dedup:run_dedup", "trait.minhash:DedupConfig"),
           "decontaminate": _spark_job("spark_jobs.decontaminate:run_decontaminate", "trait.decontam:DecontamConfig"),
           "score": _spark_job("spark_jobs.score:run_score", "spark_jobs.score:ScoreConfig", scheduler_only=True),
           "random": _spark_job("spark_jobs.baselines:run_random", "spark_jobs.baselines:RandomConfig"),
           "compare": compare, "synth": synth, "strip_enlightenment": strip_enlightenment, "base_model": base_model,
           "train": train, "eval": evaluate, "curves": curves, "datamap": datamap}
# Kinds that continue an interrupted run in place (staging redone, committed batches or checkpoints kept); the
# others start again from an empty output.
RESUMABLE = frozenset({"ingest", "dedup", "decontaminate", "split", "score", "select", "report", "random", "dsir",
                       "synth", "base_model", "train"})
