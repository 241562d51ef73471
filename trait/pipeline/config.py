"""The pipeline's one config: the paper's whole experiment, composed of the stage configs that already exist.

Every section is the config of the job that runs it (``IngestConfig``, ``DedupConfig``, ``ClassifierConfig``,
``SelectConfig``, ``SynthConfig``, a trainer ``StageConfig`` ...), validated by that job's own class, so a field
has one definition and one help text. What the pipeline adds is only what joins the jobs: the held-out splits,
the arms, the stage-1/stage-2 mixtures and where the run lives.

Datasets the pipeline makes are named, not pathed: a classifier's ``positives: [{path: seed}]`` means the
pipeline's in-domain seed (training split), ``pool`` its general pool (training split), and a name under
``inputs.datasets`` that extra ingested dataset (task train problems as positives, labelled validation sets).
A classifier's validation sets may also name ``seed_heldout`` and ``pool_heldout``, which nothing trains on.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from trait.config import ConfigError, field, from_dict

# The paper's ablation rows, in table order.
ARMS = ("base", "seed", "seed+random", "seed+dsir", "seed+trait", "trait", "trait_one_stage", "trait_no_enlightenment")
# Pipeline datasets a stage config may name instead of a path (besides inputs.datasets).
NAMED_DATASETS = ("seed", "pool")
HELDOUT_DATASETS = ("seed_heldout", "pool_heldout")
STAGE1_ROLES = ("in_domain", "selected", "replay_general")
STAGE2_ROLES = ("synthetic", "replay_general")


@dataclass
class HeldoutConfig:
    """Documents set aside before anything trains on them: the bits-per-byte evaluation sets."""

    seed_docs: int = field(200, help="in-domain seed documents held out (in-domain bits per byte)")
    pool_docs: int = field(200, help="general pool documents held out (general bits per byte: forgetting)")
    seed: int = field(0, help="the held-out documents are those with the smallest sha1('<seed>:<id>')")

    def validate(self) -> None:
        if self.seed_docs < 1 or self.pool_docs < 1:
            raise ConfigError(f"heldout: seed_docs and pool_docs must be >= 1, got {self.seed_docs}, "
                              f"{self.pool_docs}")


@dataclass
class InputsConfig:
    seed: dict = field(help="the in-domain seed: a spark_jobs.ingest.IngestConfig (inputs, tokenizer, ...)")
    pool: dict = field(help="the general web pool to mine: an IngestConfig")
    problem_sets: list[str] = field(help="the downstream tasks' training problems the passages are written about "
                                         "(synth/problem_sets/*.yaml)")
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig, help="held-out splits of seed and pool")
    datasets: dict[str, dict] = field(default_factory=dict, help="more datasets by name, each an IngestConfig "
                                      "(ingested only: no dedup, decontamination or split), that classifiers and "
                                      "their validation sets may name: e.g. task train problems as positives, "
                                      "labelled validation documents")


@dataclass
class CleaningConfig:
    dedup: dict | None = field(default_factory=dict, help="trait.minhash.DedupConfig for the pool; null: no dedup")
    decontaminate: dict | None = field(default_factory=dict, help="trait.decontam.DecontamConfig for seed and pool "
                                       "(benchmarks' test splits removed); null: no decontamination")


@dataclass
class SelectionConfig:
    classifiers: list[dict] = field(help="spark_jobs.classifier.ClassifierConfig each (domain, quality); data "
                                    "paths may name the pipeline's datasets: seed, pool")
    select: dict = field(help="spark_jobs.select.SelectConfig: the TRAIT thresholds")
    score: dict = field(default_factory=dict, help="spark_jobs.score.ScoreConfig beyond models (filled in)")
    report: dict | None = field(default_factory=dict, help="spark_jobs.report.ReportConfig of the threshold "
                                "report; null: no report")
    validation: dict[str, dict] = field(default_factory=dict, help="classifier name -> "
                                        "spark_jobs.classifier_eval.EvaluateConfig without model: its labelled "
                                        "validation sets (paths may name inputs.datasets, seed_heldout, "
                                        "pool_heldout), shown in the threshold report and the run's table")


@dataclass
class BaselinesConfig:
    random: dict = field(default_factory=dict, help="spark_jobs.baselines.RandomConfig (seed); the budget is the "
                         "TRAIT selection's tokens")
    dsir: dict = field(default_factory=dict, help="spark_jobs.dsir.DsirConfig; target: the seed, budget: the TRAIT "
                       "selection's tokens")


@dataclass
class TrainingConfig:
    knowledge: dict = field(help="stage 1: a trainer StageConfig without data.sources (filled per arm)")
    model: str = field("tiny", help="base model: a Hugging Face directory, or 'tiny' (the embedded random-weight "
                       "Llama, first pre-trained on the general pool by the 'pretrain' stage)")
    tiny_model: dict = field(default_factory=dict, help="trait.tiny_model.TinyModelConfig of the 'tiny' base")
    pretrain: dict | None = field(None, help="'tiny' base only: a trainer StageConfig without data.sources, trained "
                                  "on the general pool before every arm (so 'base' knows general text)")
    task_alignment: dict | None = field(None, help="stage 2: a trainer StageConfig without data.sources")
    knowledge_mixture: dict = field(default_factory=lambda: {"in_domain": 0.4, "selected": 0.4,
                                                             "replay_general": 0.2},
                                    help="stage-1 weights by role: in_domain (seed), selected, replay_general; "
                                    "the 'seed' arm drops 'selected' and renormalises")
    alignment_mixture: dict = field(default_factory=lambda: {"synthetic": 0.9, "replay_general": 0.1},
                                    help="stage-2 weights by role: synthetic (passages), replay_general")
    include_rejected_passages: bool = field(False, help="train on passages that failed validation (only to "
                                            "exercise the machinery with a random-weight generator; the table "
                                            "then says the passage rows measure nothing)")
    trainer: dict = field(default_factory=dict, help="trainer.config.TrainConfig fields beyond model, output_dir and "
                          "stages (seed, precision, log_every, ...)")
    nproc: int = field(1, help="training processes per node (torchrun when > 1)")
    nodes: int = field(1, help="Slurm executor: nodes per training job")

    def validate(self) -> None:
        for name, weights, roles in (("knowledge_mixture", self.knowledge_mixture, STAGE1_ROLES),
                                     ("alignment_mixture", self.alignment_mixture, STAGE2_ROLES)):
            for role, w in weights.items():
                if role not in roles:
                    raise ConfigError(f"train.{name}: unknown role {role!r}{_hint(role, roles)}")
                if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                    raise ConfigError(f"train.{name}.{role}: weight {w!r} must be a positive number")
        if self.nproc < 1 or self.nodes < 1:
            raise ConfigError(f"train.nproc and train.nodes must be >= 1, got {self.nproc}, {self.nodes}")


@dataclass
class BpbConfig:
    max_docs: int = field(200, help="held-out documents scored per set (seeded choice)")
    seq_len: int = field(256, help="tokens per scoring window")
    batch_size: int = field(8, help="windows per forward pass")

    def validate(self) -> None:
        if min(self.max_docs, self.seq_len, self.batch_size) < 1:
            raise ConfigError("eval.bpb: max_docs, seq_len and batch_size must be >= 1")


@dataclass
class EvalSection:
    tasks: list[str] = field(default_factory=lambda: ["math"], help="trait eval tasks (math, ads, or task names)")
    limit: int | None = field(None, help="items per task (null: the whole test split)")
    options: dict = field(default_factory=dict, help="eval.run.EvalOptions (batch_size, num_fewshot, max_gen_toks, "
                          "device, seed, ...)")
    backend: str = field("hf", help="hf, vllm or openai (as trait eval --backend)")
    bpb: BpbConfig = field(default_factory=BpbConfig, help="bits per byte on the held-out splits")
    curves: list[str] = field(default_factory=lambda: ["trait"], help="arms whose training curves are drawn "
                              "(trait curves: every export of the arm's trainer run evaluated); [] for none")
    datamap_per_source: int | None = field(200, help="texts per source in the data map; null: no data map")

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit must be a positive number of items per task, got {self.limit}")
        for arm in self.curves:
            if arm not in ARMS or arm == "base":
                raise ConfigError(f"eval.curves: {arm!r} is not a trained arm{_hint(arm, ARMS[1:])}")
        if self.datamap_per_source is not None and self.datamap_per_source < 2:
            raise ConfigError(f"eval.datamap_per_source must be >= 2 (or null), got {self.datamap_per_source}")


@dataclass
class SlurmConfig:
    sbatch_args: list[str] = field(default_factory=list, help="extra sbatch flags for every job, e.g. "
                                   "['--partition=cpu', '--time=04:00:00']")
    train_args: list[str] = field(default_factory=list, help="extra sbatch flags for training jobs, e.g. "
                                  "['--partition=gpu', '--gres=gpu:8']")
    synth_args: list[str] = field(default_factory=list, help="extra sbatch flags for the synth array")
    python: str | None = field(None, help="interpreter on the nodes (default: this one)")
    spark_submit: str | None = field(None, help="spark-submit on the nodes for Spark stages; default: run them "
                                     "as pyspark clients of spark_master")


@dataclass
class PipelineConfig:
    """The TRAIT experiment: selection, passages, the arms' training and their evaluation, as one resumable job."""

    inputs: InputsConfig = field(help="seed, pool, problem sets and held-out splits")
    selection: SelectionConfig = field(help="classifiers, scoring, the TRAIT thresholds and their report")
    training: TrainingConfig = field(help="base model, stage templates and mixtures")
    synth: dict = field(default_factory=dict, help="synth.generate.SynthConfig (problem_sets default to "
                        "inputs.problem_sets; the generator: server.endpoint, else a local vLLM of server.model, else "
                        "the embedded tiny one)")
    run_dir: str = field("runs/pipeline", help="where every output of the run lives")
    arms: list[str] = field(default_factory=lambda: list(ARMS), help=f"ablation rows to train: {', '.join(ARMS)}")
    cleaning: CleaningConfig = field(default_factory=CleaningConfig, help="dedup and decontamination")
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig, help="random and DSIR selections")
    eval: EvalSection = field(default_factory=EvalSection, help="tasks, limits, bits per byte, figures")
    spark_master: str | None = field(None, help="Spark master for the Spark stages (default local[*])")
    synth_chunks: int = field(1, help="Slurm executor: synth as a job array of this many chunks")
    slurm: SlurmConfig = field(default_factory=SlurmConfig, help="the Slurm executor's job settings")

    def validate(self) -> None:
        for arm in self.arms:
            if arm not in ARMS:
                raise ConfigError(f"arms: unknown arm {arm!r}{_hint(arm, ARMS)}")
        untrained = sorted(set(self.eval.curves) - set(self.arms))
        if untrained:
            raise ConfigError(f"eval.curves names arms that are not in arms: {untrained}")
        if len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms: an arm is listed twice in {self.arms}")
        if self.synth_chunks < 1:
            raise ConfigError(f"synth_chunks must be >= 1, got {self.synth_chunks}")
        stages = self.stage_configs()  # every embedded stage config, validated by its own class
        t = self.training
        if t.model == "tiny" and t.pretrain is None:
            raise ConfigError("training.model 'tiny' is a random-weight model: give training.pretrain (a stage "
                              "template) so 'base' first learns general text")
        if (self.needs_stage2() or "trait_one_stage" in self.arms) and t.task_alignment is None:
            raise ConfigError("the trait, trait_no_enlightenment and trait_one_stage arms need "
                              "training.task_alignment (stage 2, or its budget in the one-stage arm)")
        for role in ("in_domain", "replay_general"):
            if role not in t.knowledge_mixture:
                raise ConfigError(f"training.knowledge_mixture needs {role!r} (every arm trains on it)")
        if any(a.startswith("seed+") or a.startswith("trait") for a in self.arms) and \
                "selected" not in t.knowledge_mixture:
            raise ConfigError("training.knowledge_mixture needs 'selected' for the seed+<selection> and trait arms")
        if "synthetic" not in t.alignment_mixture:
            raise ConfigError("training.alignment_mixture needs 'synthetic' (the passages)")
        _check_inputs(stages["ingest_seed"], "inputs.seed", seed=True)
        _check_inputs(stages["ingest_pool"], "inputs.pool", seed=False)
        problem_sets = self.synth_config().problem_sets
        if sorted(problem_sets) != sorted(self.inputs.problem_sets):
            raise ConfigError(f"synth.problem_sets {problem_sets} differ from inputs.problem_sets "
                              f"{self.inputs.problem_sets}; leave synth.problem_sets out (it defaults to "
                              "inputs.problem_sets)")

    def needs_stage2(self) -> bool:
        return any(a in ("trait", "trait_no_enlightenment") for a in self.arms)

    def synth_config(self):
        from synth.generate import SynthConfig

        return from_dict(SynthConfig, {"problem_sets": self.inputs.problem_sets, **self.synth}, "synth")

    def stage_configs(self) -> dict:
        """Every embedded job config, built and validated by the job's own class (errors name the section)."""
        from spark_jobs.baselines import RandomConfig
        from spark_jobs.classifier import ClassifierConfig
        from spark_jobs.classifier_eval import EvaluateConfig
        from spark_jobs.dsir import DsirConfig
        from spark_jobs.ingest import IngestConfig
        from spark_jobs.report import ReportConfig
        from spark_jobs.score import ScoreConfig
        from spark_jobs.select import SelectConfig
        from trait.decontam import DecontamConfig
        from trait.minhash import DedupConfig
        from trait.tiny_model import TinyModelConfig

        out = {"ingest_seed": from_dict(IngestConfig, self.inputs.seed, "inputs.seed"),
               "ingest_pool": from_dict(IngestConfig, self.inputs.pool, "inputs.pool")}
        for name, body in self.inputs.datasets.items():
            if name in (*NAMED_DATASETS, *HELDOUT_DATASETS):
                raise ConfigError(f"inputs.datasets: {name!r} is the name of a pipeline dataset; choose another")
            out[f"ingest_{name}"] = from_dict(IngestConfig, body, f"inputs.datasets.{name}")
        if self.cleaning.dedup is not None:
            out["dedup"] = from_dict(DedupConfig, self.cleaning.dedup, "cleaning.dedup")
        if self.cleaning.decontaminate is not None:
            out["decontaminate"] = from_dict(DecontamConfig, self.cleaning.decontaminate, "cleaning.decontaminate")
        names = []
        for i, c in enumerate(self.selection.classifiers):
            cfg = from_dict(ClassifierConfig, c, f"selection.classifiers[{i}]")
            names.append(cfg.name)
            out[f"classifier_{cfg.name}"] = cfg
        if len(set(names)) != len(names):
            raise ConfigError(f"selection.classifiers: names must differ, got {names}")
        for i, c in enumerate(self.selection.classifiers):
            for side in ("positives", "negatives", "labelled"):
                for ref in c.get(side) or []:
                    path = ref if isinstance(ref, str) else ref.get("path")
                    if path in HELDOUT_DATASETS:
                        raise ConfigError(f"selection.classifiers[{i}].{side}: {path} is held out for evaluation; "
                                          "train on seed, pool or inputs.datasets")
        for name, body in self.selection.validation.items():
            if name not in names:
                raise ConfigError(f"selection.validation: no classifier named {name!r}{_hint(name, names)}")
            if "model" in body:
                raise ConfigError(f"selection.validation.{name}.model is the pipeline's classifier; remove it")
            out[f"validate_{name}"] = from_dict(EvaluateConfig, {"model": "<pipeline>", **body},
                                                f"selection.validation.{name}")
            for s in out[f"validate_{name}"].all_sets():
                if s.path in NAMED_DATASETS:
                    raise ConfigError(f"selection.validation.{name}: {s.path} is training data; validate on "
                                      f"{', '.join(HELDOUT_DATASETS)} or inputs.datasets")
        out["score"] = from_dict(ScoreConfig, {"models": names, **self.selection.score}, "selection.score")
        out["select"] = from_dict(SelectConfig, self.selection.select, "selection.select")
        if self.selection.report is not None:
            out["report"] = from_dict(ReportConfig, self.selection.report, "selection.report")
        # The budget is filled in when the TRAIT selection exists; a placeholder validates the rest.
        out["random"] = from_dict(RandomConfig, {"token_budget": 1, **self.baselines.random}, "baselines.random")
        out["dsir"] = from_dict(DsirConfig, {"token_budget": 1, **self.baselines.dsir}, "baselines.dsir")
        if "token_budget" in self.baselines.random or "budget_from" in self.baselines.random or \
                "token_budget" in self.baselines.dsir or "budget_from" in self.baselines.dsir:
            raise ConfigError("baselines: the random and DSIR budgets are the TRAIT selection's tokens (equal "
                              "budgets); remove token_budget/budget_from")
        out["synth"] = self.synth_config()
        t = self.training
        if t.model == "tiny":
            out["tiny_model"] = from_dict(TinyModelConfig, t.tiny_model, "training.tiny_model")
            out["tiny_model"].check()
        for name in ("pretrain", "knowledge", "task_alignment"):
            template = getattr(t, name)
            if template is not None:
                out[name] = stage_from_template(template, name, {"placeholder": "."})
        trainer_top = dict(t.trainer)
        for key in ("model", "output_dir", "stages"):
            if key in trainer_top:
                raise ConfigError(f"training.trainer.{key} is set by the pipeline; remove it")
        return out


