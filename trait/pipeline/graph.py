"""The pipeline's stages: what each runs, on what, into where, and the fingerprint that decides whether it reruns.

A stage is a name, a kind (the job it runs), its resolved job config (paths filled in), the stages whose outputs
it reads and its output paths. Its fingerprint is sha1 over the kind, the resolved config, the fingerprints of
its inputs (and, for the first stages, the input files' sizes and times) and the code version of the modules
that implement the kind. A stage whose recorded fingerprint matches is skipped; changing a threshold therefore
reruns select and what reads it, and nothing upstream.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trait.config import to_dict

from .config import HELDOUT_DATASETS, STAGE1_ROLES, PipelineConfig, stage_from_template

REPO = Path(__file__).resolve().parents[2]

# The code each kind runs: its fingerprint changes when one of these files does.
KIND_CODE = {
    "ingest": ["spark_jobs/ingest.py", "spark_jobs/dataset.py", "trait/contract.py"],
    "dedup": ["spark_jobs/dedup.py", "spark_jobs/dedup_graph.py", "trait/minhash.py"],
    "decontaminate": ["spark_jobs/decontaminate.py", "trait/decontam.py"],
    "split": ["spark_jobs/split.py"],
    "classifier": ["spark_jobs/classifier.py", "spark_jobs/text.py"],
    "validate": ["spark_jobs/classifier_eval.py", "spark_jobs/classifier.py", "spark_jobs/text.py"],
    "score": ["spark_jobs/score.py", "spark_jobs/text.py"],
    "select": ["spark_jobs/select.py"],
    "report": ["spark_jobs/report.py", "spark_jobs/report_stats.py", "spark_jobs/report_html.py"],
    "random": ["spark_jobs/baselines.py"],
    "dsir": ["spark_jobs/dsir.py", "spark_jobs/baselines.py"],
    "synth": ["synth/generate.py", "synth/grouping.py", "synth/prompts.py", "synth/validate.py", "synth/passage.py",
              "synth/store.py", "synth/problem_sets.py", "synth/problem_files.py", "trait/answer_match.py"],
    "strip_enlightenment": ["synth/passage.py", "trait/pipeline/steps.py"],
    "base_model": ["trait/tiny_model.py", "trainer/train.py", "trainer/data.py"],
    "train": ["trainer/train.py", "trainer/data.py", "trainer/mixture.py", "trainer/token_cache.py",
              "trainer/source_files.py", "trainer/engine.py", "trainer/model.py"],
    "eval": ["eval/run.py", "eval/bpb.py", "eval/metrics.py", "eval/math_tasks.py"],
    "curves": ["eval/curves.py", "eval/run.py"],
    "datamap": ["eval/datamap.py"],
    "compare": ["spark_jobs/compare.py"],
}
SPARK_KINDS = frozenset({"ingest", "dedup", "decontaminate", "split", "score", "select", "report", "random", "dsir",
                         "compare"})


def arm_id(arm: str) -> str:
    """An arm's directory name: 'seed+trait' -> 'seed_trait'."""
    return arm.replace("+", "_")


@dataclass
class Stage:
    name: str
    kind: str
    config: dict  # the resolved job config, paths filled in: what the fingerprint covers
    inputs: list[str]  # upstream stage names
    outputs: dict[str, str]  # role -> path (the main output first)
    external: list[str] = field(default_factory=list)  # input file globs read from outside the run
    fingerprint: str = ""
    input_fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return next(iter(self.outputs.values()))

    @property
    def spark(self) -> bool:
        return self.kind in SPARK_KINDS


def code_version(kind: str) -> str:
    h = hashlib.sha1()
    for rel in KIND_CODE[kind]:
        path = REPO / rel
        h.update(rel.encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:16]


