"""``trait pipeline run`` end to end on a reduced math_tiny config (real Spark, the embedded vLLM generator, real
DeepSpeed training, lm-eval): the ablation table and the run page; a rerun skips everything; SIGKILL inside a
Spark stage, inside synth and inside training, then a rerun, gives the uninterrupted run's table.

The reduced config keeps every arm and every stage but shrinks the data (the OpenStax seed; the web samples as the
pool, no Wikipedia) and the budgets, so one full run takes minutes on 2 cores. The kill tests reuse the reference
run's folder: they drop the records of the stage to kill and of everything downstream of it (as if those had never
run), start the pipeline, SIGKILL its whole process group (the pipeline, its JVM and its vLLM server: a node
lost) once the stage is well under way, rerun it to the end, and compare the table with the reference's.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from .support.cli import trait, trait_killed_when
from .support.pipeline import ENV, reduced_config

pytestmark = pytest.mark.pipeline
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config = reduced_config(root)
    proc = trait("pipeline", "run", "--config", str(config), env=ENV, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = root / "run"
    return {"config": config, "run": run, "table": table(run), "stdout": proc.stdout}


def table(run: Path) -> dict:
    return json.loads((run / "ablation.json").read_text())


def test_ablation_table_has_every_arm_with_intervals(reference):
    rows = {r["arm"]: r for r in reference["table"]["rows"]}
    assert list(rows) == ["base", "seed", "seed+random", "seed+dsir", "seed+trait", "trait", "trait_one_stage",
                          "trait_no_enlightenment"]
    for arm, row in rows.items():
        for which in ("in_domain", "general"):
            b = row["bpb"][which]
            assert b["ci"][0] <= b["value"] <= b["ci"][1], (arm, which, b)
            assert b["n_docs"] == 30
        assert {"trait_gsm8k", "trait_mathqa"} <= {k.split("/")[0] for k in row["tasks"]}, row["tasks"]
    # training moves the in-domain figure away from the base model's
    assert rows["seed"]["bpb"]["in_domain"]["value"] != rows["base"]["bpb"]["in_domain"]["value"]
    # tokens per source: the stage-1 arms saw the same total, trait saw stage 2 on top
    totals = {arm: sum(r["tokens_by_source"].values()) for arm, r in rows.items()}
    assert totals["base"] == 0
    assert totals["seed"] == totals["seed+random"] == totals["seed+dsir"] == totals["seed+trait"]
    assert totals["trait"] == totals["trait_one_stage"] > totals["seed+trait"]
    assert "synthetic" in rows["trait"]["tokens_by_source"]
    # the embedded generator's passages all fail validation: the table says what the passage rows measure, and the
    # passages' manifest which generator wrote them
    assert any("measure the machinery" in c for c in reference["table"]["caveats"])
    passages = json.loads((reference["run"] / "data" / "passages" / "manifest.json").read_text())
    assert passages["generator"] == "embedded tiny random-weight model"
    md = (reference["run"] / "ablation.md").read_text()
    assert md.startswith("> ") and "| seed+trait |" in md
    assert (reference["run"] / "ablation.csv").read_text().splitlines()[0].startswith("arm,bpb_in_domain,")


def test_domain_classifier_validation_is_in_the_table_the_report_and_the_output(reference):
    """The classifier judged on sets nothing trained on, beside its held-out metrics: in ablation.json/.md, the
    printed output and the threshold report; the task problems it trained on were dropped from the task sets."""
    checks = reference["table"]["classifiers"]["score_domain_math_v1"]
    assert set(checks["sets"]) == {"seed-heldout", "openstax-contemporary", "gsm8k-train", "math-train",
                                   "web-heldout"}
    assert checks["sets"]["openstax-contemporary"]["n"] > 100 and checks["heldout_metrics"]["roc_auc"] > 0.5
    assert checks["sets"]["gsm8k-train"]["training_overlap_dropped"] > 0
    assert all(0 <= s["roc_auc"] <= 1 for s in checks["sets"].values())
    for text in ((reference["run"] / "ablation.md").read_text(), reference["stdout"]):
        assert "held-out metrics of score_domain_math_v1" in text and "| openstax-contemporary | positive |" in text
    report = json.loads((reference["run"] / "report" / "report.json").read_text())
    assert set(report["classifiers"]["score_domain_math_v1"]["validation"]["sets"]) == set(checks["sets"])
    # the quality signal is computed where the domain score reaches the cascade's gate, and only there
    scored = json.loads((reference["run"] / "data" / "scored" / "manifest.json").read_text())
    counts = scored["counts"]["by_source"].values()
    gated = sum(c["rows"] - c["score_quality_heuristic_math_v1_nulls"] for c in counts)
    assert 0 < gated < sum(c["rows"] for c in counts)
    assert set(report["classifiers"]) == {"score_domain_math_v1"}


def test_rerun_skips_every_stage(reference):
    proc = trait("pipeline", "plan", "--config", str(reference["config"]), env=ENV)
    assert proc.returncode == 0, proc.stderr
    n = len(list((reference["run"] / "_pipeline" / "state").glob("*.json")))
    assert proc.stdout.splitlines()[-1] == f"0 of {n} stages to run", proc.stdout
    again = trait("pipeline", "run", "--config", str(reference["config"]), env=ENV, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    assert table(reference["run"]) == reference["table"]


def test_summary_page_in_a_browser(reference):
    """index.html in headless Chromium: no console errors, every image loaded, the stage graph and the table."""
    from playwright.sync_api import sync_playwright

    page_url = (reference["run"] / "index.html").as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"])
        page = browser.new_page()
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_url)
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete && "
                                                  "e.naturalWidth > 0])")
        text = page.inner_text("body")
        svg_boxes = page.eval_on_selector_all("svg rect", "els => els.length")
        browser.close()
    assert not errors, errors
    assert images and all(ok for _, ok in images), images
    assert {"datamap", "curves_trait"} <= {Path(src).parent.name for src, _ in images}
    assert svg_boxes == len(list((reference["run"] / "_pipeline" / "state").glob("*.json")))
    assert "seed+trait" in text and "measure the machinery" in text


def downstream(run: Path, stage: str) -> list[str]:
    """``stage`` and every stage reading it, from the run's records."""
    records = {p.stem: json.loads(p.read_text()) for p in (run / "_pipeline" / "state").glob("*.json")}
    found = [stage]
    changed = True
    while changed:
        changed = False
        for name, r in records.items():
            if name not in found and set(r["inputs"]) & set(found):
                found.append(name)
                changed = True
    return found


