"""``trait pipeline``'s config, stage graph, fingerprints and plan, without running a stage: records of finished
stages are written by hand, the way the executor writes them, and the plan is read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trait.config import ConfigError, load_config
from trait.pipeline import plan_text
from trait.pipeline.config import PipelineConfig
from trait.pipeline.graph import build_stages
from trait.pipeline.run import Context, plan

from .conftest import REPO

CONFIGS = REPO / "infra" / "configs" / "pipeline"
TINY = CONFIGS / "math_tiny.yaml"


def config(tmp_path: Path, *overrides: str, path: Path = TINY) -> PipelineConfig:
    return load_config(PipelineConfig, path, [f"run_dir={tmp_path / 'run'}", *overrides])


def finish_all(cfg: PipelineConfig) -> Context:
    """Records of every stage as finished with today's fingerprints, and their outputs present."""
    stages = build_stages(cfg)
    ctx = Context(cfg, Path(cfg.run_dir).resolve())
    for stage in stages:
        for out in stage.outputs.values():
            Path(out).mkdir(parents=True, exist_ok=True)
        ctx.write_record(stage, status="done", summary={})
    return ctx


def decisions(cfg: PipelineConfig) -> dict[str, tuple[bool, str]]:
    stages = build_stages(cfg)
    return {d.stage.name: (d.run, d.reason) for d in plan(stages, Context(cfg, Path(cfg.run_dir).resolve()))}


def test_every_arm_has_its_stages_and_inputs_come_first(tmp_path):
    stages = build_stages(config(tmp_path))
    names = [s.name for s in stages]
    seen = set()
    for s in stages:
        assert set(s.inputs) <= seen, f"{s.name} comes before its inputs {set(s.inputs) - seen}"
        seen.add(s.name)
    for arm in ("base", "seed", "seed_random", "seed_dsir", "seed_trait", "trait", "trait_one_stage",
                "trait_no_enlightenment"):
        assert f"eval_{arm}" in names
    # seed+trait is stage 1 of the trait run, not a second training of the same data
    assert "train_seed_trait" not in names
    by_name = {s.name: s for s in stages}
    assert "train_trait" in by_name["eval_seed_trait"].inputs
    assert by_name["eval_seed_trait"].config["model"].endswith("train/trait/knowledge/final")
    assert by_name["eval_trait"].config["model"].endswith("train/trait/task_alignment/final")
    # the no-enlightenment arm continues from that stage-1 export, on the stripped passages
    nol = by_name["train_trait_no_enlightenment"]
    assert nol.config["model"].endswith("train/trait/knowledge/final")
    assert [s["path"] for s in nol.config["stages"][0]["data"]["sources"]][0].endswith("passages_no_enlightenment")


def test_equal_budgets_across_arms(tmp_path):
    cfg = config(tmp_path)
    by_name = {s.name: s for s in build_stages(cfg)}
    budgets = {n: s.config["stages"][0]["token_budget"] for n, s in by_name.items()
               if n in ("train_seed", "train_seed_random", "train_seed_dsir", "train_trait")}
    assert len(set(budgets.values())) == 1, budgets
    trait = by_name["train_trait"].config["stages"]
    one = by_name["train_trait_one_stage"].config["stages"][0]
    assert one["token_budget"] == trait[0]["token_budget"] + trait[1]["token_budget"]
    # the one-stage arm's mixture gives each source the tokens it gets across the two stages
    weights = {s["name"]: s["weight"] for s in one["data"]["sources"]}
    stage1 = {s["name"]: s["weight"] for s in trait[0]["data"]["sources"]}
    b1, b2 = trait[0]["token_budget"], trait[1]["token_budget"]
    assert weights["in_domain"] * (b1 + b2) == pytest.approx(stage1["in_domain"] / sum(stage1.values()) * b1)
    # the baselines draw to the TRAIT selection's budget
    for kind in ("random", "dsir"):
        assert by_name[kind].config["job"]["budget_from"] == by_name["select"].output


