"""``trait``: the front door. One subcommand per job; ``trait <command> --help`` for each."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import yaml

from trait import UserError
from trait.config import ConfigError, from_dict


def _config(cls, path: str | None, overrides: dict):
    """Config ``cls`` from an optional YAML file, with CLI values (those not None) on top."""
    data = {}
    if path:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, data, path or cls.__name__)


def _spark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
    p.add_argument("--overwrite", action="store_true", help="replace a finished output made with other settings")


def _spark_job(sub, name: str, help: str, func, config: str, input_help: str = "finished contract dataset",
               output_help: str = "output dataset directory") -> argparse.ArgumentParser:
    """A subcommand for a Spark job that reads one finished dataset: --config, --input, --output, --master,
    --overwrite; the caller adds the job's own flags."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--config", help=f"YAML {config}")
    p.add_argument("--input", required=True, help=input_help)
    p.add_argument("--output", required=True, help=output_help)
    _spark_args(p)
    p.set_defaults(func=func)
    return p


def _ingest(args) -> dict:
    from spark_jobs.ingest import IngestConfig, run_ingest
    from spark_jobs.session import get_spark

    single = None
    if args.input:
        if not args.source:
            raise ConfigError("--input needs --source")
        given = {"format": args.format, "text_field": args.text_field, "id_field": args.id_field,
                 "url_field": args.url_field}
        # "none" says the input has no such field (the id then comes from the url or the text).
        given = {k: (None if v.lower() == "none" else v) for k, v in given.items() if v is not None}
        single = [{"path": p, "source": args.source, **given} for p in args.input]
    cfg = _config(IngestConfig, args.config, {"inputs": single, "tokenizer": args.tokenizer})
    return run_ingest(get_spark("trait-ingest", args.master), cfg, args.output, args.overwrite)


def _classifier_train(args) -> dict:
    from spark_jobs.classifier import ClassifierConfig, train_classifier

    cfg = _config(ClassifierConfig, args.config, {"name": args.name, "positives": args.positives,
                                                  "negatives": args.negatives, "labelled": args.labelled,
                                                  "seed": args.seed})
    return train_classifier(cfg, args.output)


def _score(args) -> dict:
    from spark_jobs.score import ScoreConfig, run_score
    from spark_jobs.session import get_spark

    cfg = _config(ScoreConfig, args.config, {"models": args.model})
    return run_score(get_spark("trait-score", args.master, scheduler_only=True), cfg, args.input, args.output,
                     args.overwrite)


def _select(args) -> dict:
    from spark_jobs.select import SelectConfig, Threshold, run_select
    from spark_jobs.session import get_spark

    overrides = {k: Threshold.parse(v) for k, v in (("domain", args.domain), ("quality", args.quality)) if v}
    cfg = _config(SelectConfig, args.config, overrides)
    return run_select(get_spark("trait-select", args.master), cfg, args.input, args.output, args.overwrite)


def _decontaminate(args) -> dict:
    from spark_jobs.decontaminate import run_decontaminate
    from spark_jobs.session import get_spark
    from trait.decontam import DecontamConfig

    cfg = _config(DecontamConfig, args.config, {"shared_data": args.data, "benchmarks": args.benchmarks,
                                                "eval_files": args.eval_file, "n": args.n})
    return run_decontaminate(get_spark("trait-decontaminate", args.master), cfg, args.input, args.output,
                             args.overwrite)


def _report(args) -> dict:
    from spark_jobs.report import ReportConfig, run_report
    from spark_jobs.session import get_spark

    cfg = _config(ReportConfig, args.config, {"positive_sources": args.positive_sources})
    return run_report(get_spark("trait-report", args.master), cfg, args.input, args.output, args.validation,
                      args.overwrite)


