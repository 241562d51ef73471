"""Small contract datasets of real documents (PlanetMath entries, Pile web samples from the shared data), written
in one or several part files: the annotate tests' input (test_synth_annotate, test_synth_e2e)."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trait.contract import BASE_SCHEMA, SUCCESS_MARKER, doc_id, part_name

from ..conftest import SHARED_DATA


def documents(n_math: int, n_web: int, max_len: int = 1800) -> list[dict]:
    """Contract rows: PlanetMath entries and Pile web samples of 200..max_len characters."""
    rows = []
    with gzip.open(SHARED_DATA / "corpora/math/planetmath/planetmath_entries.jsonl.gz", "rt") as fh:
        math = (json.loads(line)["text"] for line in fh)
        rows += [("math/planetmath", t) for t in itertools.islice((t for t in math if 200 <= len(t) <= max_len),
                                                                   n_math)]
    with open(SHARED_DATA / "corpora/general/web_samples/dsir_toy_pile_data.jsonl") as fh:
        web = (json.loads(line)["contents"] for line in fh)
        rows += [("web/pile", t) for t in itertools.islice((t for t in web if 200 <= len(t) <= max_len), n_web)]
    return [{"id": doc_id(s, t), "source": s, "text": t, "url": None, "n_tokens": len(t.split())} for s, t in rows]


def write_dataset(path: Path, rows: list[dict], parts: int = 1, finished: bool = True) -> str:
    """A contract dataset of ``rows`` in ``parts`` part files (rows dealt round-robin, so the order differs)."""
    path.mkdir(parents=True)
    for p in range(parts):
        pq.write_table(pa.Table.from_pylist(rows[p::parts], schema=BASE_SCHEMA), path / part_name(p))
    (path / "manifest.json").write_text(json.dumps({"job": "test", "counts": {"rows_out": len(rows)}}))
    if finished:
        (path / SUCCESS_MARKER).write_text("")
    return str(path)
