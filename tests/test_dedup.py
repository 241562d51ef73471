"""``trait dedup`` and ``trait.minhash``: planted exact, near, far and chained copies in the small pool; the Spark job
against independent expectations and against the in-memory path; golden hash values; bad input and config."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from trait.config import ConfigError, from_dict
from trait.contract import MANIFEST_NAME, SUCCESS_MARKER, finished_dataset
from trait.minhash import (
    MERSENNE_61,
    DedupConfig,
    DuplicateIdError,
    band_keys,
    candidate_pairs,
    exact_key,
    find_duplicates,
    permutations,
    permuted,
    signatures,
    tokens,
)

from .support.cli import trait_killed_when

SMALLEST, LARGEST = "0" * 40, "f" * 40
B_COPY, FAR, CHAIN_Y, CHAIN_Z = ("f" * 39 + c for c in "1234")


def jaccard(a: str, b: str, n: int = 5) -> float:
    """True Jaccard similarity of word 5-gram sets, written independently of trait.minhash."""

    def shingles(text: str) -> set:
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}

    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def replace_every(text: str, every: int, offset: int) -> str:
    return " ".join(f"changed{i}" if i % every == offset else w for i, w in enumerate(text.split()))


def agreeing(x: str, y: str, config: DedupConfig) -> int:
    sigs, _, _ = signatures([x, y], config)
    return int(np.count_nonzero(sigs[0] == sigs[1]))


def write_dataset(path: Path, tables: list[pa.Table], manifest: dict) -> str:
    path.mkdir(parents=True)
    for i, table in enumerate(tables):
        pq.write_table(table, path / f"part-{i:05d}.parquet")
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    (path / SUCCESS_MARKER).write_text("")
    return str(path)


@pytest.fixture(scope="module")
def planted(small_corpus, tmp_path_factory):
    """The pool plus planted copies of four long Wikipedia articles A, B, C, X (in id order):
    A: an exact copy with the smallest id of all, and an ASCII-upper-cased, re-spaced copy with the largest;
    B: a copy with every 100th word changed (Jaccard ~0.92); C: its first 46 % with the rest reversed (~0.3);
    X ~ Y ~ Z: every 50th word changed, then every 50th from the 25th (X~Y, Y~Z ~0.84; X~Z ~0.71 < 0.8)."""
    from spark_jobs.text import TokenCounter

    pool = finished_dataset(small_corpus["pool"], ("id", "text")).to_table()
    assert max(pool.column("id").to_pylist()) < "f" * 5  # the planted ids sort after every pool id
    rows = sorted(pool.to_pylist(), key=lambda r: r["id"])
    a, b, c, x = [r for r in rows if r["source"] == "wiki/enwiki-2015" and len(r["text"].split()) >= 1500][:4]
    shouting = "".join(ch.upper() if ch.isascii() else ch for ch in a["text"]).replace(" ", " \t ")
    words = c["text"].split()
    y_text = replace_every(x["text"], 50, 0)
    texts = {SMALLEST: a["text"], LARGEST: shouting.replace("\n", "\n\n  "), B_COPY: replace_every(b["text"], 100, 0),
             FAR: " ".join(words[:len(words) * 46 // 100] + words[len(words) * 46 // 100:][::-1]),
             CHAIN_Y: y_text, CHAIN_Z: replace_every(y_text, 50, 25)}
    counter = TokenCounter("words")
    extra = [{"id": i, "source": "web/copy", "text": t, "url": None, "n_tokens": counter.count([t])[0]}
             for i, t in texts.items()]
    table = pa.Table.from_pylist(extra, schema=pool.schema)
    manifest = json.loads(Path(small_corpus["pool"], MANIFEST_NAME).read_text())
    path = write_dataset(tmp_path_factory.mktemp("planted") / "pool", [pool, table], manifest)
    expected = {a["id"]: ("exact_duplicate", SMALLEST), LARGEST: ("exact_duplicate", SMALLEST),
                B_COPY: ("near_duplicate", b["id"]), CHAIN_Y: ("near_duplicate", x["id"]),
                CHAIN_Z: ("near_duplicate", x["id"])}
    return {"path": path, "table": pa.concat_tables([pool, table]), "expected": expected, "x": x["text"],
            "b": b["text"], "c": c["text"], "texts": texts}


@pytest.fixture(scope="module")
def deduped(spark, planted, tmp_path_factory):
    from spark_jobs.dedup import run_dedup

    out = str(tmp_path_factory.mktemp("dedup") / "out")
    return out, run_dedup(spark, DedupConfig(), planted["path"], out)


def dropped_map(path: str) -> dict[str, tuple[str, str]]:
    table = pq.read_table(f"{path}/_dropped")
    return {r["id"]: (r["reason"], r["representative_id"]) for r in table.to_pylist()}


def test_planted_copies_are_what_we_think(planted):
    """Preconditions, measured independently: the planted similarities and the chain's signature agreements."""
    t, config = planted["texts"], DedupConfig()
    assert jaccard(planted["b"], t[B_COPY]) == pytest.approx(0.92, abs=0.02)
    assert jaccard(planted["c"], t[FAR]) == pytest.approx(0.30, abs=0.02)
    assert jaccard(planted["x"], t[CHAIN_Y]) > 0.83 and jaccard(t[CHAIN_Y], t[CHAIN_Z]) > 0.83
    assert jaccard(planted["x"], t[CHAIN_Z]) < 0.72
    assert agreeing(planted["x"], t[CHAIN_Y], config) >= config.min_agreeing  # X ~ Y verified
    assert agreeing(t[CHAIN_Y], t[CHAIN_Z], config) >= config.min_agreeing  # Y ~ Z verified
    assert agreeing(planted["x"], t[CHAIN_Z], config) < config.min_agreeing  # X, Z only through Y
    assert exact_key(t[LARGEST]) == exact_key(t[SMALLEST])