def _dedup(args) -> dict:
    from spark_jobs.dedup import run_dedup
    from spark_jobs.session import get_spark
    from trait.minhash import DedupConfig

    cfg = _config(DedupConfig, args.config, {"threshold": args.threshold, "bands": args.bands, "rows": args.rows})
    return run_dedup(get_spark("trait-dedup", args.master), cfg, args.input, args.output, args.overwrite)


def _baseline(args) -> dict:
    from spark_jobs.session import get_spark

    overrides = {"seed": args.seed, "token_budget": args.token_budget, "budget_from": args.budget_from}
    spark_name = f"trait-baseline-{args.action}"
    if args.action == "random":
        from spark_jobs.baselines import RandomConfig, run_random

        cfg = _config(RandomConfig, args.config, overrides)
        return run_random(get_spark(spark_name, args.master), cfg, args.input, args.output, args.overwrite)
    from spark_jobs.dsir import DsirConfig, run_dsir

    if not args.target:
        raise ConfigError("baseline dsir needs --target DIR (the in-domain seed dataset)")
    cfg = _config(DsirConfig, args.config, overrides)
    return run_dsir(get_spark(spark_name, args.master), cfg, args.input, args.target, args.output, args.overwrite)


def _synth_generate(args) -> dict:
    from synth.generate import SynthConfig, run_generate

    cfg = _config(SynthConfig, args.config, {"tasks": args.tasks, "limit": args.limit})
    if args.endpoint:
        cfg.server.endpoint = args.endpoint
    return run_generate(cfg, args.output, args.chunk, args.num_chunks)


def _synth_annotate(args) -> dict:
    from synth.annotate import AnnotateConfig, run_annotate

    cfg = _config(AnnotateConfig, args.config, {"sample_size": args.sample_size})
    if args.endpoint:
        cfg.server.endpoint = args.endpoint
    return run_annotate(cfg, args.input, args.output)


def _train(args) -> dict:
    from trainer.config import TrainConfig
    from trainer.train import PREEMPTED_EXIT, Preempted, launch_local, run_training
    from trait.config import load

    if args.nproc > 1:  # torchrun with `python -m trainer.train` as the entry point; it writes the summary
        code = launch_local(args.config, args.nproc, args.resume)
        if code:
            print(f"trait: training stopped (torchrun exit {code}); rerun with --resume auto to continue from the "
                  "newest complete checkpoint", file=sys.stderr)
            sys.exit(code)
        with open(os.path.join(load(TrainConfig, args.config).output_dir, "summary.json"), encoding="utf-8") as fh:
            return json.load(fh)
    try:
        return run_training(load(TrainConfig, args.config), args.resume)
    except Preempted as exc:
        print(f"trait: {exc}; rerun to resume", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)


def _eval_options(args) -> dict:
    """The eval.run.EvalOptions shared by ``trait eval`` and ``trait curves`` (see _eval_model_args)."""
    return {"endpoint": args.endpoint, "api_key_env": args.api_key_env, "batch_size": args.batch_size,
            "device": args.device, "num_fewshot": args.num_fewshot, "max_gen_toks": args.max_gen_toks,
            "chat": args.chat, "seed": args.seed}


def _eval(args) -> dict:
    from eval.report import markdown_table
    from eval.run import run_eval

    result = run_eval(args.model, args.tasks, backend=args.backend, limit=args.limit, output=args.output,
                      judge=args.judge_endpoint or args.judge, judge_api_key_env=args.judge_api_key_env,
                      reference_samples=args.reference_samples, **_eval_options(args))
    print(markdown_table(result), end="")
    return result


def _curves(args) -> dict:
    from eval.curves import run_curves

    return run_curves(args.run, args.tasks, args.output, backend=args.backend, limit=args.limit,
                      **_eval_options(args))


def _datamap(args) -> dict:
    from eval.datamap import run_datamap

    return run_datamap(args.source, args.output, per_source=args.per_source, seed=args.seed)


def _demo(args) -> dict:
    from spark_jobs.demo import run_demo

    return run_demo(args.workdir, args.data, args.master)


