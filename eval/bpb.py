"""Bits per byte of a Hugging Face causal LM on held-out text, with a percentile bootstrap interval over documents.

Per document, the negative log-likelihood in nats of every token given the tokens before it: the tokenizer's BOS
token (else its EOS token) is put in front, so the document's first token is predicted too; a tokenizer with
neither leaves the first token unpredicted (its nats are missing, which lowers bpb slightly; a warning says so).
Text is tokenised as it is (``add_special_tokens=False``); bytes are the UTF-8 bytes of the original text.

Documents longer than ``seq_len`` tokens (prefix included) are scored in consecutive windows of ``seq_len`` input
tokens that overlap by exactly one token: window ``j`` reads tokens ``j*(seq_len-1) .. j*(seq_len-1)+seq_len-1``
of ``[prefix] + tokens`` and predicts all but its first, so every token is predicted exactly once, the first
prediction of a later window conditioned on the one token before it only (the harness's rolling windows with a
context of 1). A longer ``seq_len`` gives more context and so a lower (better) bpb; compare runs at one seq_len.

    bpb = sum over documents of nats / (ln 2 * sum over documents of UTF-8 bytes)

The interval is a seeded percentile bootstrap (95%, ``eval.metrics.bootstrap_ci``) of that ratio over documents:
each resample draws as many documents as there are, with replacement, and recomputes sum(nats) / sum(bytes).

Documents are put in the order of a seeded hash of their id (sha1 of ``"<seed>:<id>"``), never of their position,
and ``max_docs`` keeps the first of that order: the same documents for the same ids and seed, whatever the part
files' order. A dataset's ids are its ``id`` column; a list's are the sha1 of each text's UTF-8 bytes.

fp32 on CPU, bf16 on CUDA (log-softmax in fp32 either way); windows are batched longest first, right-padded with
an attention mask, under ``torch.inference_mode``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np

from eval.metrics import bootstrap_ci
from trait.config import ConfigError
from trait.contract import finished_dataset

log = logging.getLogger(__name__)

LEVEL = 0.95  # of the bootstrap interval


def _order_key(seed: int, ident: str) -> str:
    return hashlib.sha1(f"{seed}:{ident}".encode()).hexdigest()


def _chosen(ids: Sequence[str], max_docs: int | None, seed: int) -> list[int]:
    """Positions of the documents to score, in seeded id-hash order, the first ``max_docs`` of them."""
    order = sorted(range(len(ids)), key=lambda i: (_order_key(seed, ids[i]), i))
    return order if max_docs is None else order[:max_docs]


def load_documents(texts: Sequence[str] | str | os.PathLike, max_docs: int | None, seed: int
                   ) -> tuple[list[str], list[str]]:
    """(ids, texts) of the documents to score: from a list of texts, or from the ``id`` and ``text`` columns of a
    finished contract dataset directory (only the chosen rows' texts are read)."""
    if max_docs is not None and max_docs < 1:
        raise ConfigError(f"max_docs must be at least 1 (or None for every document), got {max_docs}")
    if isinstance(texts, (str, os.PathLike)):
        path = os.fspath(texts)
        dataset = finished_dataset(path, ("id", "text"))
        ids = dataset.to_table(columns=["id"]).column("id").to_pylist()
        if not ids:
            raise ConfigError(f"{path} has no documents; bits per byte needs held-out text: give a non-empty split")
        table = dataset.take(_chosen(ids, max_docs, seed), columns=["id", "text"])
        return table.column("id").to_pylist(), table.column("text").to_pylist()
    texts = list(texts)
    if not texts:
        raise ConfigError("no texts given; bits per byte needs held-out text: give at least one document")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise ConfigError(f"texts[{i}] is {text!r}; every document must be a non-empty string")
    ids = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
    chosen = _chosen(ids, max_docs, seed)
    return [ids[i] for i in chosen], [texts[i] for i in chosen]


def windows(tokens: list[int], seq_len: int) -> list[list[int]]:
    """``tokens`` (prefix included) cut into windows of at most ``seq_len`` that overlap by one token; a window's
    tokens after its first are its targets, and the targets of all windows are ``tokens[1:]``, each once."""
    return [tokens[start:start + seq_len] for start in range(0, len(tokens) - 1, seq_len - 1)]


def _score_windows(model, items: list[tuple[int, list[int]]], n_docs: int, batch_size: int, pad_id: int,
                   device) -> np.ndarray:
    """Summed nats of each document's targets (float64, shape [n_docs]); ``items`` are (document, window)."""
    import torch
    import torch.nn.functional as F

    nats = np.zeros(n_docs, dtype=np.float64)
    items = sorted(items, key=lambda item: -len(item[1]))  # longest first: little padding per batch
    n_batches = math.ceil(len(items) / batch_size)
    every = max(1, n_batches // 10)
    started, predicted = time.monotonic(), 0
    with torch.inference_mode():
        for b in range(n_batches):
            batch = items[b * batch_size:(b + 1) * batch_size]
            width = len(batch[0][1])
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, window) in enumerate(batch):
                ids[row, :len(window)] = torch.tensor(window)
                mask[row, :len(window)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits  # [batch, width, vocab]
            for row, (doc, window) in enumerate(batch):
                n = len(window)  # one row at a time in fp32: a 262k vocabulary makes the whole batch gigabytes
                nats[doc] += F.cross_entropy(logits[row, :n - 1].float(), ids[row, 1:n], reduction="sum").item()
                predicted += n - 1
            if (b + 1) % every == 0 or b + 1 == n_batches:
                elapsed = time.monotonic() - started
                log.info("bpb: %d/%d batches, %d tokens scored, %.0f tokens/s", b + 1, n_batches, predicted,
                         predicted / max(elapsed, 1e-9))
    return nats


def bits_per_byte(model_dir: str, texts: Sequence[str] | str | os.PathLike, *, max_docs: int | None = None,
                  seq_len: int = 1024, batch_size: int = 8, device: str | None = None, seed: int = 0,
                  n_boot: int = 1000) -> dict:
    """Bits per byte of the causal LM at ``model_dir`` on ``texts`` (a list of strings, or the path of a finished
    contract dataset, its ``text`` column), with a bootstrap interval over documents (see the module docstring).

    ``seq_len``: tokens per window (the BOS prefix counts); ``device``: ``cuda`` if available, else ``cpu``.
    Returns ``{"bpb", "ci_low", "ci_high"}`` in bits per UTF-8 byte, ``n_docs``, ``n_bytes``, ``n_tokens`` (tokens
    predicted: every document token, less one per document when the tokenizer has no BOS/EOS), ``nats`` (their
    summed negative log-likelihood) and ``ids`` (the documents scored, in their seeded order)."""
    import torch
    from transformers import AutoTokenizer

    from trainer.model import load_model

    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2 (a context token and a target), got {seq_len}")
    if batch_size < 1 or n_boot < 1:
        raise ConfigError(f"batch_size and n_boot must be at least 1, got {batch_size} and {n_boot}")
    ids, docs = load_documents(texts, max_docs, seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(model_dir, torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    model.eval()
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and seq_len > max_positions:
        raise ConfigError(f"seq_len {seq_len} exceeds the model's context of {max_positions} tokens; lower it")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefix = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None), None)
    if prefix is None:
        log.warning("bpb: the tokenizer of %s has no BOS or EOS token, so each document's first token is not "
                    "predicted and bpb is slightly low", model_dir)
    pad_id = next(t for t in (tokenizer.pad_token_id, prefix, 0) if t is not None)  # padding is masked out anyway
    encoded = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
    items = []
    for doc, tokens in enumerate(encoded):
        items += [(doc, w) for w in windows(([prefix] if prefix is not None else []) + tokens, seq_len)]
    n_bytes = np.array([len(t.encode("utf-8")) for t in docs], dtype=np.float64)
    log.info("bpb: %s on %d documents (%d bytes, %d windows of <= %d tokens) on %s", model_dir, len(docs),
             int(n_bytes.sum()), len(items), seq_len, device)
    nats = _score_windows(model, items, len(docs), batch_size, pad_id, device)

    def ratio(sample: list) -> float:
        pairs = np.asarray(sample)
        return float(pairs[:, 0].sum() / (math.log(2) * pairs[:, 1].sum()))

    bpb = ratio(np.stack([nats, n_bytes], axis=1))
    low, high = bootstrap_ci(list(zip(nats, n_bytes)), ratio, iters=n_boot, seed=seed, level=LEVEL)
    n_tokens = sum(len(w) - 1 for _, w in items)
    log.info("bpb: %.4f [%.4f, %.4f] over %d documents", bpb, low, high, len(docs))
    return {"bpb": bpb, "ci_low": low, "ci_high": high, "n_docs": len(docs), "n_bytes": int(n_bytes.sum()),
            "n_tokens": n_tokens, "nats": float(nats.sum()), "ids": ids}