def test_dedup_drops_exactly_the_planted_copies(planted, deduped):
    out, manifest = deduped
    assert dropped_map(out) == planted["expected"]
    kept = finished_dataset(out).to_table().sort_by("id")
    table = planted["table"]
    want = table.filter(pa.array([i not in planted["expected"] for i in table.column("id").to_pylist()]))
    assert kept.equals(want.sort_by("id").cast(kept.schema))  # every column of every kept row, unchanged
    assert FAR in kept.column("id").to_pylist() and SMALLEST in kept.column("id").to_pylist()


def test_manifest_counts_balance_and_clusters(planted, deduped):
    out, manifest = deduped
    df = planted["table"].to_pandas()
    df["reason"] = df["id"].map(lambda i: planted["expected"].get(i, ("kept",))[0])
    counts = manifest["counts"]
    assert counts["rows_in"] == len(df) == counts["rows_out"] + counts["rows_rejected_by_reason"]
    assert counts["rows_out"] == len(df) - 5 and counts["rows_quarantined"] == 0
    for reason in ("exact_duplicate", "near_duplicate"):
        part = df[df.reason == reason]
        assert counts["dropped_by_reason"][reason] == {"rows": len(part), "tokens": int(part.n_tokens.sum())}
    for source, group in df.groupby("source"):
        s = counts["by_source"][source]
        kept = group[group.reason == "kept"]
        assert (s["rows_in"], s["tokens_in"]) == (len(group), int(group.n_tokens.sum()))
        assert (s["rows_out"], s["tokens_out"]) == (len(kept), int(kept.n_tokens.sum()))
    assert counts["by_source"]["web/copy"]["dropped"]["near_duplicate"]["rows"] == 3
    # exact: {0000, A, ffff} one cluster of 3; near: {B, B'} and {X, Y, Z}
    assert counts["clusters"] == {"exact": 1, "near": 2}
    assert counts["cluster_sizes"] == {"exact": {"2-3": 1}, "near": {"2-3": 2}}
    assert manifest["dedup"]["verified_pairs"] == 2 + 1  # X-Y, Y-Z, B-B'; X-Z is a candidate that fails
    assert manifest["dedup"]["components_rounds"] >= 2 and manifest["config"]["bands"] == 16


