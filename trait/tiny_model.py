"""The tiny model: a random-weight Llama with a BPE tokenizer trained on local text.

It is the embedded default generator (``trait.serving.server`` serves it when no model is configured), the tiny
base model of the pipeline's smoke configs, and the model of the tests.

Nothing is downloaded. The tokenizer is a byte-level BPE trained with ``tokenizers`` on GSM8K train questions and
the first Wikipedia articles in ``../shared/data`` (or any text given), saved as a Hugging Face fast tokenizer
with a chat template so vLLM's OpenAI chat endpoint works. The weights are drawn with numpy and written with
``safetensors.numpy``: no torch (synth/ never imports it). vLLM loads the directory exactly as it loads a real
checkpoint.

The model is deterministic by seed and cached in a directory named by a hash of its settings, so a second call
with the same settings returns at once (~0.01 s) and a first build takes ~1-2 s.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trait.benchmarks import default_shared_data
from trait.config import ConfigError, field
from trait.models import cache_root

SHARED_DATA = Path(default_shared_data()).resolve()
DEFAULT_TEXT_FILES = (
    SHARED_DATA / "benchmarks" / "gsm8k" / "train.jsonl",
    SHARED_DATA / "corpora" / "general" / "enwiki_2015_part1.jsonl.gz",
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# Plain-text roles keep the template readable for a real tokenizer too; the model never learned them anyway.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class TinyModelConfig:
    """Shape and seed of the embedded random-weight Llama (head_dim = hidden / heads must be 32, 64, 80, ...)."""

    hidden_size: int = field(64, help="model width; with 2 heads gives head_dim 32, the smallest vLLM-CPU accepts")
    num_heads: int = field(2, help="attention heads (and key/value heads)")
    num_layers: int = field(2, help="transformer blocks")
    intermediate_size: int = field(128, help="MLP width")
    vocab_size: int = field(2048, help="BPE vocabulary size, special tokens included")
    max_position_embeddings: int = field(2048, help="context length in tokens")
    seed: int = field(0, help="seed of the weight draw")
    text_chars: int = field(2_000_000, help="characters of local text the tokenizer is trained on")

    def validate(self) -> None:
        self.check()

    def check(self) -> None:
        sizes = ("hidden_size", "num_heads", "num_layers", "intermediate_size", "max_position_embeddings", "text_chars")
        small = [f"{k} {getattr(self, k)}" for k in sizes if getattr(self, k) < 1]
        if small:
            raise ConfigError(f"tiny model: {', '.join(small)}: every size must be >= 1")
        head_dim, rest = divmod(self.hidden_size, self.num_heads)
        if rest or head_dim not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256):
            raise ConfigError(f"tiny model: hidden_size/num_heads = {self.hidden_size}/{self.num_heads} is not a "
                              "head_dim vLLM-CPU supports (32, 64, 80, 96, 112, 128, ...); e.g. 64 and 2")
        if self.vocab_size < 300:
            raise ConfigError(f"tiny model: vocab_size {self.vocab_size} is below the 256 bytes + specials; use 2048")

    def key(self) -> str:
        """A short hash naming the cache directory; changes with any setting or the build recipe version."""
        blob = json.dumps({"recipe": 1, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$TRAIT_CACHE/tiny_models`` or ``~/.cache/trait/tiny_models``."""
    return cache_root() / "tiny_models"


def iter_local_text(files: tuple[Path, ...] = DEFAULT_TEXT_FILES, max_chars: int = 2_000_000) -> Iterator[str]:
    """Text from JSONL(.gz) files (fields question/answer/text): an equal share of ``max_chars`` characters each."""
    share = max(1, max_chars // max(1, len(files)))
    for path in files:
        if not path.exists():
            raise ConfigError(f"tiny model: training text {path} not found; the tokenizer is trained on local text "
                              "in ../shared/data (or pass text_files=...)")
        budget = share
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                for key in ("question", "answer", "text"):
                    if isinstance(row.get(key), str) and budget > 0:
                        piece = row[key][:budget]
                        budget -= len(piece)
                        yield piece
                if budget <= 0:
                    break


def _train_tokenizer(config: TinyModelConfig, text_files: tuple[Path, ...], out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(iter_local_text(text_files, config.text_chars), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": False, "add_eos_token": False,
        "model_max_length": config.max_position_embeddings, "chat_template": CHAT_TEMPLATE,
    }, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, indent=1))
    return tok.get_vocab_size()


def _write_weights(config: TinyModelConfig, vocab: int, out: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(config.seed)
    h, ff = config.hidden_size, config.intermediate_size

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)  # GPT-2/Llama init scale

    tensors = {"model.embed_tokens.weight": normal(vocab, h), "lm_head.weight": normal(vocab, h),
               "model.norm.weight": np.ones(h, np.float32)}
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[p + f"self_attn.{name}.weight"] = normal(h, h)
        tensors[p + "mlp.gate_proj.weight"] = normal(ff, h)
        tensors[p + "mlp.up_proj.weight"] = normal(ff, h)
        tensors[p + "mlp.down_proj.weight"] = normal(h, ff)
        tensors[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    ids = {"bos_token_id": SPECIAL_TOKENS.index("<s>"), "eos_token_id": SPECIAL_TOKENS.index("</s>"),
           "pad_token_id": SPECIAL_TOKENS.index("<pad>")}
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": ff,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_heads,
        "head_dim": h // config.num_heads, "num_hidden_layers": config.num_layers, "vocab_size": vocab,
        "max_position_embeddings": config.max_position_embeddings, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32", **ids,
    }, indent=1))
    (out / "generation_config.json").write_text(json.dumps(ids, indent=1))


def build_tiny_model(config: TinyModelConfig | None = None, cache_dir: Path | None = None,
                     text_files: tuple[Path, ...] = DEFAULT_TEXT_FILES) -> Path:
    """Return the directory of the tiny model for ``config``, building it (~1-2 s) if it is not cached yet.

    The directory is complete or absent: the build happens in a temporary sibling that is renamed into place,
    so concurrent builders and killed builds never leave a half-written model behind.
    """
    config = config or TinyModelConfig()
    config.check()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"tiny-llama-{config.key()}"
    if (target / "model.safetensors").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by a team
    try:
        vocab = _train_tokenizer(config, tuple(text_files), staging)
        _write_weights(config, vocab, staging)
        (staging / "trait_tiny_model.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
        try:
            staging.rename(target)
        except OSError:  # another process finished first: its copy is identical (same seed, same text)
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
