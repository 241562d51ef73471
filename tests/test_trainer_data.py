"""trainer.data: contract datasets -> cached token streams -> packed sequences -> the weighted, resumable stream.

Real parts throughout: the tiny BPE tokenizer of trait.tiny_model (trained on the shared GSM8K and Wikipedia text,
loaded with AutoTokenizer like a real checkpoint), Parquet datasets written the way the stages write them, and
real processes racing for the cache.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, SHARED_DATA, read_jsonl
from trainer.data import DataConfig, DataError, PackedMixture, SourceConfig, prepare
from trainer.mixture import FeistelPermutation
from trainer.token_cache import SourceFiles, document_order, load_tokenizer, token_dtype, tokenise_source
from trait.config import ConfigError, from_dict
from trait.contract import BASE_SCHEMA, MANIFEST_NAME, SUCCESS_MARKER, doc_id, part_name, validate_table

WIKI = SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    from trait.tiny_model import TinyModelConfig, build_tiny_model

    # 300k characters of training text is plenty for a 2,048-token BPE and builds in well under a second.
    return str(build_tiny_model(TinyModelConfig(text_chars=300_000), cache_dir=tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def wiki_texts() -> list[str]:
    return [r["text"] for r in read_jsonl(WIKI, 40)]


def write_source(path: Path, texts: list[str], parts: int = 1, source: str = "test/wiki", check: bool = True) -> str:
    """A finished contract dataset of ``texts`` split over ``parts`` part files, the way the stages write one."""
    path.mkdir(parents=True)
    bounds = np.linspace(0, len(texts), parts + 1).astype(int)
    for i in range(parts):
        chunk = texts[bounds[i]:bounds[i + 1]]
        table = pa.table({"id": [doc_id(source, f"{bounds[i] + j}") for j in range(len(chunk))],
                          "source": [source] * len(chunk), "text": chunk, "url": [None] * len(chunk),
                          "n_tokens": [len(t.split()) for t in chunk]}, schema=BASE_SCHEMA)
        if check:
            validate_table(table)
        pq.write_table(table, path / part_name(i))
    (path / MANIFEST_NAME).write_text(json.dumps({"rows": len(texts), "tokenizer": "words"}))
    (path / SUCCESS_MARKER).write_text("")
    return str(path)


def config(sources: dict[str, tuple[str, float]], tmp_path: Path, **overrides) -> DataConfig:
    data = {"sources": [{"name": n, "path": p, "weight": w} for n, (p, w) in sources.items()],
            "cache_dir": str(tmp_path / "cache"), "num_workers": 1, **overrides}
    return from_dict(DataConfig, data)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory, tokenizer_dir, wiki_texts) -> PackedMixture:
    """Three sources of 40, 20 and 2 Wikipedia articles, weights 5 : 3 : 2, seq_len 128."""
    root = tmp_path_factory.mktemp("mixture")
    paths = {"a": write_source(root / "a", wiki_texts[:40], parts=3), "b": write_source(root / "b", wiki_texts[:20]),
             "c": write_source(root / "c", wiki_texts[20:22])}
    return prepare(config({"a": (paths["a"], 5), "b": (paths["b"], 3), "c": (paths["c"], 2)}, root, seq_len=128),
                   tokenizer_dir)


# ---------------------------------------------------------------- packing


def test_packing_is_documents_then_eos_cut_into_sequences(tmp_path, tokenizer_dir, tokenizer, wiki_texts):
    texts = ["Short one.", "A second, slightly longer document about algebra: x^2 + 1 = 0.",
             wiki_texts[0][:3000], "Last."]
    path = write_source(tmp_path / "src", texts, parts=2)
    packed = prepare(config({"s": (path, 1.0)}, tmp_path, seq_len=64), tokenizer_dir).sources["s"]

    # Documents in the seeded shuffle order of data.seed 0 (its prefixes are samples of the source), which for 4
    # documents is 2, 3, 0, 1; the expected stream from the transformers side, an independent path from the
    # worker's Rust tokenizer.
    texts = [texts[i] for i in document_order(4, 0)]
    assert texts[0] == wiki_texts[0][:3000] and texts[-1].startswith("A second")
    eos = tokenizer.eos_token_id
    expected = [t for text in texts for t in tokenizer(text, add_special_tokens=False).input_ids + [eos]]
    assert packed.tokens.dtype == np.uint16  # vocabulary 2,048 < 65,536
    assert packed.tokens.tolist() == expected
    assert packed.documents == 4 and packed.num_tokens == len(expected)
    # 64-token sequences: len // 64 of them, the remainder dropped and counted.
    assert packed.num_sequences == len(expected) // 64 >= 10
    assert packed.dropped_tokens == len(expected) % 64
    assert packed.long_documents == 1  # the 3,000-character article is far over 64 tokens, split across sequences
    for i in (0, 1, packed.num_sequences - 1):
        assert packed.sequence(i).dtype == np.int64
        assert packed.sequence(i).tolist() == expected[i * 64:(i + 1) * 64]
    # Round trip: cut the stream at EOS and decode, giving back every document exactly.
    stream = np.asarray(packed.tokens)
    ends = np.flatnonzero(stream == eos)
    assert len(ends) == len(texts) and ends[-1] == len(stream) - 1
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert [tokenizer.decode(stream[s:e].tolist()) for s, e in zip(starts, ends)] == texts


def test_special_token_text_inside_a_document_is_text_not_eos(tmp_path, tokenizer_dir, tokenizer):
    texts = ["a web page that quotes the marker </s> in its text", "next"]
    packed = prepare(config({"s": (write_source(tmp_path / "src", texts), 1.0)}, tmp_path, seq_len=4),
                     tokenizer_dir).sources["s"]
    stream = np.asarray(packed.tokens)
    assert np.flatnonzero(stream == tokenizer.eos_token_id).size == 2  # one per document, none from "</s>"
    first = stream[:np.flatnonzero(stream == tokenizer.eos_token_id)[0]]
    assert tokenizer.decode(first.tolist()) == texts[0]


def test_token_dtype_by_vocabulary_size():
    # ids run 0 .. vocab-1: 65,536 ids fit in uint16 (max 65,535), one more does not.
    assert token_dtype(2048) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(128_256) == np.uint32


# ---------------------------------------------------------------- cache


def test_second_prepare_reuses_the_cache(tmp_path, tokenizer_dir, wiki_texts, caplog):
    path = write_source(tmp_path / "src", wiki_texts[:5])
    cfg = config({"s": (path, 1.0)}, tmp_path, seq_len=128)
    with caplog.at_level(logging.INFO, logger="trainer"):
        first = prepare(cfg, tokenizer_dir).sources["s"]
    assert not first.cache_hit and "cache hit" not in caplog.text
    tokens_file = Path(first.cache_path) / "tokens.bin"
    written = tokens_file.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainer"):
        again = prepare(cfg, tokenizer_dir).sources["s"]
    assert again.cache_hit and "cache hit" in caplog.text and "tokenising" not in caplog.text
    assert again.cache_path == first.cache_path and tokens_file.stat().st_mtime_ns == written
    assert np.array_equal(again.tokens, first.tokens)
    # A longer seq_len reads the same entry: packing is a view over the cached stream.
    longer = prepare(config({"s": (path, 1.0)}, tmp_path, seq_len=256), tokenizer_dir).sources["s"]
    assert longer.cache_hit and longer.num_sequences == first.num_tokens // 256

    # The dataset rewritten with other text is another input: a new entry, not the stale one.
    shutil.rmtree(path)
    write_source(Path(path), wiki_texts[5:10])
    changed = prepare(cfg, tokenizer_dir).sources["s"]
    assert not changed.cache_hit and changed.cache_path != first.cache_path


def test_thread_workers_give_the_same_bytes_as_one(tmp_path, tokenizer_dir, wiki_texts):
    files = SourceFiles(write_source(tmp_path / "src", wiki_texts[:30], parts=3), "text", "s")
    tok = load_tokenizer(tokenizer_dir)
    # 20 KB chunks: ~30 work units over 2 threads, so completion order differs from submission order.
    one = tokenise_source(files, tok, tmp_path / "one", workers=1, chunk_bytes=20_000)
    two = tokenise_source(files, tok, tmp_path / "two", workers=2, chunk_bytes=20_000)
    assert not one.hit and not two.hit and two.index["workers"] == 2
    assert (one.path / "tokens.bin").read_bytes() == (two.path / "tokens.bin").read_bytes()
    assert np.array_equal(one.doc_lengths, two.doc_lengths) and np.array_equal(one.doc_rows, two.doc_rows)


def test_a_budget_tokenises_its_share_and_a_larger_need_extends_the_same_entry(tmp_path, tokenizer_dir, wiki_texts,
                                                                              caplog):
    path = write_source(tmp_path / "src", wiki_texts[:40], parts=3)
    cfg = config({"s": (path, 1.0)}, tmp_path, seq_len=128)
    # 8 sequences of 128 tokens: a quota of 8 + 2 sequences, 5% margin -> 1,344 tokens needed of ~100k
    with caplog.at_level(logging.INFO, logger="trainer"):
        small = prepare(cfg, tokenizer_dir, token_budget=8 * 128)
    packed = small.sources["s"]
    assert "1,344 tokens needed, 0 cached" in caplog.text
    assert not packed.cache_hit and packed.documents < 5 and packed.source_documents == 40
    assert packed.num_tokens >= 1344 and packed.index["documents"] == packed.documents  # nothing more tokenised
    assert packed.planned_sequences == 8 and packed.planned_epochs <= 1
    small_tokens, first = np.array(packed.tokens), small.stream(3)
    take(first, 3, 4)
    small_state = first.state_dict()  # as a checkpoint after 12 samples stores it
    # The same tokens as the first documents of the whole source in its shuffle order (another cache, no budget).
    whole = prepare(config({"s": (path, 1.0)}, tmp_path / "other", seq_len=128), tokenizer_dir).sources["s"]
    assert whole.documents == 40 and np.array_equal(whole.tokens[:len(small_tokens)], small_tokens)

    # A smaller need reads the entry; a larger one extends it under the same key (the budget is not in the key),
    # tokenising only the documents it adds.
    fewer = prepare(cfg, tokenizer_dir, token_budget=2 * 128).sources["s"]
    assert fewer.cache_hit and fewer.cache_path == packed.cache_path
    assert np.array_equal(fewer.tokens, small_tokens[:fewer.num_tokens])
    more = prepare(cfg, tokenizer_dir, token_budget=200 * 128).sources["s"]
    assert not more.cache_hit and more.cache_path == packed.cache_path and more.documents > packed.documents
    assert more.index["extended_from"] == packed.documents and np.array_equal(more.tokens[:len(small_tokens)],
                                                                              small_tokens)
    assert np.array_equal(more.tokens, whole.tokens[:more.num_tokens])
    # The first budget again: its own prefix of the extended entry, so a resumed run (or another arm with the same
    # budget) sees the same data and resumes its stream.
    again = prepare(cfg, tokenizer_dir, token_budget=8 * 128)
    assert again.sources["s"].cache_hit and np.array_equal(again.sources["s"].tokens, small_tokens)
    resumed = again.stream(3)
    resumed.load_state_dict(small_state)
    assert np.array_equal(take(resumed, 2, 4), take(first, 2, 4))
    # No budget: every document, the entry completed.
    rest = prepare(cfg, tokenizer_dir).sources["s"]
    assert rest.documents == 40 and rest.index["documents"] == 40 and np.array_equal(rest.tokens, whole.tokens)


def test_shuffle_order_is_seeded_and_does_not_depend_on_the_part_files(tmp_path, tokenizer_dir, wiki_texts):
    one = prepare(config({"s": (write_source(tmp_path / "one", wiki_texts[:12]), 1.0)}, tmp_path, seq_len=128),
                  tokenizer_dir).sources["s"]
    three = prepare(config({"s": (write_source(tmp_path / "three", wiki_texts[:12], parts=3), 1.0)}, tmp_path,
                           seq_len=128), tokenizer_dir).sources["s"]
    assert one.cache_path != three.cache_path and np.array_equal(one.tokens, three.tokens)
    reseeded = prepare(config({"s": (str(tmp_path / "one"), 1.0)}, tmp_path, seq_len=128, seed=1),
                       tokenizer_dir).sources["s"]
    assert reseeded.cache_path != one.cache_path and reseeded.num_tokens == one.num_tokens
    assert not np.array_equal(reseeded.tokens, one.tokens)
    order = document_order(1000, 0)
    assert sorted(order) == list(range(1000)) and abs(np.corrcoef(np.arange(1000), order)[0, 1]) < 0.15
    assert np.array_equal(document_order(1000, 0), order) and not np.array_equal(document_order(1000, 1), order)
    from trainer.mixture import _mix64, mix64_array

    values = [0, 1, 2**63, 2**64 - 1, 1234567890123]
    assert mix64_array(np.array(values, np.uint64)).tolist() == [_mix64(v) for v in values]


def write_flagged(path: Path, texts: list[str], reasons: list[str | None]) -> str:
    """A finished dataset like synth's passages under on_failure: flag: rows with a reject_reason column."""
    path.mkdir(parents=True)
    pq.write_table(pa.table({"id": [doc_id("synth", str(i)) for i in range(len(texts))],
                             "source": ["synth/passage_v1"] * len(texts), "text": texts, "url": [None] * len(texts),
                             "n_tokens": [len(t.split()) for t in texts],
                             "reject_reason": pa.array(reasons, pa.string())}), path / part_name(0))
    (path / SUCCESS_MARKER).write_text("")
    return str(path)


