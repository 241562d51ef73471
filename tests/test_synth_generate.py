"""The end of a ``trait synth generate`` run, without a generator: every batch is committed beforehand (as a killed
run leaves them), so the run only deduplicates, writes the dataset, says how many passages are valid and why the
others are not, and fails when the output holds nothing to train on. Generation itself against a real vLLM server
is in test_synth_e2e.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from synth.generate import NoPassagesError, SynthConfig, plan_groups, run_fingerprint, run_generate
from synth.store import ChunkStore, passage_id
from trait.config import from_dict
from trait.contract import QUARANTINE_DIR, SUCCESS_MARKER, finished_dataset

from .conftest import REPO
from .support.cli import trait

# Four passages of GSM8K + MATH problems in two batches; no decontamination (nothing here is generated text).
CONFIG = {"problem_sets": ["gsm8k", "math"], "limit": 4, "batch_groups": 2, "validation": {"decontaminate": False}}
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu",
         "xi", "omicron", "pi", "rho", "sigma", "tau"]


def commit_batches(config: SynthConfig, out: Path, verdicts: list[tuple[str | None, bool]]) -> None:
    """Commit every planned batch, passage i judged ``verdicts[i]`` = (reject reason or None, parsed)."""
    groups = plan_groups(config)[0]
    assert len(groups) == len(verdicts) == 4
    store = ChunkStore(out, run_fingerprint(config))
    rows = []
    for i, (group, (reason, parsed)) in enumerate(zip(groups, verdicts)):
        # distinct word salads, so run-wide dedup keeps every accepted passage
        paragraph = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] + str(j * i) for j in range(40))
        enlightenment = f"Passage {i} teaches one idea: {' '.join(WORDS[i:i + 8])}."
        rows.append({"id": passage_id(list(group.problem_ids), "v1", "tiny", {}), "source": "synth/passage_v1",
                     "text": f"{paragraph}\n\n{enlightenment}" if parsed else "", "url": None, "n_tokens": 50,
                     "problem_ids": list(group.problem_ids), "tasks": list(group.tasks), "template_version": "v1",
                     "model": "tiny", "sampling": "{}", "finish_reason": "stop", "reject_reason": reason,
                     "reject_detail": None, "enlightenment": enlightenment if parsed else None,
                     "raw_output": "{}"})
    for b in range(0, 4, config.batch_groups):
        store.commit(b // config.batch_groups, rows[b:b + config.batch_groups])


def test_nothing_to_train_on_fails_after_committing_the_quarantine(tmp_path, caplog):
    config = from_dict(SynthConfig, CONFIG)
    out = tmp_path / "passages"
    commit_batches(config, out, [("truncated", True), ("wrong_answer", True), ("truncated", True),
                                 ("invalid_json", False)])
    with caplog.at_level(logging.INFO), pytest.raises(NoPassagesError) as failed:
        run_generate(config, str(out))
    message = str(failed.value)
    assert "none of the 4 passages can be trained on (rejected: 2 truncated, 1 wrong_answer, 1 invalid_json)" \
        in message and "on_failure: flag" in message and "\n" not in message
    warning = [r for r in caplog.records if r.levelno == logging.WARNING and "passages valid" in r.message]
    assert len(warning) == 1 and "0 of 4 passages valid (0%); rejected: 2 truncated" in warning[0].message
    # The dataset was committed for inspection: no rows, the four in its quarantine with their reasons.
    assert (out / SUCCESS_MARKER).exists() and finished_dataset(str(out), ("id",)).count_rows() == 0
    assert sorted(pq.read_table(out / QUARANTINE_DIR).column("reason").to_pylist()) == [
        "invalid_json", "truncated", "truncated", "wrong_answer"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["valid"] == 0 and manifest["valid_fraction"] == 0.0 and manifest["counts"]["rows_out"] == 0

    # The command: exit 2 and a one-line error, no traceback (a rerun reports again, nothing is generated).
    cfg = tmp_path / "synth.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    cli = trait("synth", "generate", "--config", str(cfg), "--output", str(out), timeout=600)
    assert cli.returncode == 2, cli.stderr[-3000:]
    errors = [line for line in cli.stderr.splitlines() if line.startswith("trait: error:")]
    assert len(errors) == 1 and "none of the 4 passages can be trained on" in errors[0]
    assert "Traceback" not in cli.stderr and "WARNING synth.generate: synth: 0 of 4 passages valid" in cli.stderr


def test_flagged_rejects_are_kept_with_a_warning_and_the_valid_fraction(tmp_path, caplog):
    config = from_dict(SynthConfig, {**CONFIG, "validation": {**CONFIG["validation"], "on_failure": "flag"}})
    out = tmp_path / "passages"
    commit_batches(config, out, [(None, True), ("wrong_answer", True), ("too_short", True),
                                 ("invalid_json", False)])
    with caplog.at_level(logging.INFO):
        manifest = run_generate(config, str(out))
    assert manifest["valid"] == 1 and manifest["valid_fraction"] == 0.25
    assert manifest["counts"]["rows_out"] == 3 and manifest["counts"]["rows_flagged"] == 2
    warning = [r.message for r in caplog.records if r.levelno == logging.WARNING and "passages valid" in r.message]
    assert len(warning) == 1 and "1 of 4 passages valid (25%)" in warning[0]
    assert "1 wrong_answer, 1 too_short, 1 invalid_json" in warning[0] and "2 rejected ones are kept" in warning[0]
    rows = finished_dataset(str(out), ("enlightenment",)).to_table().to_pylist()
    assert sorted((r["reject_reason"] or "") for r in rows) == ["", "too_short", "wrong_answer"]
    assert all(r["text"].endswith(r["enlightenment"]) for r in rows)


def test_all_valid_is_one_info_line(tmp_path, caplog):
    config = from_dict(SynthConfig, CONFIG)
    out = tmp_path / "passages"
    commit_batches(config, out, [(None, True)] * 4)
    with caplog.at_level(logging.INFO):
        assert run_generate(config, str(out))["valid_fraction"] == 1.0
    assert "synth: all 4 passages valid" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("synth")]


def test_the_tiny_example_config_keeps_flagged_passages():
    """infra/configs/synth_tiny.yaml feeds train_tiny.yaml's stage 2, which includes rejected rows: flag, not drop."""
    from trait.config import load

    config = load(SynthConfig, REPO / "infra" / "configs" / "synth_tiny.yaml")
    assert config.validation.on_failure == "flag" and config.limit == 64 and config.problem_sets == ["gsm8k", "math"]