def forget(run: Path, stage: str) -> None:
    """As if ``stage`` and what reads it had never run: their records and outputs removed."""
    for name in downstream(run, stage):
        path = run / "_pipeline" / "state" / f"{name}.json"
        record = json.loads(path.read_text())
        for out in record["outputs"].values():
            shutil.rmtree(out, ignore_errors=True)
        path.unlink()


def kill_when(run: Path, config: Path, stage: str, ready) -> None:
    """Start the pipeline, SIGKILL its process group once ``stage`` runs and ``ready()`` holds, rerun to the end."""
    record = run / "_pipeline" / "state" / f"{stage}.json"

    def running() -> bool:
        try:
            return json.loads(record.read_text())["status"] == "running" and ready()
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
            return False

    killed = trait_killed_when(running, "pipeline", "run", "--config", str(config), env=ENV, timeout=1500)
    assert killed.returncode == -signal.SIGKILL, f"the pipeline ended before {stage} ran: {killed.stderr[-3000:]}"
    assert json.loads(record.read_text())["status"] == "running"
    again = trait("pipeline", "run", "--config", str(config), env=ENV, timeout=1500)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"pipeline: {stage}: run (interrupted (running); continues)" in again.stderr


def test_kill_in_spark_stage_then_rerun(reference):
    run = reference["run"]
    forget(run, "score")
    kill_when(run, reference["config"], "score", lambda: any((run / "data").glob("scored._staging/*")))
    assert table(run) == reference["table"]


def test_kill_in_synth_then_rerun(reference):
    run = reference["run"]
    forget(run, "synth")
    chunks = run / "data" / "passages._chunks"
    kill_when(run, reference["config"], "synth", lambda: any(chunks.glob("batch-*.parquet")))
    assert table(run) == reference["table"]


def test_kill_in_training_then_rerun(reference):
    run = reference["run"]
    forget(run, "train_trait")
    checkpoints = run / "train" / "trait" / "knowledge" / "checkpoints"
    kill_when(run, reference["config"], "train_trait", lambda: any(checkpoints.glob("step_*")))
    assert table(run) == reference["table"]
