"""Oracles shared by the baseline tests (test_baselines, test_dsir): the seeded key, the budget cut, and an
empty finished dataset standing for a selection that kept nothing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import xxhash

from trait.contract import BASE_SCHEMA


def spark_uniform(seed: int, ids) -> np.ndarray:
    """Independent reimplementation of ``uniform_key``: Spark's xxhash64(seed, id) chains XXH64 from seed 42 over
    the int seed (4 bytes little-endian), then the id's UTF-8; the top 53 bits of the unsigned result."""
    h_seed = xxhash.xxh64_intdigest(struct.pack("<i", seed), seed=42)
    return np.array([((xxhash.xxh64_intdigest(i.encode(), seed=h_seed) >> 11) + 0.5) / 2**53 for i in ids])


def expected_cut(frame, key: np.ndarray, budget: int, keep_high: bool) -> set[str]:
    """Ids taken in key order until their n_tokens sum reaches ``budget`` (ties at the cut kept)."""
    order = np.argsort(-key if keep_high else key, kind="stable")
    cum = np.cumsum(frame["n_tokens"].to_numpy()[order])
    if cum[-1] < budget:
        return set(frame["id"])
    cut = key[order[np.searchsorted(cum, budget)]]
    return set(frame["id"][key >= cut if keep_high else key <= cut])


def fake_dataset(path: Path, manifest: dict) -> str:
    """A finished, empty contract dataset with the given manifest (e.g. a selection that kept nothing)."""
    path.mkdir(parents=True)
    pq.write_table(BASE_SCHEMA.empty_table(), path / "part-00000.parquet")
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "_SUCCESS").write_text("")
    return str(path)