def _check_inputs(ingest, where: str, seed: bool) -> None:
    """Local input globs must match files; a seed file may not be a benchmark's test split (the seed is trained on
    and is the classifier's positives: test problems there would leak into both)."""
    import glob
    import os

    from synth.problem_sets import check_not_test_split
    from trait.benchmarks import default_shared_data

    shared = os.path.realpath(default_shared_data())
    for i, spec in enumerate(ingest.inputs):
        if "://" in spec.path and not spec.path.startswith("file://"):
            continue  # remote: the ingest job lists it
        matched = glob.glob(spec.path.removeprefix("file://"))
        if not matched:
            raise ConfigError(f"{where}.inputs[{i}].path {spec.path!r} matches no files")
        for path in matched if seed else ():
            real = os.path.realpath(path)
            try:
                check_not_test_split(os.path.relpath(real, shared) if real.startswith(shared + os.sep) else real)
            except ConfigError as exc:
                raise ConfigError(f"{where}.inputs[{i}]: {path} is a benchmark's test split or evaluation file; "
                                  "the seed is trained on and is the classifier's positives, so test problems "
                                  "there would leak into both: give train data") from exc


def stage_from_template(template: dict, name: str, sources: dict[str, str], weights: dict | None = None,
                        token_budget: int | None = None, include_rejected: frozenset = frozenset()):
    """A trainer StageConfig from a pipeline template: ``sources`` (name -> dataset path) and ``weights`` (name ->
    weight, default 1) fill data.sources; ``token_budget`` overrides the template's."""
    from trainer.config import StageConfig

    data = dict(template.get("data") or {})
    if "sources" in data:
        raise ConfigError(f"training.{name}.data.sources is filled by the pipeline per arm; remove it")
    data["sources"] = [{"name": n, "path": p, "weight": (weights or {}).get(n, 1.0),
                        **({"include_rejected": True} if n in include_rejected else {})}
                       for n, p in sources.items()]
    body = {"name": name, **template, "data": data}
    if token_budget is not None:
        body["token_budget"] = token_budget
    return from_dict(StageConfig, body, f"training.{name}")


def _hint(value: str, known) -> str:
    close = difflib.get_close_matches(value, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
