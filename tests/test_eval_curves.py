"""Training curves end to end: a tiny two-stage run (real DeepSpeed on CPU) with ``export_every``, SIGKILLed and
resumed in stage 1, then ``trait curves`` on its exports with a real lm-eval task (QADSM, hf backend, 4 items).

The run: stage 1 (knowledge) 12 steps, stage 2 (task_alignment) 8 steps, 8 sequences x 64 tokens = 512 tokens a
step, a checkpoint and an export every 4 steps. Exports: knowledge step 4, 8, final (12); task_alignment step 4,
final (8): five points at 2048, 4096, 6144, 8192 and 10240 tokens, the stage boundary at 6144.
"""

from __future__ import annotations

import json
import signal

import pytest

from eval.curves import plot_curves, run_exports
from trainer.checkpoint import MARKER
from trainer.model import EXPORT_MARKER, sha256_file, step_exports
from trait.config import ConfigError

from .support.cli import trait, trait_killed_when
from .support.training import ENV, events, tiny_config, write_config

train = pytest.mark.train
TOKENS_PER_STEP = 8 * 64


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, datasets) -> dict:
    """Killed right after stage 1's step-8 checkpoint; that checkpoint then damaged, so the resumed run starts at
    step 4 and must drop and remake the step-8 export. Plus a reference run of stage 1 without exports."""
    root = tmp_path_factory.mktemp("curves")
    cfg = tiny_config(root, tiny_model, datasets)
    for stage, steps in zip(cfg["stages"], (12, 8)):
        stage.update(token_budget=steps * TOKENS_PER_STEP, export_every=4)
    config = write_config(root, cfg)
    out = root / "out"
    # SIGKILLed from outside once the step-8 checkpoint is complete (its export was written just before it).
    ckpt = out / "knowledge" / "checkpoints" / "step_00000008"
    killed = trait_killed_when((ckpt / MARKER).exists, "train", "--config", config, env=ENV)
    step8 = out / "knowledge" / "exports" / "step_00000008"
    first_step8 = sha256_file(step8 / "model.safetensors")
    with open(ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "r+b") as fh:
        fh.truncate(1000)
    resumed = trait("train", "--config", config, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_root = root / "reference"
    cfg = tiny_config(ref_root, tiny_model, datasets)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update(token_budget=12 * TOKENS_PER_STEP)
    reference = trait("train", "--config", write_config(ref_root, cfg), env=ENV)
    assert reference.returncode == 0, reference.stderr[-3000:]
    return {"out": out, "killed": killed, "resumed": resumed, "first_step8": first_step8,
            "reference": ref_root / "out"}


@train
def test_exports_survive_resume_and_leave_the_loss_curve_alone(run):
    out = run["out"]
    assert run["killed"].returncode == -signal.SIGKILL
    err = run["resumed"].stderr
    assert "step_00000004 (step 4 of 12)" in err  # the damaged step-8 checkpoint was skipped
    assert "removed" in err and "exports/step_00000008 (made after step 4" in err
    assert [s for s, _ in step_exports(out / "knowledge")] == [4, 8]
    assert [s for s, _ in step_exports(out / "task_alignment")] == [4]
    assert not [p for p in (out / "knowledge" / "exports").iterdir() if not p.name.startswith("step_")]
    # remade from the same weights: the resumed run reaches step 8 bit-identically
    assert sha256_file(out / "knowledge/exports/step_00000008/model.safetensors") == run["first_step8"]
    for stage, offset, paths in (("knowledge", 0, ["exports/step_00000004", "exports/step_00000008", "final"]),
                                 ("task_alignment", 12 * TOKENS_PER_STEP, ["exports/step_00000004", "final"])):
        for path in paths:
            marker = json.loads((out / stage / path / EXPORT_MARKER).read_text())
            tokens = marker["step"] * TOKENS_PER_STEP
            assert marker["stage"] == stage and marker["tokens"] == tokens
            assert marker["tokens_cumulative"] == offset + tokens
            assert marker["stage_index"] == (stage == "task_alignment")
    # exports do not touch the training: the same losses as a run without them
    with_exports = [(r["step"], r["loss"]) for r in events(out, "knowledge")]
    without = [(r["step"], r["loss"]) for r in events(run["reference"], "knowledge")]
    assert with_exports == without and len(without) == 12
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "knowledge/exports/step_00000004").config.use_cache


