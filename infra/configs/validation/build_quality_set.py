"""Cut the quality classifier's labelled web documents out of ../shared/data (docs/quality-validation.md).

    python infra/configs/validation/build_quality_set.py [--data ../shared/data] [--out runs/validation/raw]
    trait ingest --config infra/configs/validation/ingest_quality.yaml --set vars.label=good \
        --output runs/validation/quality_good   # and so with vars.label=bad, --output runs/validation/quality_bad

``quality_labels.jsonl`` (beside this file) holds one line per judged document of the web samples: its file, line
number, the first 16 hex digits of its text's sha1, the label (good, bad, or skip for documents left out) and the
reason. The labels were given by an LLM agent reading each document against the rubric of
docs/quality-validation.md, not by people. The texts stay in ../shared/data: this script reads them from there,
checks each one's sha1, and writes ``quality_good.jsonl`` and ``quality_bad.jsonl`` under ``--out``, and
``quality_pool_rest.jsonl``: every other document of the demo pool's web samples, so ingest_quality_pool.yaml can build
a pool without the labelled documents (a classifier trained on it can be judged on all of them).

Each written record carries the text, the demo pool's source (without its leading ``web/``) and the id and url
fields the demo pool's ingest (infra/configs/demo/ingest_pool.yaml) reads from that file, so ingesting them with
ingest_quality.yaml gives each document the id it has in the demo pool: ``trait classifier evaluate`` then sees
which of them a quality classifier trained on. It also carries its ``page`` (``pages()``; ingest ignores it): the
chunks of one Pile document share one, so an experiment can hold out whole pages, not just the labelled chunks.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

from spark_jobs.ingest import IngestConfig, _get
from trait.config import load_config

HERE = Path(__file__).resolve().parent
LABELS = HERE / "quality_labels.jsonl"
POOL_CONFIG = HERE.parent / "demo" / "ingest_pool.yaml"
WEB_SAMPLES = "corpora/general/web_samples"
CHUNKED = {"dsir_toy_pile_data.jsonl"}  # files whose lines are consecutive chunks of documents (pages())
SOURCE_PREFIX = "web/"  # ingest_quality.yaml's source; each record's "sub" is the rest of the pool's source


def _records(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) if line.strip() else None for line in fh]


def pool_record(record: dict, spec) -> dict:
    """The record in ingest_quality.yaml's layout, with the text, source, id and url the demo pool reads."""
    source = spec.source
    if spec.source_field and (sub := _get(record, spec.source_field)) is not None:
        source = f"{source}/{sub}"
    if not source.startswith(SOURCE_PREFIX):
        raise SystemExit(f"pool source {source!r} does not start with {SOURCE_PREFIX!r}")
    out = {"text": _get(record, spec.text_field), "sub": source[len(SOURCE_PREFIX):]}
    for key, field in (("id", spec.id_field), ("url", spec.url_field)):
        if (value := _get(record, field)) is not None:
            out[key] = value
    return out


def pages(name: str, rows: list[dict | None]) -> list[str | None]:
    """The page of each record: ``name:line`` of its first chunk. The DSIR sample cuts each Pile document into
    ~800-character chunks, one a line, in order: a run of consecutive lines of one Pile component is one page (two
    adjacent documents of the same component count as one, which only widens what is held out with them)."""
    out: list[str | None] = []
    for line, row in enumerate(rows, 1):
        if row is None:
            out.append(None)
        elif name in CHUNKED and line > 1 and rows[line - 2] is not None and rows[line - 2]["sub"] == row["sub"]:
            out.append(out[-1])
        else:
            out.append(f"{name}:{line}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/validation/raw")
    args = ap.parse_args()
    data, out = Path(args.data).resolve(), Path(args.out)
    specs = load_config(IngestConfig, POOL_CONFIG, vars={"data": str(data)}).inputs
    with open(LABELS, encoding="utf-8") as fh:
        labels = {(e["file"], e["line"]): e for e in map(json.loads, fh)}
    docs = {}
    for spec in specs:
        for path in sorted(glob.glob(spec.path)) if f"/{WEB_SAMPLES}/" in spec.path else []:
            rows = [None if r is None else pool_record(r, spec) for r in _records(Path(path))]
            for line, (row, page) in enumerate(zip(rows, pages(Path(path).name, rows)), 1):
                if row is not None:
                    docs[Path(path).name, line] = {**row, "page": page}
    if missing := sorted(set(labels) - set(docs)):
        raise SystemExit(f"labelled documents not in the demo pool's web samples ({POOL_CONFIG}): {missing[:5]}")
    written: dict[str, list[dict]] = {"good": [], "bad": [], "pool_rest": []}
    for key, doc in docs.items():
        entry = labels.get(key, {"label": "skip"})
        if entry["label"] != "skip" and hashlib.sha1(doc["text"].encode()).hexdigest()[:16] != entry["text_sha1"]:
            raise SystemExit(f"{key[0]}:{key[1]} is not the document that was labelled (its text sha1 differs from "
                             f"{entry['text_sha1']}); has {args.data} changed?")
        written["pool_rest" if entry["label"] == "skip" else entry["label"]].append(doc)
    out.mkdir(parents=True, exist_ok=True)
    for label, rows in written.items():
        with open(out / f"quality_{label}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{out}/quality_{label}.jsonl: {len(rows)} documents "
              f"({', '.join(f'{s} {n}' for s, n in Counter(r['sub'] for r in rows).most_common())})")


if __name__ == "__main__":
    main()