def test_plan_skips_finished_stages_and_reruns_downstream_of_a_changed_threshold(tmp_path):
    cfg = config(tmp_path)
    finish_all(cfg)
    assert not any(run for run, _ in decisions(cfg).values())
    changed = config(tmp_path, "selection.select.domain.token_budget=120000")
    plan_now = decisions(changed)
    ran = {n for n, (run, _) in plan_now.items() if run}
    assert plan_now["select"][1] == "fingerprint changed (config changed: job.domain.token_budget)"
    downstream = {"select", "random", "dsir", "compare", "train_seed_random", "train_seed_dsir", "train_trait",
                  "train_trait_one_stage", "train_trait_no_enlightenment", "eval_seed_random", "eval_seed_dsir",
                  "eval_seed_trait", "eval_trait", "eval_trait_one_stage", "eval_trait_no_enlightenment",
                  "curves_trait", "datamap"}
    assert ran == downstream
    for upstream in ("ingest_seed", "ingest_pool", "dedup_pool", "split_seed", "classifier_domain_math", "score",
                     "report", "synth", "base_model", "train_seed", "eval_base", "eval_seed"):
        assert plan_now[upstream][0] is False
    assert plan_now["random"][1] == "fingerprint changed (input changed: select)"


def test_plan_reruns_interrupted_and_missing_outputs(tmp_path):
    cfg = config(tmp_path)
    ctx = finish_all(cfg)
    stages = {s.name: s for s in build_stages(cfg)}
    ctx.write_record(stages["synth"], status="running")
    ctx.write_record(stages["classifier_domain_math"], status="failed", error="killed")
    import shutil

    shutil.rmtree(stages["report"].output)
    now = decisions(cfg)
    assert now["synth"] == (True, "interrupted (running); continues")
    assert now["classifier_domain_math"] == (True, "interrupted (failed); starts again")
    assert now["report"][0] and now["report"][1].startswith("output missing")
    # the stages after an interrupted one keep their records: their inputs' fingerprints did not change
    assert now["train_trait"][0] is False


def test_code_change_is_a_reason(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    finish_all(cfg)
    from trait.pipeline import graph

    real = graph.code_version
    monkeypatch.setattr(graph, "code_version", lambda kind: "changed" if kind == "dsir" else real(kind))
    monkeypatch.setattr("trait.pipeline.run.code_version", graph.code_version)
    now = decisions(cfg)
    assert now["dsir"] == (True, "fingerprint changed (code changed)")
    assert now["random"][0] is False


@pytest.mark.parametrize("override, message", [
    ("arms=[base, seed+trai]", "unknown arm 'seed+trai'; did you mean 'seed+trait'?"),
    ("baselines.random.token_budget=1000", "budgets are the TRAIT selection's tokens (equal budgets)"),
    ("inputs.seed.inputs.0.path=/nonexistent/*.jsonl", "inputs.seed.inputs[0].path '/nonexistent/*.jsonl' "
                                                       "matches no files"),
    ("inputs.seed.inputs.0.path=${data}/benchmarks/gsm8k/test.jsonl", "is a benchmark's test split"),
    ("training.knowledge_mixture.selectd=0.4", "unknown role 'selectd'; did you mean 'selected'?"),
    ("training.knowledge.lrr=1", "unknown key 'lrr'"),
    ("training.task_alignment=null", "need training.task_alignment"),
    ("selection.validation.domain_mat={}", "no classifier named 'domain_mat'; did you mean 'domain_math'?"),
    ("selection.validation.domain_math.sets.0.path=seed", "seed is training data; validate on seed_heldout"),
    ("selection.validation.domain_math.model=x", "validation.domain_math.model is the pipeline's classifier"),
    ("selection.classifiers.0.positives.0.path=seed_heldout", "seed_heldout is held out for evaluation"),
    ("inputs.datasets.pool={}", "'pool' is the name of a pipeline dataset"),
])
def test_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError) as info:
        config(tmp_path, override)
    assert message in str(info.value)