def clusters(dropped: dict[str, tuple[str, str]]) -> list[list[str]]:
    """The groups ``find_duplicates``' verdicts make: each kept document (reached by following representatives)
    first, then the documents dropped for it, sorted; groups in order of their kept document."""

    def kept(doc: str) -> str:
        while doc in dropped:
            doc = dropped[doc][1]
        return doc

    groups: dict[str, list[str]] = {}
    for doc in dropped:
        groups.setdefault(kept(doc), []).append(doc)
    return [[rep, *sorted(members)] for rep, members in sorted(groups.items())]


def test_in_memory_path_agrees_with_spark(planted, deduped):
    table = planted["table"]
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    assert find_duplicates(ids, texts, DedupConfig()) == dropped_map(deduped[0])
    b_id = planted["expected"][B_COPY][1]
    x_id = planted["expected"][CHAIN_Z][1]
    a_id = next(i for i, (r, _) in planted["expected"].items() if r == "exact_duplicate" and i != LARGEST)
    assert clusters(find_duplicates(ids, texts, DedupConfig())) == sorted(
        [[SMALLEST, a_id, LARGEST], [b_id, B_COPY], [x_id, CHAIN_Y, CHAIN_Z]])


def test_rerun_is_a_noop_and_a_second_run_is_identical(spark, planted, deduped, tmp_path):
    from spark_jobs.dedup import run_dedup
    from trait.cli import main

    out, manifest = deduped
    assert run_dedup(spark, DedupConfig(), planted["path"], out) == manifest  # finished: skipped
    again = str(tmp_path / "again")
    assert main(["dedup", "--input", planted["path"], "--output", again]) == 0
    first, second = finished_dataset(out).to_table(), finished_dataset(again).to_table()
    assert second.sort_by("id").equals(first.sort_by("id"))
    assert pq.read_table(f"{again}/_dropped").sort_by("id").equals(pq.read_table(f"{out}/_dropped").sort_by("id"))
    assert json.loads(Path(again, MANIFEST_NAME).read_text())["counts"] == manifest["counts"]


def test_a_dedup_killed_while_writing_and_rerun_gives_the_uninterrupted_output(spark, planted, tmp_path):
    """SIGKILL the whole `trait dedup` process group (driver JVM, Python workers) once it writes its output, then
    rerun: the killed run's staging is replaced and the output is an uninterrupted run's. The input: the planted
    copies, their originals and 40 other documents (small, so the three runs take seconds each)."""
    from spark_jobs.dedup import run_dedup

    table = planted["table"]
    wanted = {*planted["expected"], *(rep for _, rep in planted["expected"].values())}
    ids = table.column("id").to_pylist()
    rows = [i for i, ident in enumerate(ids) if ident in wanted or i < 40]
    pool = write_dataset(tmp_path / "pool", [table.take(rows)], {})
    out = tmp_path / "killed"
    staging = Path(f"{out}._staging")
    killed = trait_killed_when(staging.exists, "dedup", "--master", "local[2]", "--input", pool, "--output", str(out),
                               timeout=300)
    assert killed.returncode == -signal.SIGKILL, f"the job ended before it wrote anything: {killed.stderr[-2000:]}"
    assert staging.exists() and not out.exists()  # killed mid-write: only staging, no output

    rerun = run_dedup(spark, DedupConfig(), pool, str(out))
    assert not staging.exists() and (out / SUCCESS_MARKER).exists()
    clean = tmp_path / "clean"
    manifest = run_dedup(spark, DedupConfig(), pool, str(clean))
    assert rerun["counts"]["rows_out"] == len(rows) - len(planted["expected"])  # the planted copies dropped
    assert finished_dataset(str(out)).to_table().sort_by("id").equals(finished_dataset(str(clean)).to_table()
                                                                       .sort_by("id"))
    assert pq.read_table(out / "_dropped").sort_by("id").equals(pq.read_table(clean / "_dropped").sort_by("id"))
    assert rerun["counts"] == manifest["counts"] and rerun["fingerprint"] == manifest["fingerprint"]


