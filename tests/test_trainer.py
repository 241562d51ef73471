"""The trainer with real DeepSpeed ZeRO-1 on CPU: a tiny random Llama (trait.tiny_model, ~344k parameters, loaded
by transformers like a real checkpoint) and tiny contract datasets cut from ../shared/data.

Fast tests (config, derived DeepSpeed config, schedule, FLOPs, checkpoint selection, CLI errors) run in seconds.
Tests marked ``train`` start real training processes: the two stages end to end, 2-process ZeRO-1 through
torchrun, SIGKILL and resume (bit-identical), a corrupted checkpoint, SIGTERM pre-emption, and vLLM loading the
export (~4 min together on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import checkpoint
from trainer.config import StageConfig, TrainConfig, check_inputs
from trainer.engine import accumulation_steps, deepspeed_config, lr_factor
from trainer.metrics import matmul_params, model_flops_per_token
from trainer.model import file_table
from trait.config import ConfigError, from_dict

from .conftest import REPO
from .support.cli import trait, trait_killed_when
from .support.training import ENV, EXAMPLE, events, tiny_config, write_config
from .support.vllm import needs_vllm

train = pytest.mark.train


# ---------------------------------------------------------------------------------------------------- fixtures
# tiny_model and datasets (session fixtures) are in tests/conftest.py; configs and contract datasets in
# tests/support/training.py.


def trait_train(config: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    return trait("train", "--config", config, *args, env=ENV, timeout=600, check=check)


def killed_after_checkpoint(config: str, out: Path, stage: str, step: int) -> subprocess.CompletedProcess:
    """``trait train`` SIGKILLed from outside (its whole process group) once the stage's checkpoint of ``step`` is
    complete (its marker exists): a node lost at that moment. The run goes on meanwhile for the few milliseconds
    the kill takes; a resume starts from that checkpoint all the same (the next one is steps away)."""
    marker = out / stage / "checkpoints" / f"step_{step:08d}" / checkpoint.MARKER
    return trait_killed_when(marker.exists, "train", "--config", config, env=ENV, timeout=600)


@pytest.fixture(scope="session")
def run_a(tmp_path_factory, tiny_model, datasets) -> Path:
    """Both stages, uninterrupted, through `trait train` (one process)."""
    root = tmp_path_factory.mktemp("run_a")
    trait_train(write_config(root, tiny_config(root, tiny_model, datasets)))
    return root / "out"


# ---------------------------------------------------------------------------------------------- fast: config


def test_example_config_loads_and_derives_steps():
    from trait.config import load

    cfg = load(TrainConfig, EXAMPLE)
    assert [s.name for s in cfg.stages] == ["knowledge", "task_alignment"]
    assert [s.init_from for s in cfg.stages] == ["base", "previous"]
    assert [s.data.sources[0].name for s in cfg.stages] == ["in_domain", "synthetic"]
    # the tiny generator's passages all fail validation and are kept flagged (synth_tiny.yaml): stage 2 says so
    assert [[s.include_rejected for s in stage.data.sources] for stage in cfg.stages] == [
        [False, False, False], [True, False]]
    # steps = ceil(token_budget / (global_batch_size * seq_len)) = 204800 / (16 * 128) = 100
    assert cfg.stages[0].steps == 100 and cfg.stages[1].steps == 50
    stage = from_dict(StageConfig, {**_stage_dict(), "token_budget": 1001})
    assert stage.steps == math.ceil(1001 / (8 * 64)) == 2


def _stage_dict(**kw) -> dict:
    return {"name": "knowledge", "token_budget": 4096, "global_batch_size": 8, "micro_batch_size": 2, "lr": 1e-3,
            "data": {"sources": [{"name": "a", "path": "/nowhere", "weight": 1.0}], "seq_len": 64}, **kw}


def test_token_cache_is_under_the_trait_cache_unless_configured(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAIT_CACHE", str(tmp_path / "trait"))
    assert from_dict(StageConfig, _stage_dict()).data.token_cache() == tmp_path / "trait" / "tokens"
    stage = _stage_dict()
    stage["data"]["cache_dir"] = str(tmp_path / "mine")
    assert from_dict(StageConfig, stage).data.token_cache() == tmp_path / "mine"


def test_deepspeed_config_is_derived_from_the_stage():
    stage = from_dict(StageConfig, _stage_dict(grad_clip=0.5))
    ds = deepspeed_config(stage, "bf16", world_size=2)
    assert ds["train_batch_size"] == 8 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2  # 8 = 2 micro x 2 ranks x 2 accumulation
    assert ds["zero_optimization"]["stage"] == 1 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not deepspeed_config(stage, "fp32", 1)["bf16"]["enabled"]
    assert accumulation_steps(stage, 1) == 4 and accumulation_steps(stage, 4) == 1
    with pytest.raises(ConfigError, match=r"global_batch_size 8 is not divisible by micro_batch_size x ranks = "
                                          r"2 x 3 = 6"):
        deepspeed_config(stage, "fp32", world_size=3)


def test_schedule_warmup_cosine_and_constant():
    stage = from_dict(StageConfig, _stage_dict(warmup_steps=4, lr=1e-3, min_lr=1e-4))
    f = lr_factor(stage, total_steps=104)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(4 + 50) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine: (1 + cos(pi/2)) / 2
    assert f(103) == pytest.approx(0.1, abs=1e-3)  # min_lr / lr at the end
    const = lr_factor(from_dict(StageConfig, _stage_dict(schedule="constant", warmup_steps=2)), 100)
    assert [const(s) for s in (0, 1, 2, 99)] == [0.5, 1.0, 1.0, 1.0]


def test_model_flops_per_token_of_the_benchmark_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                      intermediate_size=5632, vocab_size=32000, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    n = matmul_params(model)
    # per layer: q, k, v, o (4 x 2048^2) + gate, up, down (3 x 2048 x 5632); plus lm_head 32000 x 2048; the
    # input embedding (also 32000 x 2048) is a lookup and does not count.
    assert n == 16 * (4 * 2048**2 + 3 * 2048 * 5632) + 32000 * 2048 == 887_619_584
    assert model_flops_per_token(n, 16, 2048, 2048) == 6 * n + 12 * 16 * 2048 * 2048 == 6_131_023_872


@pytest.mark.parametrize("change, message", [
    ({"schedule": "linear"}, "unknown schedule 'linear'; choose one of cosine, constant"),
    ({"global_batch_size": 7}, "global_batch_size 7 is not a multiple of micro_batch_size 2"),
    ({"sheduler": "cosine"}, "unknown key 'sheduler'"),
    ({"data": None}, "give exactly one of 'data'"),
    ({"init_from": "previous"}, "first stage: init_from 'previous' has no previous stage"),
    ({"lr": 1e-3, "min_lr": 1e-2}, "0 <= min_lr <= lr"),
])
def test_bad_stage_configs_say_what_to_fix(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(TrainConfig, {"model": "m", "output_dir": "o", "stages": [_stage_dict(**change)]})


def test_missing_stage_input_is_reported_before_training(tiny_model, datasets, tmp_path):
    cfg = from_dict(TrainConfig, tiny_config(tmp_path, tiny_model, {**datasets, "synthetic": str(tmp_path / "no")}))
    # stage 2's input is missing: reported up front, not after stage 1 has trained
    with pytest.raises(ConfigError, match=r"stage 'task_alignment', source 'synthetic': input .*/no is not usable"):
        check_inputs(cfg)
    cfg = from_dict(TrainConfig, tiny_config(tmp_path, tmp_path / "nomodel", datasets))
    with pytest.raises(ConfigError, match="no config.json there"):
        check_inputs(cfg)


def test_cli_errors_exit_2_without_traceback(tiny_model, datasets, tmp_path):
    cfg = tiny_config(tmp_path, tiny_model, datasets)
    cfg["stages"][0]["schedule"] = "linear"
    proc = trait_train(write_config(tmp_path / "a", cfg), check=False)
    assert proc.returncode == 2 and "unknown schedule 'linear'" in proc.stderr and "Traceback" not in proc.stderr
    cfg = tiny_config(tmp_path, tiny_model, {**datasets, "in_domain": str(tmp_path / "missing")})
    proc = trait_train(write_config(tmp_path / "b", cfg), "--nproc", "2", check=False)
    assert proc.returncode == 2 and "source 'in_domain': input" in proc.stderr and "Traceback" not in proc.stderr
    proc = trait_train(write_config(tmp_path / "d", tiny_config(tmp_path, tiny_model, datasets)), "--nproc", "3",
                       check=False)  # 8 sequences = 4 micro x 3 ranks x ? accumulation steps
    assert proc.returncode == 2 and "global_batch_size 8 is not divisible by micro_batch_size x ranks = 4 x 3" \
        in proc.stderr
    out = tmp_path / "out" / "knowledge"
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text("")
    proc = trait_train(write_config(tmp_path / "c", tiny_config(tmp_path, tiny_model, datasets)), "--resume",
                       "never", check=False)
    assert proc.returncode == 2 and "already holds training output (knowledge)" in proc.stderr


# ---------------------------------------------------------------------------------- fast: checkpoint choice


def _fake_checkpoint(root: Path, step: int, marker: bool = True) -> Path:
    """A checkpoint directory with two files and (optionally) its completion marker, as checkpoint.save writes."""
    path = root / checkpoint.tag(step)
    path.mkdir(parents=True)
    (path / "mp_rank_00_model_states.pt").write_bytes(os.urandom(1000))
    (path / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(os.urandom(2000))
    if marker:
        table = file_table(path, ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
        (path / checkpoint.MARKER).write_text(json.dumps({"step": step, "files": table}))
    return path


def test_latest_checkpoint_skips_partial_and_damaged_ones(tmp_path, caplog):
    for step in (2, 4, 6, 8):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 10, marker=False)  # killed mid-save
    assert checkpoint.latest(tmp_path)[0] == 8
    assert "skipping checkpoint" in caplog.text and "step_00000010: no complete.json" in caplog.text
    with open(tmp_path / "step_00000008" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "r+b") as fh:
        fh.truncate(100)
    (tmp_path / "step_00000006" / "mp_rank_00_model_states.pt").unlink()
    data = bytearray((tmp_path / "step_00000004" / "mp_rank_00_model_states.pt").read_bytes())
    data[10] ^= 0xFF  # same size, one flipped byte
    (tmp_path / "step_00000004" / "mp_rank_00_model_states.pt").write_bytes(bytes(data))
    assert checkpoint.latest(tmp_path)[0] == 2
    assert "has 100 bytes, expected 2000" in caplog.text and "mp_rank_00_model_states.pt is missing" in caplog.text
    assert "another sha256" in caplog.text
    checkpoint.prune(tmp_path, keep=2)  # keeps the two newest with markers (8, 6): 2 and 4 go, 10 stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000006", "step_00000008", "step_00000010"]
    assert checkpoint.latest(tmp_path / "absent") is None


# ------------------------------------------------------------------------------------------ training runs


def test_tiny_model_loads_with_transformers(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert type(model).__name__ == "LlamaForCausalLM" and AutoTokenizer.from_pretrained(tiny_model)("a b").input_ids


@train
def test_two_stages_end_to_end(run_a):
    out = run_a
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["knowledge"]["steps"] == 24 and summary["counts"]["task_alignment"]["steps"] == 16
    for stage in ("knowledge", "task_alignment"):
        losses = [r["loss"] for r in events(out, stage)]
        first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
        assert last < first - 0.15, (stage, losses)  # the loss falls in each stage
        rec = events(out, stage)[-1]
        assert rec["tokens"] == rec["step"] * 8 * 64 and rec["grad_norm"] > 0 and rec["tokens_per_s"] > 0
        assert rec["tokens_per_s_per_device"] == rec["tokens_per_s"] and rec["mfu"] is None  # CPU, no peak
        assert list((out / stage / "tensorboard").glob("events.out.tfevents.*"))
        stage_summary = json.loads((out / stage / "summary.json").read_text())
        sequences = len(losses) * 8
        for name, stats in stage_summary["realised_mixture"].items():  # deficit round-robin: within 1 sequence
            assert abs(stats["sequences"] - stats["configured_share"] * sequences) <= 1, (name, stats)
        assert events(out, stage, "mixture")[-1]["realised"] == stage_summary["realised_mixture"]
        # what each source gave: documents used of the source's, its quota in epochs, rejected rows (none here)
        for name, stats in stage_summary["data"]["sources"].items():
            assert 0 < stats["documents"] <= stats["source_documents"], (name, stats)
            assert stats["rejected_rows"] == {"rows": 0, "included": 0, "excluded": 0}
            assert stats["planned_sequences"] == math.ceil(sequences * stats["weight"])
            assert stats["planned_epochs"] == pytest.approx(stats["planned_sequences"] / stats["sequences"],
                                                            abs=1e-3)
    # warm-up then cosine: lr at step 1 is lr / 2, at step 2 the peak
    assert [r["lr"] for r in events(out, "knowledge")[:2]] == [1.5e-3, 3e-3]
    # stage 2 starts from stage 1's export: its first loss is far below a random model's ln(vocab) ~ 7.6
    start = events(out, "task_alignment", "start")[0]
    assert start["init_from"] == str(out / "knowledge" / "final")
    assert events(out, "task_alignment")[0]["loss"] < events(out, "knowledge")[0]["loss"] - 0.4
    assert sorted(p.name for p in (out / "knowledge" / "checkpoints").glob("step_*")) == [
        "step_00000016", "step_00000020"]  # keep_checkpoints 2; no checkpoint at the last step (the export is)


@train
def test_finished_stage_with_changed_settings_is_refused(run_a, tiny_model, datasets, tmp_path):
    import shutil

    shutil.copytree(run_a / "knowledge", tmp_path / "out" / "knowledge")
    cfg = tiny_config(tmp_path, tiny_model, datasets)
    cfg["stages"][0]["lr"] = 1e-3
    proc = trait_train(write_config(tmp_path, cfg), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "stage 'knowledge' already finished" in proc.stderr and "lr: 0.003 -> 0.001" in proc.stderr


@train
def test_exports_load_with_transformers(run_a, tiny_model):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for stage in ("knowledge", "task_alignment"):
        final = run_a / stage / "final"
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "trait_export.json"} <= {p.name for p in final.iterdir()}
        model = AutoModelForCausalLM.from_pretrained(final)
        tok = AutoTokenizer.from_pretrained(final)
        ids = tok("Let x be a prime number.", return_tensors="pt").input_ids
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss
        assert torch.isfinite(loss) and model.config.use_cache
    base = load_file(tiny_model / "model.safetensors")
    k1 = load_file(run_a / "knowledge" / "final" / "model.safetensors")
    k2 = load_file(run_a / "task_alignment" / "final" / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(base[name], k1[name]) and not torch.equal(k1[name], k2[name])


@train
@pytest.mark.vllm
@needs_vllm
def test_export_is_served_by_vllm(run_a, tmp_path):
    import httpx

    from trait.serving.server import ServerConfig, VllmServer

    final = run_a / "task_alignment" / "final"
    with VllmServer(ServerConfig(model=str(final), max_model_len=512), log_path=tmp_path / "vllm.log") as server:
        resp = httpx.post(f"{server.base_url}/v1/completions", timeout=120, json={
            "model": server.model, "prompt": "Natalia sold clips", "max_tokens": 8, "temperature": 0})
        resp.raise_for_status()
        assert resp.json()["usage"]["completion_tokens"] > 0


@pytest.fixture(scope="session")
def run_b(tmp_path_factory, tiny_model, datasets, run_a) -> dict:
    """Run A's config again, SIGKILLed right after stage 1's step-12 checkpoint; resumed and SIGKILLed right
    after stage 2's step-8 checkpoint, whose optimizer file is then truncated; resumed to the end."""
    root = tmp_path_factory.mktemp("run_b")
    config = write_config(root, tiny_config(root, tiny_model, datasets))
    out = root / "out"
    first = killed_after_checkpoint(config, out, "knowledge", 12)
    second = killed_after_checkpoint(config, out, "task_alignment", 8)
    ckpt = out / "task_alignment" / "checkpoints" / "step_00000008"
    with open(ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "r+b") as fh:
        fh.truncate(1000)
    third = trait_train(config)
    return {"out": out, "runs": [first, second, third]}


