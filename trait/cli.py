"""``trait``: the front door. One subcommand per job; ``trait <command> --help`` for each.

A command's options come from its config dataclass (``trait.config.describe``): field ``token_budget`` is
``--token-budget``, with the field's help and default. Every command also takes ``--config FILE`` and
``--set KEY=VALUE`` (docs/configuration.md); the flags written out here are only what varies per run: paths,
``--master``, ``--overwrite``, ``--nproc``, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from trait import UserError
from trait.config import (
    ConfigError,
    FieldDoc,
    describe,
    load_config,
    parse_flag,
    parse_overrides,
    show,
    to_dict,
    type_name,
)


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its config class (imported only when the command is used), the job, and its per-run flags."""

    help: str
    config: str  # "module:Class"
    run: Callable[[Any, argparse.Namespace], dict | None]  # (validated config, parsed flags) -> result to print
    flags: Callable[[argparse.ArgumentParser], None] = lambda p: None  # the per-run flags
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # another option -> dotted field key
    overrides: Callable[[argparse.Namespace], dict] = lambda args: {}  # config values the per-run flags imply
    description: str | None = None

    def config_class(self) -> type:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)


# --- options generated from config fields --------------------------------------------------------------------------

FIELD, INPUT = "field:", "input:"  # the dest prefixes of generated options: a config field, ingest's --input spec


def _help(doc: FieldDoc) -> str:
    default = "required" if doc.default is dataclasses.MISSING else f"default: {show(doc.default)}"
    return f"{doc.help} ({default})".replace("%", "%%")


def _add_field_option(p: argparse.ArgumentParser, doc: FieldDoc, flag: str, dest: str, help: str) -> None:
    kwargs = {"dest": dest, "default": argparse.SUPPRESS, "help": help}
    if doc.shape == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["metavar"] = doc.key.rsplit(".", 1)[-1].upper()
        if doc.shape == "list":  # "--positive A B" and "--positive A --positive B" alike
            kwargs.update(nargs="+", action="extend")
    p.add_argument(flag, **kwargs)
    p.get_default("option_labels").setdefault(dest, (flag, doc.type))  # an alias after its field: the field's name


def _add_field_options(p: argparse.ArgumentParser, docs: list[FieldDoc], prefix: str, skip: tuple = ()) -> set[str]:
    """One option per top-level field that a command line can give (a value, a list or a switch); their keys."""
    done = set()
    for doc in docs:
        if "." not in doc.key and doc.shape and doc.key not in skip:
            _add_field_option(p, doc, "--" + doc.key.replace("_", "-"), prefix + doc.key, _help(doc))
            done.add(doc.key)
    return done


def _given(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """``{field key: value}`` of the generated options given on the command line, parsed for their fields."""
    labels = args.option_labels
    return {dest[len(prefix):]: parse_flag(labels[dest][1], value, labels[dest][0])
            for dest, value in vars(args).items() if dest.startswith(prefix)}


def _epilog(docs: list[FieldDoc], with_option: set[str]) -> str:
    """The fields without an option of their own (nested ones, mappings), with type, default and help."""
    lines = []
    for doc in docs:
        if doc.key in with_option:
            continue
        head = f"  {doc.key} ({type_name(doc.type)}"
        if doc.default is dataclasses.MISSING:
            head += ", required"
        elif not dataclasses.is_dataclass(doc.default):  # a nested config's own fields follow, with their defaults
            head += f", default: {show(doc.default)}"
        lines += [head + ")", textwrap.fill(doc.help, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)]
    if not lines:
        return ""
    return "\n".join(["config fields without an option of their own: set them in the --config file or with "
                      "--set KEY=VALUE", *lines])


def _add_config_options(p: argparse.ArgumentParser, command: Command) -> None:
    cls = command.config_class()
    p.set_defaults(command_spec=command, option_labels={})
    p.add_argument("--config", metavar="FILE", help=f"YAML file of {cls.__name__} fields (the options and the list "
                   "below); ${name} in its values is filled from its vars: block, --set vars.NAME=VALUE, or the "
                   "environment")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config field by its dotted key, e.g. lr=3e-3, server.endpoint=URL, inputs.0.path=PATH "
                   "(the value is YAML; repeatable; applied over --config and the options)")
    command.flags(p)
    docs = describe(cls)
    with_option = _add_field_options(p, docs, FIELD)
    for flag, key in command.aliases.items():
        doc = next(d for d in docs if d.key == key)
        _add_field_option(p, doc, flag, FIELD + key, f"same as --{key.replace('_', '-')}" if key in with_option
                          else _help(doc))  # a nested field's shortcut: the field is still listed below
    p.epilog = _epilog(docs, with_option)