def test_oversized_buckets_fall_back_to_star_pairs(spark, tmp_path, planted):
    """Four near copies of one text with max_bucket_size 2: buckets of 3-4 give star pairs; the Spark job and
    the in-memory path count the same skipped pairs and drop the same three copies."""
    from spark_jobs.dedup import run_dedup

    base = planted["b"]
    texts = [base] + [replace_every(base, 200, k) for k in (0, 50, 100)]
    ids = ["b0", "b1", "b2", "b3"]
    table = pa.Table.from_pylist([{"id": i, "source": "s", "text": t, "url": None, "n_tokens": 1}
                                  for i, t in zip(ids, texts)], schema=planted["table"].schema)
    path = write_dataset(tmp_path / "four", [table], {})
    config = DedupConfig(max_bucket_size=2)
    manifest = run_dedup(spark, config, path, str(tmp_path / "out"))
    dropped = dropped_map(str(tmp_path / "out"))
    assert dropped == {i: ("near_duplicate", "b0") for i in ids[1:]} == find_duplicates(ids, texts, config)
    sigs, _, _ = signatures(texts, config)
    sizes = [n for band in band_keys(sigs, config).T for n in Counter(band.tolist()).values()]
    skipped = sum(n * (n - 1) // 2 - (n - 1) for n in sizes if n > 2)
    assert skipped > 0 and manifest["dedup"]["pairs_skipped"] == skipped
    assert manifest["dedup"]["oversized_buckets"] == sum(1 for n in sizes if n > 2)
    assert candidate_pairs(ids, band_keys(sigs, config), config)[1] == {
        "oversized_buckets": manifest["dedup"]["oversized_buckets"], "pairs_skipped": skipped}


def test_datatrove_normaliser_in_the_spark_job(spark, tmp_path, planted):
    """normaliser: datatrove: stubs that differ only in their numbers and punctuation are exact duplicates; an
    article with every digit changed and every 100th word too is a near one (its dedup-v1 Jaccard is < 0.75). The
    job drops what the in-memory path drops and records the normaliser; dedup-v1 keeps all five."""
    from spark_jobs.dedup import run_dedup

    wiki = sorted(r["text"] for r in planted["table"].to_pylist() if r["source"] == "wiki/enwiki-2015")
    base = next(t for t in wiki if len(t.split()) >= 1500 and len(re.findall(r"\d+", t)) >= 100)
    renumbered = replace_every(re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), base), 100, 0)
    assert jaccard(base, renumbered) < 0.75
    texts = ["May 17\n\nMay 17 is the 137th day of the year.", "May 18\n\nMay 18 is the 138th day of the year!",
             base, renumbered, planted["c"]]
    ids = ["d0", "d1", "d2", "d3", "d4"]
    table = pa.Table.from_pylist([{"id": i, "source": "s", "text": t, "url": None, "n_tokens": 1}
                                  for i, t in zip(ids, texts)], schema=planted["table"].schema)
    path = write_dataset(tmp_path / "days", [table], {})
    config = DedupConfig(normaliser="datatrove")
    manifest = run_dedup(spark, config, path, str(tmp_path / "out"))
    expected = {"d1": ("exact_duplicate", "d0"), "d3": ("near_duplicate", "d2")}
    assert dropped_map(str(tmp_path / "out")) == expected == find_duplicates(ids, texts, config)
    assert manifest["config"]["normaliser"] == manifest["dedup"]["normaliser"] == "datatrove"
    assert find_duplicates(ids, texts, DedupConfig()) == {}


def test_empty_corpus(spark, tmp_path, planted):
    from spark_jobs.dedup import run_dedup

    path = write_dataset(tmp_path / "empty", [planted["table"].schema.empty_table()], {})
    manifest = run_dedup(spark, DedupConfig(), path, str(tmp_path / "out"))
    assert manifest["counts"]["rows_in"] == manifest["counts"]["rows_out"] == 0
    assert manifest["counts"]["clusters"] == {"exact": 0, "near": 0}
    assert finished_dataset(str(tmp_path / "out")).to_table().num_rows == 0


def test_repeated_ids_are_refused(spark, tmp_path, planted):
    from spark_jobs.dataset import DatasetError
    from spark_jobs.dedup import run_dedup

    two = planted["table"].slice(0, 2)
    path = write_dataset(tmp_path / "twice", [two, two], {})
    with pytest.raises(DatasetError, match="ids must be unique"):
        run_dedup(spark, DedupConfig(), path, str(tmp_path / "out"))
    with pytest.raises(DuplicateIdError):
        find_duplicates(["a", "a"], ["x", "y"], DedupConfig())