def test_rejected_rows_are_left_out_unless_the_source_includes_them(tmp_path, tokenizer_dir, tokenizer, wiki_texts,
                                                                   caplog):
    texts = [f"{'accepted' if i % 3 else 'REJECTED'} passage {i}. {wiki_texts[i][:400]}" for i in range(6)]
    path = write_flagged(tmp_path / "passages", texts, [None if i % 3 else "wrong_answer" for i in range(6)])
    with caplog.at_level(logging.INFO, logger="trainer"):
        mixture = prepare(config({"s": (path, 1.0)}, tmp_path, seq_len=32), tokenizer_dir)
    packed = mixture.sources["s"]
    assert packed.documents == packed.source_documents == 4
    assert mixture.stats()["sources"]["s"]["rejected_rows"] == {"rows": 2, "included": 0, "excluded": 2}
    assert "REJECTED" not in tokenizer.decode(np.asarray(packed.tokens).tolist())
    assert "rejected rows 0 included / 2 excluded" in caplog.text and "WARNING" not in caplog.text
    caplog.clear()
    included = from_dict(DataConfig, {"sources": [{"name": "s", "path": path, "weight": 1, "include_rejected": True}],
                                      "cache_dir": str(tmp_path / "cache"), "num_workers": 1, "seq_len": 32})
    with caplog.at_level(logging.INFO, logger="trainer"):
        everything = prepare(included, tokenizer_dir).sources["s"]
    assert everything.documents == 6 and everything.rejected == {"rows": 2, "included": 2, "excluded": 0}
    assert everything.cache_path != packed.cache_path  # other rows, another entry
    assert tokenizer.decode(np.asarray(everything.tokens).tolist()).count("REJECTED") == 2
    assert [r.levelname for r in caplog.records if "rejected rows" in r.message and "training on" in r.message] == [
        "WARNING"]
    flagged_only = write_flagged(tmp_path / "all_rejected", texts[:3], ["truncated"] * 3)
    with pytest.raises(DataError, match=r"has no documents to train on: all its 3 rows are rejected .* set "
                                        "include_rejected: true on this source"):
        prepare(config({"s": (flagged_only, 1.0)}, tmp_path, seq_len=32), tokenizer_dir)