def load_command_config(command: Command, args: argparse.Namespace) -> Any:
    """The command's validated config: --config, then the per-run flags' values, the options, and --set."""
    cls = command.config_class()
    overrides = {**command.overrides(args), **_given(args, FIELD), **parse_overrides(cls, args.set)}
    return load_config(cls, args.config, overrides)


# --- per-run flags and the jobs ------------------------------------------------------------------------------------

def _spark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
    p.add_argument("--overwrite", action="store_true", help="replace a finished output made with other settings")


def _spark_flags(input_help: str = "finished contract dataset", output_help: str = "output dataset directory",
                 extra: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """--input, --output, --master, --overwrite (a Spark job reading one finished dataset), then ``extra``."""
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--input", required=True, help=input_help)
        p.add_argument("--output", required=True, help=output_help)
        _spark_args(p)
        extra(p)
    return add


def _spark(name: str, args: argparse.Namespace, **kwargs):
    from spark_jobs.session import get_spark

    return get_spark(f"trait-{name}", args.master, **kwargs)


def _ingest_flags(p: argparse.ArgumentParser) -> None:
    from spark_jobs.ingest import InputSpec

    p.add_argument("--input", nargs="+", help="glob(s) or URI(s) of one source's files, instead of the config's "
                   "inputs; --source and the options after it describe them")
    _add_field_options(p, describe(InputSpec), INPUT, skip=("path",))
    p.add_argument("--output", required=True, help="output dataset directory")
    _spark_args(p)


def _ingest_inputs(args: argparse.Namespace) -> dict:
    """--input with --source, --text-field, ...: the config's inputs, one per glob."""
    spec = _given(args, INPUT)
    if not args.input:
        if spec:
            raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in spec)}: these describe --input's files; "
                              "give --input too")
        return {}
    if "source" not in spec:
        raise ConfigError("--input needs --source (the source name written to every row, e.g. wiki/enwiki-2015)")
    return {"inputs": [{"path": path, **spec} for path in args.input]}


def _ingest(cfg, args) -> dict:
    from spark_jobs.ingest import run_ingest

    return run_ingest(_spark("ingest", args), cfg, args.output, args.overwrite)


def _classifier_train(cfg, args) -> dict:
    from spark_jobs.classifier import train_classifier

    return train_classifier(cfg, args.output)


def _classifier_evaluate(cfg, args) -> dict:
    from spark_jobs.classifier_eval import evaluate_classifier

    return evaluate_classifier(cfg)


def _spark_job(target: str, name: str, **session):
    """The run of a Spark job that reads --input: ``module:function(spark, config, input, output, overwrite)``,
    imported when the command runs."""
    def run(cfg, args) -> dict:
        module, function = target.split(":")
        job = getattr(importlib.import_module(module), function)
        return job(_spark(name, args, **session), cfg, args.input, args.output, args.overwrite)
    return run


def _report(cfg, args) -> dict:
    from spark_jobs.report import run_report

    return run_report(_spark("report", args), cfg, args.input, args.output, args.validation, args.overwrite)


def _baseline_dsir(cfg, args) -> dict:
    from spark_jobs.dsir import run_dsir

    return run_dsir(_spark("baseline-dsir", args), cfg, args.input, args.target, args.output, args.overwrite)