def _eval_model_args(p: argparse.ArgumentParser, limit_of: str) -> None:
    """How ``trait eval`` and ``trait curves`` run a model: backend, endpoint, limits, batch, seed."""
    p.add_argument("--backend", choices=["hf", "vllm", "openai"], default="hf",
                   help="hf: transformers in this process (CPU float32, GPU bf16); vllm: a local vLLM server "
                   "started for the run; openai: any OpenAI-compatible --endpoint (default hf)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL for --backend openai, e.g. http://host:8000/v1")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key (the key itself "
                   "is never logged or written)")
    p.add_argument("--limit", type=int, help=f"at most this many {limit_of} (smoke runs)")
    p.add_argument("--batch-size", type=int, default=1, help="items per forward pass or request (default 1)")
    p.add_argument("--device", help="hf: cpu or cuda (default: cuda when available)")
    p.add_argument("--num-fewshot", type=int, help="override the tasks' few-shot counts")
    p.add_argument("--max-gen-toks", type=int, help="cap the new tokens of every generation task (smoke runs only: "
                   "scores then differ from the protocol's)")
    p.add_argument("--chat", action="store_true", help="prompts as chat messages in the model's chat template "
                   "(vllm/openai: the chat completions API, for generation tasks only)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling, few-shot draws and bootstraps (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trait", description="TRAIT: in-domain data selection, synthetic "
                                     "task-oriented passages and two-stage continual pre-training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="JSONL(.gz/.zst)/Parquet -> contract Parquet, bad rows quarantined")
    p.add_argument("--config", help="YAML IngestConfig (inputs, tokenizer, max_doc_bytes, ...)")
    p.add_argument("--input", nargs="+", help="glob(s) or URI(s) of one source's files (instead of config inputs)")
    p.add_argument("--source", help="source name for --input, e.g. wiki/enwiki-2015")
    p.add_argument("--format", choices=["auto", "jsonl", "parquet"])
    p.add_argument("--text-field")
    p.add_argument("--id-field", help="field with the source's document id, or 'none'")
    p.add_argument("--url-field", help="field with the url, or 'none'")
    p.add_argument("--tokenizer", help="'words' or 'hf:/path/tokenizer.json'")
    p.add_argument("--output", required=True)
    _spark_args(p)
    p.set_defaults(func=_ingest)

    p = sub.add_parser("classifier", help="fastText classifiers")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = csub.add_parser("train", help="train a domain or quality classifier with held-out metrics")
    p.add_argument("--config", help="YAML ClassifierConfig")
    p.add_argument("--name", help="classifier name (score column score_<name>_v<version>)")
    p.add_argument("--positives", nargs="+", help="contract datasets of positives (in-domain seed)")
    p.add_argument("--negatives", nargs="+", help="contract datasets to sample negatives from")
    p.add_argument("--labelled", nargs="+", help="datasets with text and a label column")
    p.add_argument("--seed", type=int)
    p.add_argument("--output", required=True, help="directory for <name>_v<version>.bin and card.json")
    p.set_defaults(func=_classifier_train)

    p = _spark_job(sub, "score", "Spark job: add a float32 score column per classifier to every row", _score,
                   "ScoreConfig")
    p.add_argument("--model", nargs="+", help="classifier directories")

    p = _spark_job(sub, "select", "Spark job: keep documents by domain/quality thresholds", _select, "SelectConfig",
                   "finished scored dataset")
    p.add_argument("--domain", help="COLUMN:min=X | COLUMN:percentile=P | COLUMN:token_budget=N")
    p.add_argument("--quality", help="same forms as --domain")

    p = _spark_job(sub, "decontaminate", "Spark job: quarantine documents sharing an n-gram with a benchmark test "
                   "split or eval file", _decontaminate, "DecontamConfig (shared_data, benchmarks, eval_files, n)")
    p.add_argument("--benchmarks", nargs="+", help="benchmark names (default: all nine math benchmarks)")
    p.add_argument("--eval-file", nargs="+", help="more eval sets, each NAME=PATH:FIELD[,FIELD...] ('a+b' joins)")
    p.add_argument("-n", type=int, help="n-gram length in words (default 13)")
    p.add_argument("--data", help="shared data dir holding benchmarks/ (default $TRAIT_SHARED_DATA, ../shared/data)")

    p = _spark_job(sub, "report", "Spark job: HTML threshold-tuning report (histograms, percentiles, threshold "
                   "grid, validation P/R/F1, samples)", _report,
                   "ReportConfig (bins, percentiles, thresholds, columns, samples)", "finished scored dataset",
                   "directory for report.html and report.json")
    p.add_argument("--validation", help="finished scored dataset to judge (default: --input when labels are given)")
    p.add_argument("--positive-sources", nargs="+", help="source prefixes labelling validation positives")

    p = _spark_job(sub, "dedup", "Spark job: drop exact and MinHash-LSH near duplicates, keeping the smallest id "
                   "per cluster", _dedup, "DedupConfig (shingle_size, bands, rows, threshold, seed, max_bucket_size)")
    p.add_argument("--threshold", type=float, help="estimated Jaccard for near duplicates (default 0.8)")
    p.add_argument("--bands", type=int, help="LSH bands (default 16)")
    p.add_argument("--rows", type=int, help="signature values per band (default 8)")

    p = sub.add_parser("baseline", help="Spark jobs: selection baselines (random, DSIR) to a token budget")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, what in (("random", "seeded uniform random sample"),
                         ("dsir", "DSIR: hashed n-gram importance weights, Gumbel top-k")):
        p = _spark_job(bsub, action, f"{what} of the pool, to a token budget", _baseline,
                       "RandomConfig" if action == "random" else "DsirConfig", "finished contract dataset: the pool")
        if action == "dsir":
            p.add_argument("--target", help="finished contract dataset: the in-domain seed (target distribution)")
        budget = p.add_mutually_exclusive_group()
        budget.add_argument("--token-budget", type=int, help="tokens to keep")
        budget.add_argument("--budget-from", help="finished selection whose counts.tokens_out is the budget")
        p.add_argument("--seed", type=int, help="sampling seed (default 0)")
        p.set_defaults(target=None)

    p = sub.add_parser("synth", help="task-oriented synthetic passages from a vLLM-served generator")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ssub.add_parser("generate", help="group seed problems, generate and validate passages (resumable)")
    p.add_argument("--config", help="YAML SynthConfig (tasks, grouping, sampling, validation, server)")
    p.add_argument("--tasks", nargs="+", help="task definition names (synth/tasks/*.yaml)")
    p.add_argument("--endpoint", help="OpenAI-compatible URL of a running generator (default: start a local vLLM)")
    p.add_argument("--limit", type=int, help="at most this many passages (smoke runs)")
    p.add_argument("--chunk", type=int, default=0, help="this run's chunk (a Slurm array task id)")
    p.add_argument("--num-chunks", type=int, default=1, help="chunks the groups are split into")
    p.add_argument("--output", required=True, help="output dataset (chunked: one dataset per chunk inside)")
    p.set_defaults(func=_synth_generate)
    p = ssub.add_parser("annotate", help="0-5 educational-value labels of sampled documents (FineWeb-Edu recipe) "
                        "for 'classifier train --labelled' (resumable)")
    p.add_argument("--config", help="YAML AnnotateConfig (sample_size, seed, max_chars, sampling, server)")
    p.add_argument("--input", required=True, help="finished contract dataset to sample documents from")
    p.add_argument("--endpoint", help="OpenAI-compatible URL of a running generator (default: start a local vLLM)")
    p.add_argument("--sample-size", type=int, help="documents to grade")
    p.add_argument("--output", required=True, help="output dataset: the documents with an integer 'label' column")
    p.set_defaults(func=_synth_annotate)

    p = sub.add_parser("train", help="two-stage continual pre-training with DeepSpeed ZeRO-1 (resumable)")
    p.add_argument("--config", required=True, help="YAML TrainConfig (model, output_dir, stages, ...)")
    p.add_argument("--nproc", type=int, default=1, help="local processes (torchrun); default 1")
    p.add_argument("--resume", choices=["auto", "never"], default="auto",
                   help="auto: continue from the newest complete checkpoint, skip finished stages (default); "
                   "never: refuse an output_dir that already holds training output")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a model on the math and ads tasks (lm-evaluation-harness, local data)",
                       description="Evaluate a model on our lm-eval tasks (eval/tasks, read from ../shared/data; "
                       "nothing is downloaded). Writes results.json, results.md and samples/<task>.jsonl under "
                       "--output; every score carries a 95% confidence interval.")
    p.add_argument("--model", required=True, help="Hugging Face model directory (hf, vllm; openai: the served "
                   "model name, or a directory whose tokenizer is used and whose served name is looked up)")
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                   help="math, ads, or task names (gsm8k means trait_gsm8k); an unknown name lists the known ones")
    _eval_model_args(p, "item per task")
    p.add_argument("--output", help="directory for results.json, results.md and samples/ (default: print only)")
    judge = p.add_mutually_exclusive_group()
    judge.add_argument("--judge-endpoint", metavar="URL", help="OpenAI-compatible URL of the LLM judging win "
                       "rates (e.g. the synth generator's)")
    judge.add_argument("--judge", choices=["local"], help="local: judge with a vLLM server started for the run "
                       "(the embedded tiny model); without a judge, win rates are reported as not computed")
    p.add_argument("--judge-api-key-env", metavar="VAR", help="environment variable holding the judge's API key")
    p.add_argument("--reference-samples", metavar="JSONL", help="judge against another run's "
                   "samples/trait_product_title.jsonl instead of the dataset's reference titles")
    p.set_defaults(func=_eval)

    p = sub.add_parser("curves", help="training curves: every export of a trainer run evaluated, score and loss "
                       "against tokens seen, stage boundary marked (PNG, JSON, CSV; cached per export)")
    p.add_argument("--run", required=True, help="the trainer run's output_dir (stages with export_every exports)")
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK", help="tasks, as for trait eval")
    _eval_model_args(p, "items per task and export")
    p.add_argument("--output", required=True, help="directory for curves.png, curves.json and curves.csv")
    p.set_defaults(func=_curves)

    p = sub.add_parser("datamap", help="data map: samples of each source embedded (MiniLM) and drawn in 2-D "
                       "(t-SNE), with centroid distances and nearest-neighbour source mix")
    p.add_argument("--source", nargs="+", required=True, metavar="NAME=PATH",
                   help="a finished contract dataset, a .jsonl(.gz)/.json file (PATH#FIELD: the text field, default "
                   "text), or tasks:NAME[,NAME...] (synth task problems)")
    p.add_argument("--per-source", type=int, default=500, help="texts sampled per source (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and of t-SNE (default 0)")
    p.add_argument("--output", required=True, help="directory for datamap.png, datamap.parquet and datamap.json")
    p.set_defaults(func=_datamap)

    p = sub.add_parser("demo", help="the math selection demo on ../shared/data, end to end")
    p.add_argument("--data", default=os.environ.get("TRAIT_SHARED_DATA", "../shared/data"),
                   help="the shared data directory (default: $TRAIT_SHARED_DATA, else ../shared/data)")
    p.add_argument("--workdir", default="runs/demo", help="where the demo writes its datasets and models")
    p.add_argument("--master", help="Spark master (default local[*])")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"trait: error: {exc}", file=sys.stderr)
        return 2
    if args.command not in ("demo", "eval"):  # eval prints its table itself
        print(json.dumps(result.get("counts", result.get("heldout_metrics", {})), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