def test_a_source_repeated_within_the_stage_is_warned_about(tmp_path, tokenizer_dir, wiki_texts, caplog):
    small = write_source(tmp_path / "small", [t[:1500] for t in wiki_texts[:2]])
    big = write_source(tmp_path / "big", wiki_texts[:20])
    cfg = config({"small": (small, 1.0), "big": (big, 1.0)}, tmp_path, seq_len=64)
    with caplog.at_level(logging.INFO, logger="trainer"):
        mixture = prepare(cfg, tokenizer_dir, token_budget=400 * 64)
    warned = [r.message for r in caplog.records if r.levelname == "WARNING"]
    epochs = mixture.sources["small"].planned_epochs
    assert epochs > 1 and mixture.sources["big"].planned_epochs <= 1
    assert len(warned) == 1 and f"source 'small' is repeated {epochs:.1f} times in this stage" in warned[0]
    assert mixture.stats()["sources"]["small"]["planned_epochs"] == round(epochs, 3)
    assert mixture.sources["small"].planned_sequences == 200  # half of the 400 samples


def test_killed_build_leftovers_are_replaced(tmp_path, tokenizer_dir, wiki_texts):
    path = write_source(tmp_path / "src", wiki_texts[:3])
    cfg = config({"s": (path, 1.0)}, tmp_path, seq_len=128)
    built = prepare(cfg, tokenizer_dir).sources["s"]
    entry = Path(built.cache_path)
    (entry / "index.json").unlink()  # as if killed between writing tokens and the index
    stale = entry.parent / f".{entry.name}.killed"
    stale.mkdir()
    rebuilt = prepare(cfg, tokenizer_dir).sources["s"]
    assert not rebuilt.cache_hit and (entry / "index.json").exists() and not stale.exists()
    assert np.array_equal(rebuilt.tokens, built.tokens)