@train
def test_resume_after_sigkill_is_bit_identical(run_a, run_b):
    first, second, _ = run_b["runs"]
    assert first.returncode == -signal.SIGKILL and second.returncode == -signal.SIGKILL
    assert "resumed from" in second.stderr and "step_00000012 (step 12 of 24)" in second.stderr
    for stage in ("knowledge", "task_alignment"):
        a = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in events(run_a, stage)]
        b = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in events(run_b["out"], stage)]
        assert [s for s, *_ in b] == list(range(1, len(a) + 1))  # the killed run's extra lines were dropped
        assert b == a  # exactly: fp32 on CPU, same data position, same optimizer state
    from safetensors.torch import load_file

    wa = load_file(run_a / "task_alignment" / "final" / "model.safetensors")
    wb = load_file(run_b["out"] / "task_alignment" / "final" / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


@train
def test_corrupted_latest_checkpoint_falls_back_to_the_previous(run_b):
    third = run_b["runs"][2]
    assert "skipping checkpoint" in third.stderr and "step_00000008" in third.stderr
    assert "has 1000 bytes" in third.stderr
    assert "resumed from" in third.stderr and "step_00000004 (step 4 of 16)" in third.stderr
    # stage 1 was finished and is not trained again
    assert "stage knowledge: already finished" in third.stderr


@train
def test_two_processes_zero1_partition_the_optimizer_and_split_the_data(tmp_path, tiny_model, datasets, run_a):
    cfg = tiny_config(tmp_path, tiny_model, datasets)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update(micro_batch_size=2)  # 8 = 2 micro x 2 ranks x 2 accumulation steps
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    trait("train", "--config", write_config(tmp_path, cfg), "--nproc", "2", env={**ENV, "TMPDIR": str(scratch)},
          timeout=600)
    # torchrun's log folders and the resolved config are gone; torch's compile cache may stay
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == []
    out = tmp_path / "out"
    start = events(out, "knowledge", "start")[0]
    assert start["world_size"] == 2 and start["deepspeed"]["gradient_accumulation_steps"] == 2
    # Rank r takes global samples r, r + 2, ...: each step's 8 sequences are the same 8 that the 1-process run
    # (4 micro x 2 accumulation) takes. So the first loss, before any update, equals run A's up to float
    # rounding; had both ranks read the same sequences it would be the mean over only 4 of the 8.
    two = [r["loss"] for r in events(out, "knowledge")]
    one = [r["loss"] for r in events(run_a, "knowledge")]
    assert two[0] == pytest.approx(one[0], rel=1e-6)
    assert two == pytest.approx(one, rel=2e-3)  # and the same training, step for step
    # ZeRO-1: each rank's optimizer file holds half of the fp32 master weights and Adam moments
    import torch

    ckpt = out / "knowledge" / "checkpoints" / "step_00000020"
    files = sorted(p.name for p in ckpt.glob("zero_pp_rank_*_optim_states.pt"))
    assert files == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    model = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")
    n_params = sum(v.numel() for v in model["module"].values())
    sizes = []
    for name in files:
        opt = torch.load(ckpt / name, weights_only=False, map_location="cpu")["optimizer_state_dict"]
        assert opt["partition_count"] == [2, 2]
        sizes.append(sum(t.numel() for t in opt["single_partition_of_fp32_groups"]))
        moments = opt["base_optimizer_state"]["state"]
        assert sum(s["exp_avg"].numel() for s in moments.values()) == sizes[-1]
    assert sizes[0] == sizes[1] and n_params <= sum(sizes) < n_params + 2 * 64  # halves (plus alignment padding)
    assert len(model["ranks"]) == 2  # both ranks' data position and RNG state


@train
def test_sigterm_checkpoints_at_the_next_step_and_exits_75(tmp_path, tiny_model, datasets):
    cfg = tiny_config(tmp_path, tiny_model, datasets)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update(token_budget=10_000 * 8 * 64, checkpoint_every=0)  # long; no periodic checkpoints
    proc = subprocess.Popen([sys.executable, "-m", "trait.cli", "train", "--config", write_config(tmp_path, cfg)],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "out" / "knowledge" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    found = checkpoint.latest(tmp_path / "out" / "knowledge" / "checkpoints")
    assert found is not None and found[0] >= 3
    assert f"stopped by a signal at step {found[0]} of 10000" in err