def _synth_generate(cfg, args) -> dict:
    from synth.generate import run_generate

    return run_generate(cfg, args.output, args.chunk, args.num_chunks)


def _synth_annotate(cfg, args) -> dict:
    from synth.annotate import run_annotate

    return run_annotate(cfg, args.input, args.output)


def _train(cfg, args) -> dict | None:
    from trainer.launch import run_train

    return run_train(cfg, args.nproc, args.resume)


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=1, help="local processes (torchrun); default 1")
    p.add_argument("--resume", choices=["auto", "never"], default="auto",
                   help="auto: continue from the newest complete checkpoint, skip finished stages (default); "
                   "never: refuse an output_dir that already holds training output")


def _eval_run_flags(limit_of: str, output_help: str, output_required: bool,
                    first: Callable[[argparse.ArgumentParser], None]):
    """How ``trait eval`` and ``trait curves`` run: what is evaluated (``first``), backend, limit, output; the rest
    of the model options are eval.run.EvalOptions fields."""
    def add(p: argparse.ArgumentParser) -> None:
        first(p)
        p.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                       help="math, ads, or task names (gsm8k means trait_gsm8k); an unknown name lists the known ones")
        p.add_argument("--backend", choices=["hf", "vllm", "openai"], default="hf",
                       help="hf: transformers in this process (CPU float32, GPU bf16); vllm: a local vLLM server "
                       "started for the run; openai: any OpenAI-compatible --endpoint (default hf)")
        p.add_argument("--limit", type=int, help=f"at most this many {limit_of} (smoke runs)")
        p.add_argument("--output", required=output_required, help=output_help)
    return add


def _eval(cfg, args) -> None:
    from eval.results import markdown_table
    from eval.run import run_eval

    result = run_eval(args.model, args.tasks, backend=args.backend, limit=args.limit, output=args.output,
                      **to_dict(cfg))
    print(markdown_table(result), end="")


def _curves(cfg, args) -> dict:
    from eval.curves import run_curves

    return run_curves(args.run, args.tasks, args.output, backend=args.backend, limit=args.limit, **to_dict(cfg))


def _datamap(cfg, args) -> dict:
    from eval.datamap import run_datamap

    return run_datamap(args.source, args.output, per_source=cfg.per_source, seed=cfg.seed)


def _datamap_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", nargs="+", required=True, metavar="NAME=PATH",
                   help="a finished contract dataset, a .jsonl(.gz)/.json file (PATH#FIELD: the text field, default "
                   "text), or problems:NAME[,NAME...] (synth's problem sets)")
    p.add_argument("--output", required=True, help="directory for datamap.png, datamap.parquet and datamap.json")


def _demo(cfg, args) -> None:
    from spark_jobs.demo import run_demo

    run_demo(cfg.workdir, cfg.data, args.master)


def _model_prepare(cfg, args) -> None:
    from trait.models import prepare

    print(prepare(cfg.name, cfg.cache_dir, install=cfg.install))  # the directory alone: $(trait model prepare ...)


def _pipeline(name: str):
    def run(cfg, args) -> None:
        import trait.pipeline

        getattr(trait.pipeline, name)(cfg, args)
    return run


def _pipeline_flags(p: argparse.ArgumentParser) -> None:
    from trait.pipeline import add_run_flags

    add_run_flags(p)


# --- the commands --------------------------------------------------------------------------------------------------

GROUPS = {"pipeline": "the TRAIT experiment as one resumable job: selection, passages, the arms' training, their "
                      "evaluation and the ablation table",
          "classifier": "fastText classifiers",
          "baseline": "Spark jobs: selection baselines (random, DSIR) to a token budget",
          "synth": "task-oriented synthetic passages from a vLLM-served generator",
          "model": "pretrained base models (docs/models.md)"}