_RACER = """
import json, os, sys, time, hashlib
from pathlib import Path
from trainer.data import DataConfig, SourceConfig, prepare
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.write_text("")
while not go.exists():
    time.sleep(0.01)
cfg = DataConfig([SourceConfig("s", sys.argv[3], 1.0)], seq_len=128, cache_dir=sys.argv[4], num_workers=1)
s = prepare(cfg, sys.argv[5]).sources["s"]
print(json.dumps({"hit": s.cache_hit, "sha": hashlib.sha256(s.tokens.tobytes()).hexdigest(), "path": s.cache_path}))
"""


def test_two_ranks_preparing_at_once_build_once(tmp_path, tokenizer_dir, wiki_texts):
    path = write_source(tmp_path / "src", wiki_texts[:40])
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / f"ready{i}"), str(tmp_path / "go"), path,
                               str(cache), tokenizer_dir], stdout=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    deadline = time.monotonic() + 300  # importing transformers takes ~5 s idle, over a minute on a loaded machine
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):  # both imported, both about to call prepare
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    (tmp_path / "go").write_text("")
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r["hit"] for r in results) == [False, True]  # one built, the other waited and read it
    assert results[0]["sha"] == results[1]["sha"] and results[0]["path"] == results[1]["path"]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [Path(results[0]["path"]).name]


