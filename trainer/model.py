"""The model: load a Hugging Face causal LM (or build one with random weights), and export a stage's final weights
as a Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` and vLLM load as they are.

An export is written to a staging directory and renamed into place, with ``trait_export.json`` (files, sizes,
sha256; the stage, its index, the step, tokens seen in the stage and across stages) last inside it, so a directory
named ``final`` is always complete; the next stage refuses one whose marker does not verify. A stage with
``export_every`` also exports ``<stage>/exports/step_<NNNNNNNN>`` during training (the points of a training curve).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from trait.config import ConfigError

log = logging.getLogger(__name__)

EXPORT_MARKER = "trait_export.json"
EXPORTS_DIR = "exports"  # <stage>/exports/step_<NNNNNNNN>: the exports made during a stage (export_every)
# Tokenizer files a Hugging Face model directory may carry; copied verbatim from the base model, so every stage's
# export tokenises exactly as the data was tokenised.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def load_model(path: str | Path, dtype, device, *, random_init: bool = False, attn_implementation: str = "sdpa"):
    """The causal LM at ``path`` in ``dtype`` on ``device``; with ``random_init`` only its config.json is read and
    the weights are drawn by transformers' initialiser (seed torch first)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if random_init:
        config = AutoConfig.from_pretrained(path)
        config._attn_implementation = attn_implementation
        # Built on the device: a 1B model's init on CPU takes a while, on the GPU a moment.
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
        model.to(device)
    model.config.use_cache = False  # no KV cache in training; exports restore it below
    return model


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(root: Path, names: list[str]) -> dict:
    """{relative name: {bytes, sha256}} for files under ``root``."""
    return {n: {"bytes": (root / n).stat().st_size, "sha256": sha256_file(root / n)} for n in sorted(names)}


def verify_files(root: Path, table: dict) -> str | None:
    """None if every file in ``table`` is there with its size and sha256; else what is wrong."""
    for name, meta in table.items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, expected {meta['bytes']}"
        if sha256_file(path) != meta["sha256"]:
            return f"{name} has another sha256 than when it was written"
    return None


def export_model(model, base_dir: str | Path, out_dir: str | Path, info: dict) -> Path:
    """Write ``model`` as a Hugging Face directory at ``out_dir`` (safetensors weights, config.json,
    generation_config.json, the base model's tokenizer files), atomically; ``info`` goes into the marker."""
    from transformers import GenerationConfig

    out_dir, base_dir = Path(out_dir), Path(base_dir)
    staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        model.config.use_cache = True  # inference default; training turned it off
        model.save_pretrained(staging, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, staging / name)
        if (base_dir / "generation_config.json").is_file():
            shutil.copy2(base_dir / "generation_config.json", staging / "generation_config.json")
        elif not (staging / "generation_config.json").is_file():
            GenerationConfig.from_model_config(model.config).save_pretrained(staging)
        names = [p.name for p in staging.iterdir() if p.is_file()]
        marker = {"files": file_table(staging, names), **info}
        (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=1))
        if out_dir.exists():  # an export of a run that died before recording the stage as done
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        model.config.use_cache = False
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (%.1f MB)", out_dir, sum(p.stat().st_size for p in out_dir.iterdir()) / 1e6)
    return out_dir


def verified_export(path: str | Path) -> dict:
    """The marker of a complete export at ``path``; ConfigError if it is missing, partial or altered."""
    path = Path(path)
    marker = path / EXPORT_MARKER
    if not marker.is_file():
        raise ConfigError(f"{path} is not a finished export (no {EXPORT_MARKER}); train the stage that makes it")
    meta = json.loads(marker.read_text())
    problem = verify_files(path, meta["files"])
    if problem:
        raise ConfigError(f"export {path} is damaged: {problem}; retrain that stage (delete the directory)")
    return meta


def step_export_dir(stage_dir: str | Path, step: int) -> Path:
    return Path(stage_dir) / EXPORTS_DIR / f"step_{step:08d}"


def step_exports(stage_dir: str | Path) -> list[tuple[int, Path]]:
    """The finished in-stage exports of a stage (those with a marker), as (step, path) by step."""
    root = Path(stage_dir) / EXPORTS_DIR
    return sorted((int(p.name[5:]), p) for p in root.glob("step_*")
                  if p.name[5:].isdigit() and (p / EXPORT_MARKER).is_file())


def drop_exports_after(stage_dir: str | Path, step: int) -> list[Path]:
    """Delete the in-stage exports past ``step`` and any staging leftovers of a killed export; returns what went.

    Called when a stage (re)starts at ``step``: exports a killed run made after its last checkpoint are made again,
    from the same weights, when the resumed run passes their step, so the run's exports read as one uninterrupted
    run, like its metrics log (``trainer.metrics``)."""
    root = Path(stage_dir) / EXPORTS_DIR
    kept = {p for s, p in step_exports(stage_dir) if s <= step}
    gone = sorted(p for p in root.iterdir() if p not in kept) if root.is_dir() else []
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone
