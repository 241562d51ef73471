"""The data map (the TRAIT paper's Figure 3): seeded samples of each data source embedded with the offline MiniLM
model (``synth.embed.default_embedder``, with its on-disk cache) and projected to 2-D with t-SNE.

Sources are ``NAME=PATH`` pairs, PATH one of:

- a finished contract dataset directory (``trait.contract.finished_dataset``; its ``text`` column): the selected
  corpus (``trait select``), the synthetic passages (``trait synth generate``), any ingested corpus;
- a JSONL (``.jsonl``, ``.jsonl.gz``) or JSON file (a list of records, or an object of id -> record), with
  ``#FIELD`` naming the text field (default ``text``): ``corpora/general/enwiki_2015_part1.jsonl.gz``;
- ``problems:NAME[,NAME...]``: the problems of synth's problem sets (``synth/problem_sets``: train splits).

t-SNE (scikit-learn) rather than UMAP: UMAP would add numba and pynndescent for a picture of a few thousand points.
The picture is a projection; the numbers behind it are computed in the 384-D embedding space (cosine geometry):
the distance between source centroids, and each source's k-nearest-neighbour source mix.
Writes ``datamap.png``, ``datamap.parquet`` (source, x, y, the first 200 characters of the text) and
``datamap.json`` to the output directory.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trait.config import ConfigError, field
from trait.outputs import check_output

log = logging.getLogger(__name__)

PROBLEMS_PREFIX = "problems:"
NEIGHBOURS = 10  # k of the nearest-neighbour source mix


@dataclass
class DatamapConfig:
    """``trait datamap``'s settings (the sources and the output are per-run flags)."""

    per_source: int = field(500, help="texts sampled per source")
    seed: int = field(0, help="seed of the samples and of t-SNE")


DATAMAP_FILES = ("datamap.png", "datamap.parquet", "datamap.json")  # what the output folder holds


def parse_source(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"source {spec!r}: give NAME=PATH, e.g. general=../shared/data/corpora/general/"
                          "enwiki_2015_part1.jsonl.gz or math=problems:gsm8k,math")
    return name.strip(), path.strip()


def _reservoir(lines, n: int, rng: random.Random) -> list[str]:
    """A uniform sample of ``n`` non-blank lines in one pass (Algorithm R), in input order."""
    kept: list[tuple[int, str]] = []
    seen = 0
    for line in lines:
        if not line.strip():
            continue
        if len(kept) < n:
            kept.append((seen, line))
        else:
            j = rng.randint(0, seen)
            if j < n:
                kept[j] = (seen, line)
        seen += 1
    return [line for _, line in sorted(kept)]


def _field(record, field: str, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ConfigError(f"{where}: no text field {field!r} in a record (fields: {keys}); add #FIELD to the path")
    return record[field]


def source_files(path: str) -> list[str]:
    """The files or folders a source reads (a ``problems:`` source: its problem sets' files)."""
    if path.startswith(PROBLEMS_PREFIX):
        from synth.problem_sets import load_problem_sets, problem_set_files

        return problem_set_files(load_problem_sets(_problem_set_names(path)))
    return [path.partition("#")[0]]


def _problem_set_names(path: str) -> list[str]:
    return [t for t in path[len(PROBLEMS_PREFIX):].split(",") if t]


def sample_texts(path: str, n: int, seed: int) -> list[str]:
    """Up to ``n`` texts drawn uniformly at random (seeded) from the source at ``path``; blank texts are skipped."""
    rng = random.Random(seed)
    if path.startswith(PROBLEMS_PREFIX):
        from synth.problem_sets import load_problem_sets, load_problems

        texts = [p.text for d in load_problem_sets(_problem_set_names(path)) for p in load_problems(d)[0]]
        return [texts[i] for i in sorted(rng.sample(range(len(texts)), min(n, len(texts))))]
    file, _, field = path.partition("#")
    field = field or "text"
    if Path(file).is_dir():
        from trait.contract import finished_dataset

        dataset = finished_dataset(file, ("text",))
        total = dataset.count_rows()
        rows = sorted(rng.sample(range(total), min(n, total)))
        texts = dataset.take(rows, columns=["text"]).column("text").to_pylist()
    elif file.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if file.endswith(".gz") else open
        if not Path(file).is_file():
            raise ConfigError(f"source file {file} does not exist")
        with opener(file, "rt", encoding="utf-8") as fh:
            texts = [_field(json.loads(line), field, file) for line in _reservoir(fh, n, rng)]
    elif file.endswith(".json"):
        if not Path(file).is_file():
            raise ConfigError(f"source file {file} does not exist")
        records = json.loads(Path(file).read_text(encoding="utf-8"))
        records = list(records.values()) if isinstance(records, dict) else records
        chosen = sorted(rng.sample(range(len(records)), min(n, len(records))))
        texts = [_field(records[i], field, file) for i in chosen]
    else:
        raise ConfigError(f"source {path!r}: not a contract dataset directory, .jsonl(.gz) or .json file, or "
                          f"{PROBLEMS_PREFIX}NAME[,NAME...]")
    return [t for t in texts if t.strip()]


def neighbour_stats(vectors: np.ndarray, labels: np.ndarray, names: list[str], k: int = NEIGHBOURS) -> dict:
    """In the embedding space (unit vectors, cosine): ``centroid_distance[a][b]`` = 1 - cos(mean of a, mean of b);
    ``neighbour_mix[a][b]`` = the share of the ``k`` nearest other points of a's points that belong to b."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :min(k, len(vectors) - 1)]
    centroids = np.stack([vectors[labels == i].mean(0) for i in range(len(names))])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    cos = centroids @ centroids.T
    mix = {}
    for i, a in enumerate(names):
        near = labels[nearest[labels == i]].ravel()
        mix[a] = {b: round(float((near == j).mean()), 4) for j, b in enumerate(names)}
    return {"k": int(nearest.shape[1]), "neighbour_mix": mix,
            "centroid_distance": {a: {b: round(max(0.0, float(1 - cos[i, j])), 4) for j, b in enumerate(names)}
                                  for i, a in enumerate(names)}}


def project(vectors: np.ndarray, seed: int) -> np.ndarray:
    """t-SNE to 2-D, shape (n, 2); perplexity 30, lowered for small samples (it must stay below n)."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(vectors) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)


def plot_map(coords: np.ndarray, labels: np.ndarray, names: list[str], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    for i, name in enumerate(names):
        pts = coords[labels == i]
        ax.scatter(pts[:, 0], pts[:, 1], s=12, alpha=0.75, label=f"{name} ({len(pts)})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("data map: MiniLM embeddings, t-SNE")
    ax.legend(fontsize="small", markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def run_datamap(sources: list[str], output: str | Path, per_source: int = 500, seed: int = 0,
                embedder=None) -> dict:
    """Sample ``per_source`` texts of every ``NAME=PATH`` source, embed, project, and write the map and its numbers
    to ``output`` (new, empty or an earlier data map's folder; apart from every source). ``embedder`` defaults to
    ``synth.embed.default_embedder()``."""
    if per_source < 2:
        raise ConfigError(f"--per-source must be >= 2, got {per_source}")
    pairs = [parse_source(s) for s in sources]
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ConfigError(f"give at least two sources with distinct names; got {', '.join(names) or 'none'}")
    texts, labels = [], []
    for i, (name, path) in enumerate(pairs):
        sample = sample_texts(path, per_source, seed)
        if not sample:
            raise ConfigError(f"source {name!r} ({path}) has no texts to sample")
        if len(sample) < per_source:
            log.warning("source %s has %d texts, fewer than --per-source %d: all are used", name, len(sample),
                        per_source)
        texts += sample
        labels += [i] * len(sample)
    # after the sources' own errors, before the embedding model loads
    check_output(output, inputs=[f for _, path in pairs for f in source_files(path)], own=DATAMAP_FILES,
                 dataset=False)
    if embedder is None:
        from synth.embed import default_embedder

        embedder = default_embedder()
    vectors = embedder.embed(texts)
    labels = np.asarray(labels)
    coords = project(vectors, seed)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    png_file, parquet_file, json_file = (out / name for name in DATAMAP_FILES)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"source": [names[i] for i in labels], "x": coords[:, 0].astype(np.float32),
                             "y": coords[:, 1].astype(np.float32), "text": [t[:200] for t in texts]}),
                   parquet_file)
    counts = {n: int((labels == i).sum()) for i, n in enumerate(names)}
    result = {"sources": dict(pairs), "per_source": per_source, "seed": seed, "projection": "tsne",
              "counts": counts, **neighbour_stats(vectors, labels, names)}
    json_file.write_text(json.dumps(result, indent=1))
    plot_map(coords, labels, names, png_file)
    log.info("data map: %d texts from %d sources -> %s", len(texts), len(names), png_file)
    return result