# ---------------------------------------------------------------- the stream


def take(stream, batches: int, size: int) -> np.ndarray:
    return np.concatenate([stream.next_batch(size) for _ in range(batches)])


def test_stream_is_deterministic_by_seed(mixture):
    a, b, other = take(mixture.stream(7), 10, 4), take(mixture.stream(7), 10, 4), take(mixture.stream(8), 10, 4)
    assert a.shape == (40, 128) and a.dtype == np.int64
    assert np.array_equal(a, b)
    assert not np.array_equal(a, other)
    # The seed moves only the order within each source: same sources, sample for sample.
    assert mixture.stream(7).realised() == mixture.stream(8).realised()


def test_realised_mixture_tracks_the_weights(mixture):
    stream = mixture.stream(3)
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}  # 5 : 3 : 2 normalised
    worst = 0.0
    for _ in range(1000):
        stream.next_batch(1)
        n = stream.position
        worst = max(worst, *(abs(r["sequences"] - n * weights[s]) for s, r in stream.realised().items()))
    # Deficit round-robin keeps every source within one sequence of its quota n * w at every n.
    assert worst < 1.0
    realised = stream.realised()
    for name, r in realised.items():
        assert abs(r["share"] - weights[name]) < 0.01 and r["configured_share"] == pytest.approx(weights[name])
        assert r["tokens"] == r["sequences"] * 128
        # Small sources run out and start new epochs, counted.
        assert r["epoch"] == r["sequences"] // mixture.sources[name].num_sequences
    assert realised["c"]["epoch"] >= 1


def test_each_epoch_is_a_permutation_of_the_source(tmp_path, tokenizer_dir, wiki_texts):
    packed = prepare(config({"s": (write_source(tmp_path / "src", wiki_texts[:4]), 1.0)}, tmp_path, seq_len=256),
                     tokenizer_dir)
    source = packed.sources["s"]
    n = source.num_sequences
    table = {source.sequence(i).tobytes(): i for i in range(n)}
    assert len(table) == n  # every sequence distinct, so a row names its index
    rows = take(packed.stream(0), 3 * n, 1)
    order = [table[r.tobytes()] for r in rows]
    epochs = [order[e * n:(e + 1) * n] for e in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)  # each sequence once per epoch
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(n))  # reshuffled every epoch


def test_feistel_permutation_is_a_bijection():
    for n in (1, 2, 3, 5, 64, 1000, 4099):
        perm = [FeistelPermutation(n, 12345)(i) for i in range(n)]
        assert sorted(perm) == list(range(n))
    big = [FeistelPermutation(1000, key)(i) for key in (1, 2) for i in range(1000)]
    assert big[:1000] != big[1000:] and big[:1000] != list(range(1000))
    # Not a near-identity: rank correlation of a random permutation of 1,000 is ~N(0, 1/sqrt(999) = 0.032).
    assert abs(np.corrcoef(np.arange(1000), big[:1000])[0, 1]) < 0.15
    with pytest.raises(IndexError):
        FeistelPermutation(10, 1)(10)