def _external_files(patterns: list[str]) -> list[dict]:
    """Size and mtime of local input files (remote URIs are fingerprinted by the Spark job itself)."""
    files = []
    for pattern in patterns:
        if "://" in pattern and not pattern.startswith("file://"):
            files.append({"uri": pattern})
            continue
        for path in sorted(glob.glob(pattern.removeprefix("file://"))):
            st = os.stat(path)
            files.append({"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return files


def fingerprint_stages(stages: list[Stage]) -> None:
    """Fill every stage's fingerprint, in order (inputs come first)."""
    by_name = {}
    for stage in stages:
        stage.input_fingerprints = {n: by_name[n].fingerprint for n in stage.inputs}
        blob = {"kind": stage.kind, "config": stage.config, "code": code_version(stage.kind),
                "inputs": stage.input_fingerprints, "external": _external_files(stage.external)}
        stage.fingerprint = hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()
        by_name[stage.name] = stage


class _Builder:
    def __init__(self, cfg: PipelineConfig, run_dir: Path):
        self.cfg, self.run = cfg, run_dir
        self.stages: list[Stage] = []
        self.producer: dict[str, str] = {}  # dataset path -> stage name

    def path(self, *parts: str) -> str:
        return str(self.run.joinpath(*parts))

    def producer_of(self, path: str) -> str | None:
        """The stage whose output is ``path`` or holds it (a trainer run holds its stages' exports)."""
        p = Path(path)
        for candidate in (p, *p.parents):
            if str(candidate) in self.producer:
                return self.producer[str(candidate)]
        return None

    def add(self, name: str, kind: str, config: dict, outputs: dict[str, str], reads: list[str] = (),
            external: list[str] = ()) -> Stage:
        inputs = [n for n in map(self.producer_of, reads) if n]
        stage = Stage(name, kind, config, list(dict.fromkeys(inputs)), outputs, list(external))
        self.stages.append(stage)
        for path in outputs.values():
            self.producer[path] = name
        return stage


def build_stages(cfg: PipelineConfig, run_dir: str | Path | None = None) -> list[Stage]:
    """The run's stages in an order where every stage comes after its inputs, fingerprints filled."""
    run = Path(run_dir or cfg.run_dir).resolve()
    jobs = cfg.stage_configs()
    b = _Builder(cfg, run)
    d = lambda name: b.path("data", name)  # noqa: E731

    # Ingest, clean, and split off the held-out documents before anything trains on them.
    clean = {}
    for which in ("seed", "pool"):
        ingest = to_dict(jobs[f"ingest_{which}"])
        b.add(f"ingest_{which}", "ingest", ingest, {"data": d(f"raw_{which}")},
              external=[s["path"] for s in ingest["inputs"]])
        current = d(f"raw_{which}")
        if which == "pool" and "dedup" in jobs:
            b.add("dedup_pool", "dedup", {"job": to_dict(jobs["dedup"]), "input": current}, {"data": d("dedup_pool")},
                  [current])
            current = d("dedup_pool")
        if "decontaminate" in jobs:
            b.add(f"decontaminate_{which}", "decontaminate", {"job": to_dict(jobs["decontaminate"]), "input": current},
                  {"data": d(f"{which}_clean")}, [current])
            current = d(f"{which}_clean")
        held = getattr(cfg.inputs.heldout, f"{which}_docs")
        b.add(f"split_{which}", "split", {"input": current, "heldout_docs": held, "seed": cfg.inputs.heldout.seed},
              {"train": d(f"{which}_train"), "heldout": d(f"{which}_heldout")}, [current])
        clean[which] = d(f"{which}_train")
    named = {**clean, **{name: d(name) for name in HELDOUT_DATASETS}}
    for name in cfg.inputs.datasets:
        ingest = to_dict(jobs[f"ingest_{name}"])
        named[name] = d(f"input_{name}")
        b.add(f"ingest_{name}", "ingest", ingest, {"data": named[name]},
              external=[s["path"] for s in ingest["inputs"]])

    def resolve(refs: list[dict]) -> list[str]:
        for ref in refs:
            ref["path"] = named.get(ref["path"], ref["path"])
        return [ref["path"] for ref in refs]

    # Classifiers on the training splits (and their validation on data they never saw), scoring, the TRAIT
    # selection and its baselines at the same budget.
    models, validations = [], []
    for key, job in jobs.items():
        if not key.startswith("classifier_"):
            continue
        body = to_dict(job)
        out = b.path("models", job.name)
        b.add(key, "classifier", body, {"model": out}, [p for s in ("positives", "negatives", "labelled")
                                                        for p in resolve(body[s])])
        models.append(out)
        if f"validate_{job.name}" in jobs:
            check = jobs[f"validate_{job.name}"]
            sets = [to_dict(v) for v in check.all_sets()]  # --positive/--negative specs as sets, to name paths
            check = {**to_dict(check), "model": out, "sets": sets, "positive": [], "negative": []}
            reads = resolve(sets)
            validations.append(str(Path(out) / "validation.json"))
            b.add(f"validate_{job.name}", "validate", check, {"validation": validations[-1]}, [out, *reads])
    score = {**to_dict(jobs["score"]), "models": models}
    b.add("score", "score", {"job": score, "input": clean["pool"]}, {"data": d("scored")}, [clean["pool"], *models])
    b.add("select", "select", {"job": to_dict(jobs["select"]), "input": d("scored")}, {"data": d("select_trait")},
          [d("scored")])
    if "report" in jobs:
        b.add("report", "report", {"job": to_dict(jobs["report"]), "input": d("scored")}, {"report": b.path("report")},
              [d("scored"), *validations])
    selections = {"trait": d("select_trait")}
    for kind in ("random", "dsir"):
        body = {**to_dict(jobs[kind]), "token_budget": None, "budget_from": d("select_trait")}
        reads = [d("scored"), d("select_trait")] + ([clean["seed"]] if kind == "dsir" else [])
        b.add(kind, kind, {"job": body, "input": d("scored"), "target": clean["seed"]},
              {"data": d(f"select_{kind}")}, reads)
        selections[kind] = d(f"select_{kind}")

    b.add("compare", "compare", {"selections": selections}, {"tables": b.path("selections")},
          list(selections.values()))

    # Passages from the downstream tasks' train problems.
    passages = {}
    if cfg.needs_stage2() or "trait_one_stage" in cfg.arms:
        synth = to_dict(jobs["synth"])
        chunks = {"chunks": d("passages_chunks")} if cfg.synth_chunks > 1 else {}
        b.add("synth", "synth", {"job": synth, "chunks": cfg.synth_chunks}, {"data": d("passages"), **chunks},
              external=_problem_set_files(jobs["synth"]))
        passages["with"] = d("passages")
        if "trait_no_enlightenment" in cfg.arms:
            b.add("passages_no_enlightenment", "strip_enlightenment", {"input": d("passages")},
                  {"data": d("passages_no_enlightenment")}, [d("passages")])
            passages["without"] = d("passages_no_enlightenment")

    # The base model, then one trainer run per training unit, then evaluation per arm.
    t = cfg.training
    if t.model == "tiny":
        pretrain = stage_from_template(t.pretrain, "pretrain", {"replay_general": clean["pool"]})
        base_run = b.path("models", "base")
        b.add("base_model", "base_model", {"tiny_model": to_dict(jobs["tiny_model"]),
                                           "train": _train_config(cfg, "<tiny>", base_run, [to_dict(pretrain)])},
              {"run": base_run}, [clean["pool"]])
        base_dir = str(Path(base_run) / "pretrain" / "final")
    else:
        base_dir = t.model
    units = _training_units(cfg, jobs, clean, selections, passages, base_dir, b)
    arm_models = {"base": base_dir}
    for unit, (train_cfg, arm_stage) in units.items():
        reads = [s["path"] for st in train_cfg["stages"] for s in st["data"]["sources"]] + [train_cfg["model"]]
        b.add(f"train_{unit}", "train", train_cfg, {"run": train_cfg["output_dir"]}, reads)
        for arm, stage_name in arm_stage.items():
            arm_models[arm] = str(Path(train_cfg["output_dir"]) / stage_name / "final")
    for arm in cfg.arms:
        model = arm_models[arm]
        body = {"model": model, "tasks": cfg.eval.tasks, "limit": cfg.eval.limit, "backend": cfg.eval.backend,
                "options": cfg.eval.options, "bpb": to_dict(cfg.eval.bpb),
                "heldout": {"in_domain": d("seed_heldout"), "general": d("pool_heldout")}}
        b.add(f"eval_{arm_id(arm)}", "eval", body, {"eval": b.path("eval", arm_id(arm))},
              [model, d("seed_heldout"), d("pool_heldout")])
    for arm in cfg.eval.curves:
        unit = next(u for u, (_, arms) in units.items() if arm in arms)
        train_cfg = units[unit][0]
        if f"curves_{unit}" not in b.producer.values():
            body = {"run": train_cfg["output_dir"], "tasks": cfg.eval.tasks, "limit": cfg.eval.limit,
                    "backend": cfg.eval.backend, "options": cfg.eval.options}
            b.add(f"curves_{unit}", "curves", body, {"figure": b.path("figures", f"curves_{unit}")},
                  [train_cfg["output_dir"]])
    if cfg.eval.datamap_per_source:
        sources = {"seed": clean["seed"], "pool": clean["pool"], **{f"select_{k}": v for k, v in selections.items()}}
        if "with" in passages:
            sources["passages"] = passages["with"]
        b.add("datamap", "datamap", {"sources": sources, "per_source": cfg.eval.datamap_per_source,
                                     "seed": cfg.inputs.heldout.seed},
              {"figure": b.path("figures", "datamap")}, list(sources.values()))
    fingerprint_stages(b.stages)
    return b.stages


def _problem_set_files(synth) -> list[str]:
    """The problem sets' data files (the passages are written about their problems)."""
    from synth.problem_sets import load_problem_sets, problem_set_files

    return problem_set_files(load_problem_sets(synth.problem_sets), synth.shared_data)


def _train_config(cfg: PipelineConfig, model: str, output_dir: str, stages: list[dict]) -> dict:
    return {**cfg.training.trainer, "model": model, "output_dir": output_dir, "stages": stages}


def _training_units(cfg, jobs, clean, selections, passages, base_dir, b) -> dict:
    """unit -> (trainer config dict, {arm: stage whose final export is the arm's model}).

    Arms that share training share a unit: seed+trait is the trait run after stage 1 (the same data, seeds and
    budget), so it is not trained twice; trait_no_enlightenment continues from that stage-1 export."""
    t = cfg.training
    k1, k2 = t.knowledge_mixture, t.alignment_mixture
    rejected = frozenset({"synthetic"}) if t.include_rejected_passages else frozenset()
    units = {}

    def stage1(selection: str | None) -> dict:
        sources = {"in_domain": clean["seed"], "replay_general": clean["pool"]}
        if selection:
            sources["selected"] = selections[selection]
        return to_dict(stage_from_template(t.knowledge, "knowledge", sources, k1))

    def stage2(which: str) -> dict:
        sources = {"synthetic": passages[which]}
        if "replay_general" in k2:
            sources["replay_general"] = clean["pool"]
        return to_dict(stage_from_template(t.task_alignment, "task_alignment", sources, k2,
                                           include_rejected=rejected))

    def out(unit: str) -> str:
        return b.path("train", unit)

    arms = set(cfg.arms)
    if "seed" in arms:
        units["seed"] = (_train_config(cfg, base_dir, out("seed"), [stage1(None)]), {"seed": "knowledge"})
    for sel in ("random", "dsir"):
        if f"seed+{sel}" in arms:
            unit = f"seed_{sel}"
            units[unit] = (_train_config(cfg, base_dir, out(unit), [stage1(sel)]), {f"seed+{sel}": "knowledge"})
    if arms & {"seed+trait", "trait", "trait_no_enlightenment"}:
        stages = [stage1("trait")] + ([stage2("with")] if "trait" in arms else [])
        names = {"seed+trait": "knowledge", "trait": "task_alignment"}
        units["trait"] = (_train_config(cfg, base_dir, out("trait"), stages), {a: names[a] for a in names
                                                                                 if a in arms})
    if "trait_no_enlightenment" in arms:
        start = str(Path(out("trait")) / "knowledge" / "final")
        second = {**stage2("without"), "init_from": "base"}
        units["trait_no_enlightenment"] = (_train_config(cfg, start, out("trait_no_enlightenment"), [second]),
                                           {"trait_no_enlightenment": "task_alignment"})
    if "trait_one_stage" in arms:
        units["trait_one_stage"] = (_train_config(cfg, base_dir, out("trait_one_stage"),
                                                  [one_stage(cfg, jobs, clean, selections, passages, rejected)]),
                                    {"trait_one_stage": "one_stage"})
    return units


def one_stage(cfg, jobs, clean, selections, passages, rejected) -> dict:
    """The two stages' data in one stage: each source gets the tokens it gets across the two stages (so the data
    seen is the same, only the order differs), under stage 1's optimizer settings and the two budgets summed."""
    t = cfg.training
    s1, s2 = jobs["knowledge"], jobs["task_alignment"]
    b1, b2 = s1.steps * s1.tokens_per_step, s2.steps * s2.tokens_per_step
    w1 = {k: v / sum(t.knowledge_mixture.values()) for k, v in t.knowledge_mixture.items()}
    w2 = {k: v / sum(t.alignment_mixture.values()) for k, v in t.alignment_mixture.items()}
    # In a fixed order: the config (and so the fingerprint) must not depend on set order, which varies by process.
    tokens = {role: w1.get(role, 0) * b1 + w2.get(role, 0) * b2 for role in (*STAGE1_ROLES, "synthetic")}
    paths = {"in_domain": clean["seed"], "selected": selections["trait"], "replay_general": clean["pool"],
             "synthetic": passages["with"]}
    weights = {role: n / (b1 + b2) for role, n in tokens.items() if n > 0}
    stage = stage_from_template(t.knowledge, "one_stage", {r: paths[r] for r in weights}, weights, b1 + b2,
                                rejected)
    return to_dict(stage)