@pytest.mark.parametrize("data, message", [
    ({"bands": 16, "rows": 8, "num_perm": 100}, "num_perm 100 != bands"),
    ({"threshold": 0.0}, "threshold is a Jaccard similarity"),
    ({"threshold": 1.5}, "threshold is a Jaccard similarity"),
    ({"bands": 0}, "bands must be >= 1"),
    ({"bands": 2, "rows": 16}, "candidates"),  # S-curve far above the threshold: most 0.8 pairs missed
    ({"max_bucket_size": 1}, "max_bucket_size"),
    ({"band": 16}, "did you mean 'bands'"),
    ({"normaliser": "fineweb"}, "normaliser must be one of dedup-v1, datatrove"),
])
def test_bad_config(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(DedupConfig, data)


def test_cli_reports_bad_config_before_starting_spark(tmp_path, capsys):
    from trait.cli import main

    assert main(["dedup", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--threshold", "1.5"]) == 2
    assert "threshold is a Jaccard similarity in (0, 1], got 1.5" in capsys.readouterr().err


def test_in_memory_small_cases():
    config = DedupConfig()
    base = " ".join(f"word{i}" for i in range(400))
    ids = ["a", "b", "c", "d", "e", "f"]
    texts = [base, base.upper(), replace_every(base, 100, 7), " !? ", " ?! ", "short text"]
    # no-token texts never near-match; punctuation-only texts are exact duplicates only when their bytes match
    assert find_duplicates(ids, texts, config) == {"b": ("exact_duplicate", "a"), "c": ("near_duplicate", "a")}
    assert tokens("Hello,\tWORLD\u00a0x+1") == ["hello", ",", "world", "x", "+", "1"]
    assert find_duplicates([], [], config) == {}


def test_golden_values():
    """Pinned hashes: a change here changes which documents every stored run kept."""
    assert tokens("The Quick  brown fox!") == ["the", "quick", "brown", "fox", "!"]
    assert xxhash.xxh3_64_intdigest(b"the quick brown fox jumps") == GOLDEN_SHINGLE  # the shingle hash
    a, b = permutations(128, 0)
    assert (int(a[0]), int(b[0])) == GOLDEN_PERMUTATION
    sigs, present, keys = signatures(["The quick brown fox jumps over the lazy dog."], DedupConfig())
    assert sigs[0, :3].tolist() == GOLDEN_SIGNATURE and present.tolist() == [True]
    assert keys == [GOLDEN_EXACT_KEY]
    assert int(band_keys(sigs, DedupConfig())[0, 0]) == GOLDEN_BAND_KEY
    # the permutation arithmetic against Python's exact integers, at the edges of the field and at random
    rng = np.random.default_rng(7)
    x = np.r_[np.array([0, 1, 2**32 - 1, 2**32, MERSENNE_61 - 1], dtype=np.uint64),
              rng.integers(0, MERSENNE_61, 50, dtype=np.uint64)]
    assert [[int(permuted(v, a[j], b[j])) for j in range(128)] for v in x] == [
        [(int(a[j]) * int(v) + int(b[j])) % MERSENNE_61 for j in range(128)] for v in x.tolist()]
    # a full 64-bit shingle hash is reduced mod 2^61 - 1 before the permutation
    h = xxhash.xxh3_64_intdigest(b"a")
    sig, _, _ = signatures(["a"], DedupConfig())
    assert sig[0].tolist() == [(int(a[j]) * (h % MERSENNE_61) + int(b[j])) % MERSENNE_61 for j in range(128)]

# xxh3-64 of b"the quick brown fox jumps" (seed 0); a and b of permutation 0 for seed 0; the first three signature
# values, the exact key and band 0's key of "The quick brown fox jumps over the lazy dog." (dedup-v1, 16 x 8).
GOLDEN_SHINGLE = 10403364002775130632
GOLDEN_PERMUTATION = (656483423, 2282040249364697152)
GOLDEN_SIGNATURE = [36505950974117216, 319985036237093587, 288368797356211950]
GOLDEN_EXACT_KEY = "0b0b8cacfc5ef43f3995bc4d4078d4c0"
GOLDEN_BAND_KEY = 4448905051523724427