def test_ranks_split_the_global_stream(mixture):
    world, size, batches = 3, 2, 5
    whole = take(mixture.stream(11), batches, size * world)  # global samples 0 .. 29
    ranks = [take(mixture.stream(11, rank=r, world_size=world), batches, size) for r in range(world)]
    for r in range(world):
        assert np.array_equal(ranks[r], whole[r::world])  # rank r: global r, r+3, r+6, ...
    # Together, nothing lost or repeated: interleaving the ranks rebuilds the world-size-1 stream.
    merged = np.empty_like(whole)
    for r in range(world):
        merged[r::world] = ranks[r]
    assert np.array_equal(merged, whole)


def test_resume_continues_the_uninterrupted_stream(mixture):
    uninterrupted = take(mixture.stream(5), 12, 4)
    first = mixture.stream(5)
    take(first, 7, 4)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    assert len(json.dumps(state)) < 400  # a position, not a sample list
    resumed = mixture.stream(5)
    resumed.load_state_dict(state)
    assert np.array_equal(take(resumed, 5, 4), uninterrupted[28:])
    # Any rank's state resumes any rank, under another world size too: ranks 0 and 1 of 2 take global 28, 29, ...
    halves = []
    for r in range(2):
        s = mixture.stream(5, rank=r, world_size=2)
        s.load_state_dict(state)
        halves.append(take(s, 5, 2))
    assert np.array_equal(halves[0], uninterrupted[28::2][:10]) and np.array_equal(halves[1], uninterrupted[29::2][:10])