@train
def test_trait_curves_evaluates_every_export_and_caches(run, tmp_path):
    args = ("curves", "--run", str(run["out"]), "--tasks", "qadsm", "--limit", "4", "--output", str(tmp_path))
    first = trait(*args, env=ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((tmp_path / "curves.json").read_text())
    points = result["points"]
    assert [(p["stage"], p["step"]) for p in points] == [("knowledge", 4), ("knowledge", 8), ("knowledge", 12),
                                                          ("task_alignment", 4), ("task_alignment", 8)]
    assert [p["tokens_cumulative"] for p in points] == [2048, 4096, 6144, 8192, 10240]
    assert result["boundaries"] == [{"stage": "task_alignment", "tokens_cumulative": 6144}]
    for p in points:
        acc = p["scores"]["trait_qadsm"]["acc"]
        assert acc["n"] == 4 and acc["ci"][0] <= acc["value"] <= acc["ci"][1]
    loss = result["loss"]
    assert len(loss) == 20 and [r["tokens_cumulative"] for r in loss] == [512 * i for i in range(1, 21)]
    rows = (tmp_path / "curves.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 * len(points[0]["scores"]["trait_qadsm"])
    from PIL import Image

    with Image.open(tmp_path / "curves.png") as image:
        image.verify()
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 500
    assert result["counts"] == {"exports": 5, "evaluated": 5, "cached": 0}
    # a rerun evaluates only what has no cached result: here the one export whose cache is removed
    caches = sorted((run["out"] / "task_alignment" / "final" / "evals").glob("*.json"))
    assert len(caches) == 1
    caches[0].unlink()
    second = trait(*args, env=ENV)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "curves.json").read_text())
    assert again["counts"] == {"exports": 5, "evaluated": 1, "cached": 4}
    assert [p["scores"] for p in again["points"]] == [p["scores"] for p in points]  # seeded: the same scores


def test_plot_skips_scores_that_were_not_computed(tmp_path):
    """A judge-less win rate comes back as value None (eval.run): no line for it, the other metric still drawn."""
    def point(stage, index, step, acc):
        return {"stage": stage, "stage_index": index, "step": step, "tokens": step * 100,
                "tokens_cumulative": index * 400 + step * 100,
                "scores": {"t": {"acc": {"value": acc, "ci": [acc - 0.1, acc + 0.1], "n": 4},
                                 "win_rate": {"value": None, "ci": [None, None], "n": 0}}}}

    points = [point("knowledge", 0, 2, 0.2), point("knowledge", 0, 4, 0.3), point("task_alignment", 1, 2, 0.5)]
    losses = [{"stage": p["stage"], "step": p["step"], "tokens_cumulative": p["tokens_cumulative"], "loss": 1.0}
              for p in points]
    from PIL import Image

    with Image.open(plot_curves(points, losses, tmp_path / "c.png")) as image:
        assert image.format == "PNG" and image.size == (840, 624)  # 7 x 5.2 in at 120 dpi: the task's and the loss


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a trainer run"):
        run_exports(tmp_path)
    (tmp_path / "train_config.json").write_text(json.dumps({"stages": [{"name": "knowledge"}]}))
    with pytest.raises(ConfigError, match="has no finished exports"):
        run_exports(tmp_path)


def test_export_every_is_validated(tiny_model, datasets, tmp_path):
    from trainer.config import TrainConfig
    from trait.config import from_dict

    cfg = tiny_config(tmp_path, tiny_model, datasets, export=False)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0]["export_every"] = 4
    with pytest.raises(ConfigError, match="export_every 4 needs export: true"):
        from_dict(TrainConfig, cfg)
    cfg["stages"][0]["export_every"] = -1
    with pytest.raises(ConfigError, match="export_every must be >= 0"):
        from_dict(TrainConfig, {**cfg, "export": True})