COMMANDS: dict[tuple[str, ...], Command] = {
    ("ingest",): Command(
        "JSONL(.gz/.zst)/Parquet -> contract Parquet, bad rows quarantined", "spark_jobs.ingest:IngestConfig",
        _ingest, _ingest_flags, overrides=_ingest_inputs),
    ("classifier", "train"): Command(
        "train a domain or quality classifier with held-out metrics", "spark_jobs.classifier:ClassifierConfig",
        _classifier_train,
        lambda p: p.add_argument("--output", required=True, help="directory for <name>_v<version>.bin and card.json")),
    ("classifier", "evaluate"): Command(
        "judge a trained classifier on labelled validation sets (--positive/--negative DATASET[:PREFIX,...]): ROC-AUC "
        "with a bootstrap CI, recall at the thresholds keeping 1, 3 and 5 percent of the negatives, samples; into "
        "its card",
        "spark_jobs.classifier_eval:EvaluateConfig", _classifier_evaluate),
    ("score",): Command(
        "Spark job: add a float32 score column per classifier to every row", "spark_jobs.score:ScoreConfig",
        _spark_job("spark_jobs.score:run_score", "score", scheduler_only=True),
        _spark_flags(), aliases={"--model": "models"}),
    ("select",): Command(
        "Spark job: keep documents by domain/quality thresholds (COLUMN:min=X | COLUMN:percentile=P | "
        "COLUMN:token_budget=N)", "spark_jobs.select:SelectConfig",
        _spark_job("spark_jobs.select:run_select", "select"), _spark_flags("finished scored dataset")),
    ("decontaminate",): Command(
        "Spark job: quarantine documents sharing an n-gram with a benchmark test split or eval file",
        "trait.decontam:DecontamConfig", _spark_job("spark_jobs.decontaminate:run_decontaminate", "decontaminate"),
        _spark_flags(),
        aliases={"--data": "shared_data", "--eval-file": "eval_files", "-n": "n"}),
    ("report",): Command(
        "Spark job: HTML threshold-tuning report (histograms, percentiles, threshold grid, validation P/R/F1, "
        "samples)", "spark_jobs.report:ReportConfig", _report,
        _spark_flags("finished scored dataset", "directory for report.html and report.json", lambda p: p.add_argument(
            "--validation", help="finished scored dataset to judge (default: --input when labels are given)"))),
    ("dedup",): Command(
        "Spark job: drop exact and MinHash-LSH near duplicates, keeping the smallest id per cluster",
        "trait.minhash:DedupConfig", _spark_job("spark_jobs.dedup:run_dedup", "dedup"), _spark_flags()),
    ("baseline", "random"): Command(
        "seeded uniform random sample of the pool, to a token budget", "spark_jobs.baselines:RandomConfig",
        _spark_job("spark_jobs.baselines:run_random", "baseline-random"),
        _spark_flags("finished contract dataset: the pool")),
    ("baseline", "dsir"): Command(
        "DSIR: hashed n-gram importance weights, Gumbel top-k, to a token budget", "spark_jobs.dsir:DsirConfig",
        _baseline_dsir, _spark_flags("finished contract dataset: the pool", extra=lambda p: p.add_argument(
            "--target", required=True, help="finished contract dataset: the in-domain seed (target distribution)"))),
    ("synth", "generate"): Command(
        "group the problem sets' problems, generate and validate passages (resumable)", "synth.generate:SynthConfig",
        _synth_generate, lambda p: (
            p.add_argument("--chunk", type=int, default=0, help="this run's chunk (a Slurm array task id)"),
            p.add_argument("--num-chunks", type=int, default=1, help="chunks the groups are split into"),
            p.add_argument("--output", required=True, help="output dataset (chunked: one dataset per chunk inside)")),
        aliases={"--endpoint": "server.endpoint"}),
    ("synth", "annotate"): Command(
        "0-5 educational-value labels of sampled documents (FineWeb-Edu recipe) for 'classifier train --labelled' "
        "(resumable)", "synth.annotate:AnnotateConfig", _synth_annotate, lambda p: (
            p.add_argument("--input", required=True, help="finished contract dataset to sample documents from"),
            p.add_argument("--output", required=True, help="output dataset: the documents with an integer 'label' "
                           "column")),
        aliases={"--endpoint": "server.endpoint"}),
    ("train",): Command(
        "two-stage continual pre-training with DeepSpeed ZeRO-1 (resumable)", "trainer.config:TrainConfig", _train,
        _train_flags),
    ("eval",): Command(
        "evaluate a model on the math and ads tasks (lm-evaluation-harness, local data)", "eval.run:EvalOptions",
        _eval, _eval_run_flags("items per task", "directory for results.json, results.md and samples/ (default: "
                               "print only)", False, lambda p: p.add_argument(
                                   "--model", required=True, help="Hugging Face model directory (hf, vllm; openai: "
                                   "the served model name, or a directory whose tokenizer is used and whose served "
                                   "name is looked up)")),
        aliases={"--judge-endpoint": "judge"},
        description="Evaluate a model on our lm-eval tasks (eval/tasks, read from ../shared/data; nothing is "
                    "downloaded). Writes results.json, results.md and samples/<task>.jsonl under --output; every "
                    "score carries a 95% confidence interval."),
    ("curves",): Command(
        "training curves: every export of a trainer run evaluated, score and loss against tokens seen, stage "
        "boundary marked (PNG, JSON, CSV; cached per export)", "eval.run:EvalOptions", _curves,
        _eval_run_flags("items per task and export", "directory for curves.png, curves.json and curves.csv", True,
                        lambda p: p.add_argument("--run", required=True, help="the trainer run's output_dir (stages "
                                                 "with export_every exports)"))),
    ("datamap",): Command(
        "data map: samples of each source embedded (MiniLM) and drawn in 2-D (t-SNE), with centroid distances and "
        "nearest-neighbour source mix", "eval.datamap:DatamapConfig", _datamap, _datamap_flags),
    ("pipeline", "run"): Command(
        "run every stage that must run (skipping those finished with the same fingerprint), then write "
        "ablation.{json,csv,md} and index.html", "trait.pipeline.config:PipelineConfig",
        _pipeline("run_command"), _pipeline_flags),
    ("pipeline", "plan"): Command(
        "print the stage graph: run or skip for each stage, and why", "trait.pipeline.config:PipelineConfig",
        _pipeline("plan_command")),
    ("model", "prepare"): Command(
        "install a pretrained base model, check its checksum and convert it once into a Hugging Face directory in "
        "the trait cache; prints the directory", "trait.models:PrepareConfig", _model_prepare,
        lambda p: p.add_argument("model", nargs="?", help="the model (same as --name), e.g. gemma3-270m"),
        overrides=lambda args: {"name": args.model} if args.model else {}),
    ("demo",): Command(
        "the math selection demo on ../shared/data, end to end", "spark_jobs.demo:DemoConfig", _demo,
        lambda p: p.add_argument("--master", help="Spark master (default local[*])")),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``trait`` parser. Only the command named in ``argv`` gets its options (which imports its config class:
    ``trait --help`` stays fast); with ``argv`` None, every command gets them."""
    named = tuple(a for a in argv if not a.startswith("-"))[:2] if argv is not None else None
    parser = argparse.ArgumentParser(prog="trait", description="TRAIT: in-domain data selection, synthetic "
                                     "task-oriented passages and two-stage continual pre-training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = {}
    for words, command in COMMANDS.items():
        parent = sub
        if len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=GROUPS[words[0]])
                groups[words[0]] = group.add_subparsers(dest="action", required=True, metavar="ACTION")
            parent = groups[words[0]]
        description = textwrap.fill(command.description or command.help, 100).replace("%", "%%")
        p = parent.add_parser(words[-1], help=command.help.replace("%", "%%"), description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        if named is None or named[:len(words)] == words:
            _add_config_options(p, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    command = args.command_spec
    try:
        result = command.run(load_command_config(command, args), args)
    except UserError as exc:
        print(f"trait: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result.get("counts", result.get("heldout_metrics", {})), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
