"""Shared by the trainer's tests (tests/test_trainer.py, tests/test_train_slurm.py): tiny training configs. The
session fixtures (``tiny_model``, ``datasets``) are in tests/conftest.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from ..conftest import REPO

EXAMPLE = REPO / "infra" / "configs" / "train_tiny.yaml"
# One intra-op thread per training process: these models are tiny (64 x 64 matmuls), so a second thread buys nothing
# and, on a busy 2-core machine, spin-waiting OpenMP threads made steps ~15x slower (measured: 32 ms against
# 459 ms a step). torchrun sets the same for its workers.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_config(root: Path, model: Path, data: dict, **top) -> dict:
    """The example config (infra/configs/train_tiny.yaml) pointed at the test's model and datasets and shrunk:
    seq_len 64, 8 sequences a step, stage 1 24 steps, stage 2 16 steps, every step logged."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg.update(model=str(model), output_dir=str(root / "out"), log_every=1)
    steps = {"knowledge": 24, "task_alignment": 16}
    for stage in cfg["stages"]:
        stage["data"]["seq_len"] = 64
        stage["data"]["cache_dir"] = str(root / "token_cache")
        for source in stage["data"]["sources"]:
            source["path"] = data[source["name"]]
        stage.update(micro_batch_size=4, global_batch_size=8, token_budget=steps[stage["name"]] * 8 * 64,
                     lr=3e-3, min_lr=3e-4, warmup_steps=2, checkpoint_every=4, keep_checkpoints=2)
    cfg.update(top)
    return cfg


def write_config(root: Path, cfg: dict) -> str:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def events(out: Path, stage: str, kind: str = "train") -> list[dict]:
    """The records of one kind ("train", "start", "mixture") in a stage's metrics.jsonl."""
    lines = (out / stage / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]