def test_classifiers_are_validated_on_datasets_nothing_trains_on_before_the_report(tmp_path):
    cfg = config(tmp_path)
    by_name = {s.name: s for s in build_stages(cfg)}
    data = Path(cfg.run_dir).resolve() / "data"
    check = by_name["validate_domain_math"]
    assert check.kind == "validate" and check.inputs[0] == "classifier_domain_math"
    assert check.config["model"] == by_name["classifier_domain_math"].output
    assert check.output == str(Path(check.config["model"]) / "validation.json")
    paths = {s["name"]: s["path"] for s in check.config["sets"]}
    assert paths["seed-heldout"] == str(data / "seed_heldout") and paths["wiki-heldout"] == str(data / "pool_heldout")
    assert paths["openstax-contemporary"] == str(data / "input_unseen_math")
    assert {"split_seed", "split_pool", "ingest_unseen_math", "ingest_problems"} <= set(check.inputs)
    # the task problems are positives of the classifier too: the validation drops those it trained on
    positives = by_name["classifier_domain_math"].config["positives"]
    assert str(data / "input_problems") in [p["path"] for p in positives] and check.config["exclude_training"]
    assert "validate_domain_math" in by_name["report"].inputs
    assert "validate_quality_edu" not in by_name  # no labelled sets given for it


def test_paper_scale_config_validates_and_plans(tmp_path):
    cfg = load_config(PipelineConfig, CONFIGS / "math_paper.yaml", [f"run_dir={tmp_path / 'paper'}"])
    text = plan_text(cfg)
    assert "33 of 33 stages to run" in text
    stages = {s.name: s for s in build_stages(cfg)}
    # one classifier: the quality gate is the heuristic signal, computed where the domain score reaches a floor
    assert [n for n in stages if n.startswith("classifier_")] == ["classifier_domain_math"]
    assert stages["score"].config["job"]["signals_where"] == {"column": "score_domain_math_v1", "min": 0.05,
                                                               "percentile": None, "token_budget": None}
    assert cfg.training.model.endswith("Mistral-7B-v0.1")
    assert stages["eval_trait"].config["limit"] is None  # the nine benchmarks at full size
    assert stages["eval_trait"].config["tasks"] == ["math"]
    assert cfg.synth_config().server.endpoint.startswith("http://")
    assert cfg.spark_master.startswith("spark://")


def test_ads_config_plans(tmp_path):
    cfg = config(tmp_path, path=CONFIGS / "ads_tiny.yaml")
    stages = {s.name: s for s in build_stages(cfg)}
    from synth.problem_sets import load_problem_sets

    assert {d.kind for d in load_problem_sets(cfg.synth_config().problem_sets)} == {"entity_centric"}
    assert stages["eval_trait"].config["tasks"] == ["ads"]
    assert stages["classifier_domain_ads"].config["positives"][0]["path"] == stages["split_seed"].outputs["train"]


def test_resolved_config_and_plan_text(tmp_path):
    cfg = config(tmp_path)
    text = plan_text(cfg)
    assert text.splitlines()[0] == f"run folder: {(tmp_path / 'run').resolve()}"
    assert "run   ingest_seed" in text and f"{len(build_stages(cfg))} of {len(build_stages(cfg))}" in text
    json.dumps(build_stages(cfg)[0].config)  # every stage config is plain data


def test_fingerprints_do_not_depend_on_the_process(tmp_path):
    """A rerun is another process: its fingerprints must be these (no set or hash order in a stage's config)."""
    import os
    import subprocess
    import sys

    code = ("import json, sys; from trait.config import load_config; from trait.pipeline.config import "
            "PipelineConfig; from trait.pipeline.graph import build_stages; "
            f"cfg = load_config(PipelineConfig, {str(TINY)!r}, ['run_dir={tmp_path / 'run'}']); "
            "print(json.dumps({s.name: s.fingerprint for s in build_stages(cfg)}))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed}).stdout)
            for seed in ("1", "2")]
    assert runs[0] == runs[1]


def test_only_runs_stages_whose_inputs_finished_or_run_before_them(tmp_path, monkeypatch):
    from trait import UserError
    from trait.pipeline import run

    cfg = config(tmp_path)
    ran = []
    monkeypatch.setattr(run, "run_one", lambda d, ctx: ran.append(d.stage.name))  # the order, not the jobs
    with pytest.raises(UserError, match="decontaminate_seed needs ingest_seed, which has not finished"):
        run.run_stages(cfg, only=["decontaminate_seed"])
    assert ran == []
    run.run_stages(cfg, only=["split_seed", "ingest_seed", "decontaminate_seed"])
    assert ran == ["ingest_seed", "decontaminate_seed", "split_seed"]