def test_resume_seeks_without_replaying(tmp_path, tokenizer_dir, wiki_texts):
    paths = [write_source(tmp_path / n, wiki_texts[i * 3:(i + 1) * 3]) for i, n in enumerate("xy")]
    packed = prepare(config({"x": (paths[0], 1), "y": (paths[1], 1)}, tmp_path, seq_len=128), tokenizer_dir)
    # A trillion samples in; with weights 1 : 1 the deficit rule has given each source exactly half at even n.
    n = 10**12
    state = {**packed.stream(1).state_dict(), "position": n, "counts": {"x": n // 2, "y": n // 2}}
    stream = packed.stream(1)
    started = time.perf_counter()
    stream.load_state_dict(state)
    batch = stream.next_batch(4)
    assert time.perf_counter() - started < 1.0  # replaying 10^12 samples would take days
    assert stream.position == n + 4 and batch.shape == (4, 128)
    assert stream.realised()["x"]["epoch"] == (n // 2 + 2) // packed.sources["x"].num_sequences


def test_resume_refuses_another_seed_or_mixture(mixture, tmp_path, tokenizer_dir, wiki_texts):
    state = mixture.stream(5).state_dict()
    with pytest.raises(ConfigError, match="seed 5, this run 6"):
        mixture.stream(6).load_state_dict(state)
    cfg = mixture.config
    reweighted = DataConfig([SourceConfig(s.name, s.path, 1.0) for s in cfg.sources], seq_len=cfg.seq_len,
                            cache_dir=cfg.cache_dir, num_workers=1)
    with pytest.raises(ConfigError, match="another mixture"):
        prepare(reweighted, tokenizer_dir).stream(5).load_state_dict(state)
    with pytest.raises(ConfigError, match="do not add up"):
        mixture.stream(5).load_state_dict({**state, "position": 3})


# ---------------------------------------------------------------- bad inputs


def test_missing_input_path_names_it(tmp_path, tokenizer_dir, wiki_texts):
    good = write_source(tmp_path / "good", wiki_texts[:2])
    with pytest.raises(DataError, match=r"source 'later': input .*/not_there does not exist; run the stage"):
        prepare(config({"s": (good, 1), "later": (str(tmp_path / "not_there"), 1)}, tmp_path), tokenizer_dir)
    assert not (tmp_path / "cache").exists()  # checked before any source was tokenised


def test_unfinished_dataset_is_refused(tmp_path, tokenizer_dir, wiki_texts):
    path = write_source(tmp_path / "src", wiki_texts[:2])
    (Path(path) / SUCCESS_MARKER).unlink()
    with pytest.raises(DataError, match="source 's': .* not a finished dataset \\(no _SUCCESS\\)"):
        prepare(config({"s": (path, 1)}, tmp_path), tokenizer_dir)


def test_missing_text_column_lists_the_columns(tmp_path, tokenizer_dir, wiki_texts):
    path = write_source(tmp_path / "src", wiki_texts[:2])
    with pytest.raises(DataError, match=r"column\(s\) \['passage'\] not found; columns are: id, source, text"):
        prepare(config({"s": (path, 1)}, tmp_path, text_column="passage"), tokenizer_dir)


def test_empty_corpus_is_refused(tmp_path, tokenizer_dir):
    empty = write_source(tmp_path / "empty", [])
    with pytest.raises(DataError, match="has no documents"):
        prepare(config({"s": (empty, 1)}, tmp_path), tokenizer_dir)
    blank = write_source(tmp_path / "blank", ["", ""], check=False)  # the contract forbids it; a bad writer may not
    with pytest.raises(DataError, match="its 2 documents have zero tokens"):
        prepare(config({"s": (blank, 1)}, tmp_path), tokenizer_dir)
    tiny = write_source(tmp_path / "tiny", ["just a few words"])
    with pytest.raises(DataError, match=r"has \d tokens, fewer than one sequence of seq_len 2048"):
        prepare(config({"s": (tiny, 1)}, tmp_path), tokenizer_dir)


def test_tokenizer_without_eos_is_refused(tmp_path, tokenizer_dir, wiki_texts):
    no_eos = tmp_path / "tok"
    no_eos.mkdir()
    shutil.copy(Path(tokenizer_dir) / "tokenizer.json", no_eos)
    settings = json.loads((Path(tokenizer_dir) / "tokenizer_config.json").read_text())
    settings.pop("eos_token")
    (no_eos / "tokenizer_config.json").write_text(json.dumps(settings))
    path = write_source(tmp_path / "src", wiki_texts[:2])
    with pytest.raises(DataError, match="has no EOS token, and packing puts EOS between documents"):
        prepare(config({"s": (path, 1)}, tmp_path), str(no_eos))
    with pytest.raises(DataError, match="tokenizer directory .* not found"):
        prepare(config({"s": (path, 1)}, tmp_path), str(tmp_path / "nowhere"))


@pytest.mark.parametrize("weight", [0, -1.0, math.nan, math.inf])
def test_weights_must_be_positive(tmp_path, weight):
    # nan and inf: the config loader refuses any non-finite number before SourceConfig.validate sees it
    with pytest.raises(ConfigError, match=r"weight(: expected a finite number| is .*; weights must be positive)"):
        config({"s": ("unused", weight)}, tmp_path)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'seq_len'"):
        config({"s": ("p", 1)}, tmp_path, seq_length=512)
    with pytest.raises(ConfigError, match="long_documents is 'truncate'"):
        config({"s": ("p", 1)}, tmp_path, long_documents="truncate")
    with pytest.raises(ConfigError, match="appear twice"):
        from_dict(DataConfig, {"sources": [{"name": "s", "path": "p", "weight": 1}] * 2})
    with pytest.raises(ConfigError, match="data.sources is empty"):
        from_dict(DataConfig, {"sources": []})


def test_long_documents_error_names_the_document(tmp_path, tokenizer_dir, tokenizer, wiki_texts):
    texts = ["short text", wiki_texts[1][:2000], "another short one"]
    path = write_source(tmp_path / "src", texts)
    longest = len(tokenizer(texts[1], add_special_tokens=False).input_ids)
    with pytest.raises(DataError, match=f"document {doc_id('test/wiki', '1')} has {longest} tokens, longer than "
                                        r"seq_len 64 \(1 documents are\)"):
        prepare(config({"s": (path, 1)}, tmp_path, seq_len=64, long_documents="error"), tokenizer_dir)
    # The same data with the default policy trains, its long document split and counted.
    packed = prepare(config({"s": (path, 1)}, tmp_path, seq_len=64), tokenizer_dir).sources["s"]
    assert packed.long_documents == 1 and packed.longest_document["tokens"] == longest > 64
    # A seq_len that fits every document passes under 'error' too.
    prepare(config({"s": (path, 1)}, tmp_path, seq_len=longest, long_documents="error"), tokenizer_dir)
