"""The reduced math_tiny pipeline config the pipeline tests run (tests/test_pipeline_run.py, test_pipeline_slurm.py):
every arm and stage, on the OpenStax seed and the web samples (no Wikipedia) with small budgets."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.conftest import REPO

TINY = REPO / "infra" / "configs" / "pipeline" / "math_tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def reduced_config(root: Path) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["run_dir"] = str(root / "run")
    cfg["inputs"]["seed"]["inputs"] = [i for i in cfg["inputs"]["seed"]["inputs"] if "openstax" in i["path"]]
    cfg["inputs"]["pool"]["inputs"] = [i for i in cfg["inputs"]["pool"]["inputs"] if "enwiki" not in i["path"]]
    cfg["inputs"]["heldout"] = {"seed_docs": 40, "pool_docs": 40, "seed": 0}
    (domain,) = cfg["selection"]["classifiers"]
    checks = cfg["selection"]["validation"]["domain_math"]
    checks["sets"] = [s for s in checks["sets"] if s["name"] != "wiki-heldout"]  # the pool has no Wikipedia here
    domain["negatives"] = [{"path": "pool"}]
    cfg["selection"]["select"]["domain"]["token_budget"] = 40000
    cfg["synth"].update(limit=12, batch_groups=4)
    t = cfg["training"]
    for name, steps, export in (("pretrain", 24, 0), ("knowledge", 12, 6), ("task_alignment", 6, 3)):
        t[name].update(token_budget=steps * 8 * 64, global_batch_size=8, micro_batch_size=8, warmup_steps=2,
                       checkpoint_every=3, export_every=export)
        t[name]["data"].update(seq_len=64, cache_dir=str(root / "token_cache"))
    t["trainer"]["log_every"] = 3
    cfg["eval"].update(tasks=["gsm8k", "mathqa"], limit=2, datamap_per_source=20)
    cfg["eval"]["options"].update(max_gen_toks=8)
    cfg["eval"]["bpb"].update(max_docs=30, seq_len=64)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
