"""eval.bpb: bits per byte against a token-by-token NLL computed here from the tiny model's logits, the window path,
the bootstrap interval, seeded sampling by id, errors, and UTF-8 byte counts."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import pytest

from eval.bpb import bits_per_byte
from trait.config import ConfigError
from trait.contract import ContractError, write_text_dataset

from .conftest import SHARED_DATA, read_jsonl

SHORT = ["The sum of two even numbers is even.", "Paris is the capital of France.", "x^2 + 2x + 1 = (x + 1)^2"]


@pytest.fixture(scope="module")
def lm(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def questions() -> list[str]:
    return [r["question"] for r in read_jsonl(SHARED_DATA / "benchmarks/gsm8k/train.jsonl", 64)]


def manual_nats(lm, text: str, seq_len: int | None = None, prefix: bool = True) -> tuple[float, int]:
    """(nats, tokens predicted) of ``text``, one forward pass per token: token i given tokens [start, i), where
    start is 0, or with ``seq_len`` the first token of the seq_len-wide window (overlapping by 1) holding i."""
    import torch

    model, tok = lm
    tokens = ([tok.bos_token_id] if prefix else []) + tok(text, add_special_tokens=False)["input_ids"]
    total = 0.0
    with torch.no_grad():
        for i in range(1, len(tokens)):
            start = 0 if seq_len is None else (i - 1) // (seq_len - 1) * (seq_len - 1)
            logits = model(torch.tensor([tokens[start:i]])).logits[0, -1]
            total -= torch.log_softmax(logits.double(), -1)[tokens[i]].item()
    return total, len(tokens) - 1


def test_matches_token_by_token_nll(tiny_model, lm):
    nats, tokens = zip(*(manual_nats(lm, t) for t in SHORT))
    n_bytes = sum(len(t.encode()) for t in SHORT)
    out = bits_per_byte(str(tiny_model), SHORT, seq_len=64, batch_size=2, device="cpu", seed=0)  # padded batches
    assert out["bpb"] == pytest.approx(sum(nats) / (math.log(2) * n_bytes), abs=1e-5)
    assert out["nats"] == pytest.approx(sum(nats), rel=1e-6)
    assert (out["n_docs"], out["n_bytes"], out["n_tokens"]) == (3, n_bytes, sum(tokens))
    # a random model: ~log(2048) nats per token, several bytes per token
    assert 3 < out["bpb"] < 12


def test_long_document_is_scored_in_windows(tiny_model, lm):
    article = read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 1)[0]["text"][:600]
    texts = [article, SHORT[0]]
    seq_len = 16
    windowed, tokens = zip(*(manual_nats(lm, t, seq_len) for t in texts))
    assert tokens[0] > 5 * seq_len  # several windows, the last one partial
    out = bits_per_byte(str(tiny_model), texts, seq_len=seq_len, batch_size=3, device="cpu", seed=0)
    assert out["nats"] == pytest.approx(sum(windowed), rel=1e-6)
    assert out["n_tokens"] == sum(tokens)
    # the windows matter: full context scores differently
    full = manual_nats(lm, article)[0] + manual_nats(lm, SHORT[0])[0]
    assert abs(full - sum(windowed)) > 1e-3


def test_bootstrap_interval_holds_estimate_and_narrows(tiny_model, questions):
    few = bits_per_byte(str(tiny_model), questions, max_docs=8, seq_len=128, batch_size=8, device="cpu", seed=0)
    many = bits_per_byte(str(tiny_model), questions, seq_len=128, batch_size=8, device="cpu", seed=0)
    assert (few["n_docs"], many["n_docs"]) == (8, 64)
    for out in (few, many):
        assert out["ci_low"] < out["bpb"] < out["ci_high"]
    assert many["ci_high"] - many["ci_low"] < 0.7 * (few["ci_high"] - few["ci_low"])
    again = bits_per_byte(str(tiny_model), questions, seq_len=128, batch_size=8, device="cpu", seed=0)
    assert (again["ci_low"], again["ci_high"]) == (many["ci_low"], many["ci_high"])  # seeded


def test_sampling_is_by_id_hash_not_position(tiny_model, questions, tmp_path):
    forward = write_text_dataset(tmp_path / "forward", "math/gsm8k", questions[:20])
    backward = write_text_dataset(tmp_path / "backward", "math/gsm8k", questions[:20][::-1])
    kw = dict(max_docs=5, seq_len=128, batch_size=4, device="cpu")
    a = bits_per_byte(str(tiny_model), forward, seed=1, **kw)
    b = bits_per_byte(str(tiny_model), backward, seed=1, **kw)
    assert a["ids"] == b["ids"] and a["bpb"] == pytest.approx(b["bpb"], rel=1e-9)
    import pyarrow.parquet as pq

    all_ids = pq.read_table(f"{forward}/part-00000.parquet").column("id").to_pylist()
    expected = sorted(all_ids, key=lambda i: hashlib.sha1(f"1:{i}".encode()).hexdigest())[:5]
    assert a["ids"] == expected
    assert set(bits_per_byte(str(tiny_model), forward, seed=2, **kw)["ids"]) != set(expected)
    # a list of texts: ids are the sha1 of each text, sampled the same way, whatever the list's order
    listed = bits_per_byte(str(tiny_model), questions[:20][::-1], seed=1, **kw)
    text_ids = [hashlib.sha1(q.encode()).hexdigest() for q in questions[:20]]
    assert listed["ids"] == sorted(text_ids, key=lambda i: hashlib.sha1(f"1:{i}".encode()).hexdigest())[:5]


def test_empty_and_bad_inputs_say_what_to_do(tiny_model, tmp_path):
    empty = write_text_dataset(tmp_path / "empty", "math/gsm8k", [])
    with pytest.raises(ConfigError, match="has no documents"):
        bits_per_byte(str(tiny_model), empty)
    with pytest.raises(ConfigError, match="no texts given"):
        bits_per_byte(str(tiny_model), [])
    with pytest.raises(ConfigError, match=r"texts\[1\] is ''"):
        bits_per_byte(str(tiny_model), ["a", ""])
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(ContractError, match="not a finished dataset"):
        bits_per_byte(str(tiny_model), str(tmp_path / "unfinished"))
    with pytest.raises(ConfigError, match="seq_len must be at least 2"):
        bits_per_byte(str(tiny_model), SHORT, seq_len=1)
    with pytest.raises(ConfigError, match="exceeds the model's context of 2048"):
        bits_per_byte(str(tiny_model), SHORT, seq_len=4096, device="cpu")
    with pytest.raises(ConfigError, match="max_docs must be at least 1"):
        bits_per_byte(str(tiny_model), SHORT, max_docs=0)


def test_unicode_counts_utf8_bytes(tiny_model, lm):
    text = "Größe ∑ x² ≤ π — 数学 😀"
    assert len(text.encode("utf-8")) > len(text) + 15
    out = bits_per_byte(str(tiny_model), [text], seq_len=64, batch_size=1, device="cpu", seed=0)
    assert out["n_bytes"] == len(text.encode("utf-8"))
    assert out["bpb"] == pytest.approx(manual_nats(lm, text)[0] / (math.log(2) * out["n_bytes"]), abs=1e-5)
    assert (out["ci_low"], out["ci_high"]) == (out["bpb"], out["bpb"])  # one document: nothing to resample


def test_tokenizer_without_bos_or_eos_skips_first_token(tiny_model, lm, tmp_path, caplog):
    model_dir = shutil.copytree(tiny_model, tmp_path / "no_bos")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((model_dir / name).read_text())
        config.pop("bos_token"), config.pop("eos_token")
        (model_dir / name).write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="eval.bpb"):
        out = bits_per_byte(str(model_dir), SHORT, seq_len=64, batch_size=3, device="cpu", seed=0)
    assert "no BOS or EOS token" in caplog.text
    nats, tokens = zip(*(manual_nats(lm, t, prefix=False) for t in SHORT))
    assert out["n_tokens"] == sum(tokens)
    assert out["nats"] == pytest.approx(sum(nats), rel=1e-6)
